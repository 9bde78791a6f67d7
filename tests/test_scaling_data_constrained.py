"""Muennighoff et al. 2023 in full: effective data D', effective parameters N', L(N, D, U), the allocation."""

import json

import numpy as np
import pytest

from chinchax.cli import main
from chinchax.errors import UserError
from chinchax.scaling import laws
from chinchax.scaling.optimal import allocation_rows

LAW = laws.MUENNIGHOFF_2023


def test_fitted_constants():
    # Sec. 4 / App.: R_D* = 15.4 and R_N* = 5.3 (15.387756, 5.309743 unrounded); alpha = beta = 0.353;
    # E = 1.87, A = 521, B = 1488 (published as their logs).
    assert (round(LAW.r_d_star, 1), round(LAW.r_n_star, 1)) == (15.4, 5.3)
    assert round(LAW.alpha, 3) == round(LAW.beta, 3) == 0.353
    assert (round(LAW.E, 2), round(LAW.A), round(LAW.B)) == (1.87, 521, 1488)


def test_losses_of_figure1_models():
    # Figure 1 (right) / the paper's repository: 25B unique tokens, the data-constrained choice of 6.34B
    # parameters on 242B tokens beats Chinchilla's 8.67B on 178B: L = 2.2256440889984477 vs 2.2269634075087867.
    assert float(LAW.loss(6.34e9, 242e9, 25e9)) == pytest.approx(2.2256440889984477, rel=1e-12)
    assert float(LAW.loss(8.67e9, 178e9, 25e9)) == pytest.approx(2.2269634075087867, rel=1e-12)


def test_effective_data_and_parameters():
    u = 25e9
    # no repetition, no excess: N' = N and D' = D, and the loss is the base law's
    n_small = 0.5 * float(LAW.unique_params(u))
    assert float(LAW.effective_params(n_small, 20e9, u)) == pytest.approx(n_small)
    assert float(LAW.effective_tokens(20e9, u)) == 20e9
    assert float(LAW.loss(n_small, 20e9, u)) == pytest.approx(float(LAW.base.loss(n_small, 20e9)))
    # repeated data: D' = U + U·R_D*·(1 - e^(-R_D/R_D*)) with R_D = D/U - 1, saturating at U·(1 + R_D*)
    assert float(LAW.effective_tokens(4 * u, u)) == pytest.approx(u + u * LAW.r_d_star * (1 - np.exp(-3 / LAW.r_d_star)))
    assert float(LAW.effective_tokens(1e6 * u, u)) == pytest.approx(u * (1 + LAW.r_d_star))
    # excess parameters: U_N = N_opt(U) is the base law's compute-optimal size for U tokens ...
    base = LAW.base.allocation()
    c = 6 * float(LAW.unique_params(u)) * u
    assert float(base.n_opt(c)) == pytest.approx(float(LAW.unique_params(u)), rel=1e-9)
    # ... (the paper's code rounds it to 0.051·U for this fit) ...
    assert float(LAW.unique_params(u)) / u == pytest.approx(0.051, abs=0.0005)
    # ... and N' = U_N + U_N·R_N*·(1 - e^(-R_N/R_N*)), saturating at U_N·(1 + R_N*)
    u_n = float(LAW.unique_params(u))
    assert float(LAW.effective_params(3 * u_n, 1e12, u)) == pytest.approx(u_n + u_n * LAW.r_n_star * (1 - np.exp(-2 / LAW.r_n_star)))
    assert float(LAW.effective_params(1e9 * u_n, 1e12, u)) == pytest.approx(u_n * (1 + LAW.r_n_star))
    # both decay: doubling N or D adds less than it would with fresh data
    assert float(LAW.loss(2e10, 100e9, u)) > float(LAW.base.loss(2e10, 100e9))


def test_allocation_reported_by_the_paper():
    # The paper's repository, "optimal allocation" for Figure 1's budget (6·8.67e9·178e9 FLOPs, 25B unique):
    # "227B tokens, 9.1 epochs, 6.8B parameters" (their grid search; we minimise on 6ND = C exactly).
    c, u = 6 * 8.67e9 * 178e9, 25e9
    n, d = LAW.optimum(c, u)
    assert 6 * n * d == pytest.approx(c)
    assert (round(n / 1e9, 1), round(d / 1e9), round(d / u, 1)) == (6.8, 227, 9.1)
    # it is a minimum of the loss along the isoFLOP line
    for factor in (0.9, 1.1):
        assert float(LAW.loss(n * factor, c / (6 * n * factor), u)) > float(LAW.loss(n, d, u))
    # with ample unique data it is the base law's allocation
    n_free, _ = LAW.optimum(c, 1e15)
    assert n_free == pytest.approx(float(LAW.base.allocation().n_opt(c)), rel=1e-6)


def test_optimal_cli_data_constrained(capsys):
    c = 6 * 8.67e9 * 178e9
    assert main(["optimal", "--flops", str(c), "--law", "data-constrained", "--law", "chinchilla-1",
                 "--unique-tokens", "25e9", "--json"]) == 0
    rows = {r["law"]: r for r in json.loads(capsys.readouterr().out)}
    dc, chin = rows["data-constrained"], rows["chinchilla-1"]
    assert (round(dc["n_opt"] / 1e9, 1), round(dc["d_opt"] / 1e9), round(dc["epochs"], 1)) == (6.8, 227, 9.1)
    assert round(chin["n_opt"] / 1e9, 2) == 8.67 and round(chin["epochs"], 1) == 7.1  # 178B / 25B
    assert main(["optimal", "--flops", str(c), "--unique-tokens", "25e9"]) == 0  # table: every law + epochs
    out = capsys.readouterr().out
    assert "data-constrained" in out and "epochs" in out


def test_data_constrained_needs_unique_tokens(capsys):
    with pytest.raises(UserError, match="needs --unique-tokens"):
        allocation_rows(1e22, ["data-constrained"])
    with pytest.raises(UserError, match="--unique-tokens must be a positive"):
        allocation_rows(1e22, ["data-constrained"], unique_tokens=-1.0)
    assert main(["optimal", "--flops", "1e22", "--law", "data-constrained"]) == 2
    assert "--unique-tokens" in capsys.readouterr().err
    # the default set without U stays the four published allocation laws
    assert {r["law"] for r in allocation_rows(1e22)} == {"chinchilla-1", "chinchilla-2", "chinchilla-3", "kaplan"}
