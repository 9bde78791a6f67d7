"""Scaling-law formulas and the published parameter sets (numpy; works on any array-like).

Conventions: N = parameters, D = training tokens, C = 6·N·D training FLOPs (chinchax/compute.py). Every
allocation law here is a power law N_opt(C) = k·C^a, and D_opt(C) = C / (6·N_opt(C)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chinchax.compute import FLOPS_PER_PARAM_TOKEN, tokens_for_budget

PF_DAY = 8.64e19  # FLOPs in one petaflop/s-day (1e15 FLOP/s x 86,400 s), Kaplan et al. 2020

# Chinchilla (Hoffmann et al. 2022), Table 3: approach-1 optimal (parameters, FLOPs, tokens).
CHINCHILLA_TABLE3 = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)
GOPHER_FLOPS = 5.76e23

# Chinchilla, Appendix Table A3: the same lookup (parameters, FLOPs, tokens) for approaches 2 and 3, as printed.
# Two kinds of printed row do not lie on the power law that all other rows follow to within the rounding
# of their 3-digit FLOPs (<= 0.35%), and the allocation fits below leave them out:
#  * the "67B" row of both approaches matches the law at 70B parameters (Chinchilla's own size), not 67B:
#    approach 3 gives 1.71e24 FLOPs for 70B (8% off for 67B), approach 2 6.99e23 (6% off for 67B);
#  * approach 3's 175B row prints 1.26e24 FLOPs; its own 12.0T tokens give 6·N·D = 1.26e25, which also
#    sits between its neighbours: an exponent misprint.
CHINCHILLA_TABLE_A3_APPROACH2 = (
    (400e6, 1.84e19, 7.7e9),
    (1e9, 1.20e20, 20.0e9),
    (10e9, 1.32e22, 219.5e9),
    (67e9, 6.88e23, 1.7e12),
    (175e9, 4.54e24, 4.3e12),
    (280e9, 1.18e25, 7.1e12),
    (520e9, 4.19e25, 13.4e12),
    (1e12, 1.59e26, 26.5e12),
    (10e12, 1.75e28, 292.0e12),
)
CHINCHILLA_TABLE_A3_APPROACH3 = (
    (400e6, 2.21e19, 9.2e9),
    (1e9, 1.62e20, 27.1e9),
    (10e9, 2.46e22, 410.1e9),
    (67e9, 1.71e24, 4.1e12),
    (175e9, 1.26e24, 12.0e12),
    (280e9, 3.52e25, 20.1e12),
    (520e9, 1.36e26, 43.5e12),
    (1e12, 5.65e26, 94.1e12),
    (10e12, 8.55e28, 1425.5e12),
)
TABLE_A3_OFF_LAW_ROWS = {"chinchilla-2": (67e9,), "chinchilla-3": (67e9, 175e9)}  # see above


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + (A/N^alpha + B/D^beta)^gamma: Chinchilla's approach 3 at gamma = 1, Kaplan et al.'s joint
    L(N, D) (eq. 1.5) plus an irreducible loss at beta = 1 (alpha = alpha_N/alpha_D, gamma = alpha_D). Both
    have the same compute-optimal allocation: minimising the bracket along C = 6ND does not involve gamma."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    gamma: float = 1.0

    def loss(self, n, d):
        if self.gamma == 1.0:
            return chinchilla_loss(n, d, self.E, self.A, self.B, self.alpha, self.beta)
        n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
        with np.errstate(over="ignore"):
            return self.E + (self.A / n**self.alpha + self.B / d**self.beta) ** self.gamma

    @property
    def a(self) -> float:  # N_opt ∝ C^a
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:  # D_opt ∝ C^b
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        # A fit with a non-positive exponent or coefficient has no finite optimum: NaN, not a complex number.
        base = self.alpha * self.A / (self.beta * self.B) if self.beta * self.B != 0 else float("nan")
        if not (base > 0 and self.alpha + self.beta > 0):
            return float("nan")
        return base ** (1.0 / (self.alpha + self.beta))

    def allocation(self, name: str = "parametric", source: str = "") -> Allocation:
        # Minimising L subject to C = 6ND gives N_opt = G·(C/6)^a, D_opt = G^-1·(C/6)^b.
        return Allocation(name, self.G * FLOPS_PER_PARAM_TOKEN ** (-self.a), self.a, source)


# Eq. 10 as printed (rounded exponents), and with the unrounded exponents. Both are loss laws for
# plots and synthetic data; neither reproduces the approach-3 rows of Table A3 (see published_allocations).
CHINCHILLA_3 = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
CHINCHILLA_3_UNROUNDED = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.3392, beta=0.2849)


@dataclass(frozen=True)
class Allocation:
    """N_opt(C) = n_coef · C^n_exp (C in FLOPs); D_opt(C) = C / (6·N_opt)."""

    name: str
    n_coef: float
    n_exp: float
    source: str = ""

    def n_opt(self, flops):
        return self.n_coef * np.asarray(flops, dtype=np.float64) ** self.n_exp

    def d_opt(self, flops):
        flops = np.asarray(flops, dtype=np.float64)
        return tokens_for_budget(flops, self.n_opt(flops))


def chinchilla_loss(n, d, E, A, B, alpha, beta):
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    with np.errstate(over="ignore"):  # n**alpha beyond float64 is inf, and its term's limit, 0, is right
        return E + A / n**alpha + B / d**beta


def kaplan_loss_nd(n, d, n_c, d_c, alpha_n, alpha_d):
    """Kaplan et al. 2020 eq. 1.5: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D."""
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return ((n_c / n) ** (alpha_n / alpha_d) + d_c / d) ** alpha_d


def effective_data(tokens, unique_tokens, r_star, xp=np):
    """Muennighoff et al. 2023: D' = U + U·R*·(1 - exp(-R/R*)), R = D/U - 1 repeated epochs.
    Tokens seen within the first epoch count fully; each further epoch is worth less. `xp`: the array
    module (numpy, or jax.numpy inside the data-constrained fit's objective)."""
    if xp is np:
        tokens, unique_tokens = np.asarray(tokens, np.float64), np.asarray(unique_tokens, np.float64)
    repeats = xp.maximum(tokens / unique_tokens - 1.0, 0.0)
    return xp.where(
        tokens <= unique_tokens, tokens, unique_tokens + unique_tokens * r_star * (1.0 - xp.exp(-repeats / r_star))
    )


@dataclass(frozen=True)
class DataConstrainedLaw:
    """Muennighoff et al. 2023 (eqs. 5-7): L(N, D, U) = E + A/N'^alpha + B/D'^beta.

    D' = U_D + U_D·R_D*·(1 - exp(-R_D/R_D*)), U_D = min(U, D) unique tokens, R_D = D/U_D - 1 repeats.
    N' = U_N + U_N·R_N*·(1 - exp(-R_N/R_N*)), U_N = min(N, N_opt(U_D)) "unique" parameters, where
    N_opt(U_D) is the compute-optimal size for U_D tokens under the base law; R_N = N/U_N - 1 excess.
    Parameters beyond what U_D tokens can use, like epochs beyond the first, are worth less and less.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    r_n_star: float
    r_d_star: float

    @property
    def base(self) -> ParametricLaw:
        return ParametricLaw(self.E, self.A, self.B, self.alpha, self.beta)

    def unique_params(self, unique_tokens):
        """N_opt(U_D): the size that U_D tokens train compute-optimally, G·(U_D·G)^(beta/alpha).
        (From N_opt = G·(C/6)^a and D_opt = G^-1·(C/6)^b; the paper's code calls it D_to_N.)"""
        g = self.base.G
        return g * (np.asarray(unique_tokens, np.float64) * g) ** (self.beta / self.alpha)

    def effective_params(self, n, d, unique_tokens):
        n = np.asarray(n, np.float64)
        unique_n = np.minimum(n, self.unique_params(np.minimum(unique_tokens, d)))
        excess = np.maximum(n / unique_n - 1.0, 0.0)
        return unique_n + unique_n * self.r_n_star * (1.0 - np.exp(-excess / self.r_n_star))

    def effective_tokens(self, d, unique_tokens):
        return effective_data(d, unique_tokens, self.r_d_star)

    def loss(self, n, d, unique_tokens):
        n_eff, d_eff = self.effective_params(n, d, unique_tokens), self.effective_tokens(d, unique_tokens)
        return self.E + self.A / n_eff**self.alpha + self.B / d_eff**self.beta

    def optimum(self, flops: float, unique_tokens: float) -> tuple[float, float]:
        """(N, D) with 6·N·D = flops that minimise L(N, D, U). No closed form (the paper grid-searches):
        a log-spaced grid over 8 decades around the base law's optimum, then Brent's method between
        the neighbours of the best grid point."""
        from scipy.optimize import minimize_scalar

        def loss_at(log_n):
            n = 10.0**log_n
            return float(self.loss(n, tokens_for_budget(flops, n), unique_tokens))

        centre = np.log10(self.base.allocation().n_opt(flops))
        grid = np.linspace(centre - 5.0, centre + 3.0, 4001)
        best = int(np.argmin([loss_at(x) for x in grid]))
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
        log_n = minimize_scalar(loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-9}).x
        n = 10.0**log_n
        return n, tokens_for_budget(flops, n)


# Muennighoff et al. 2023, fitted on their C4 runs (sec. 4 / App.; constants as published in the paper's
# repository, huggingface/datablations README: the fit is in log space, A = e^6.255414, B = e^7.3049974,
# E = e^0.6254804; alpha = beta = 0.3526596; R_D* = 15.387756 and R_N* = 5.309743, quoted as 15.4 and 5.3).
MUENNIGHOFF_2023 = DataConstrainedLaw(
    E=float(np.exp(0.6254804)), A=float(np.exp(6.255414)), B=float(np.exp(7.3049974)),
    alpha=0.3526596, beta=0.3526596, r_n_star=5.309743, r_d_star=15.387756,
)


def table_allocation(rows, name: str, source: str, skip_params: tuple[float, ...] = ()) -> Allocation:
    """N_opt = k·C^a regressed in log10 on a paper's lookup table of (N, C, D) rows, leaving out the
    rows whose parameter count is in `skip_params` (rows the paper printed off its own law)."""
    n, c, _ = np.array([r for r in rows if r[0] not in skip_params]).T
    slope, intercept = np.polyfit(np.log10(c), np.log10(n), 1)
    return Allocation(name, float(10**intercept), float(slope), source)


def kaplan_allocation() -> Allocation:
    # Kaplan Table 6 / eq. 6.1: N_opt = 1.3e9 · C_min^0.73 with C_min in PF-days. Compute-efficient training
    # runs at the critical batch size, which takes twice the minimum steps (Kaplan sec. 5.1), so C = 2·C_min;
    # Chinchilla compares the same way. This gives 4.68e9 params at 1e21 FLOPs.
    coef = 1.3e9 * (2.0 * PF_DAY) ** -0.73
    return Allocation("kaplan", coef, 0.73, "Kaplan et al. 2020, Table 6 / eq. 6.1 (C_min = C/2, 1 PF-day = 8.64e19 FLOPs)")


def published_allocations() -> dict[str, Allocation]:
    """The published allocation laws, each in the form that reproduces its paper's own table.

    chinchilla-1 is Table 3 regressed in log10 (all 9 rows: BloombergGPT's lines, N = 0.498·log10 C − 1.004).
    chinchilla-2 and -3 are Table A3 regressed the same way. For approach 3 this is not eq. 10's law: with
    the rounded exponents (alpha = 0.34, beta = 0.28, a = 0.4516) eq. 10 puts 32B at Gopher's budget and
    needs 57-122% more FLOPs than Table A3 for each size; the unrounded ones (0.3392, 0.2849, a = 0.4565)
    still need 7-19% more. The table's rows follow a = 0.4586 (42B at Gopher's budget; the paper's text
    says "40B") to within their rounding, so the table, not the rounded formula, is what we reproduce.
    """
    return {
        "chinchilla-1": table_allocation(
            CHINCHILLA_TABLE3, "chinchilla-1",
            "Hoffmann et al. 2022, Table 3 regressed in log10 (as BloombergGPT: N = 0.498x - 1.004)",
        ),
        "chinchilla-2": table_allocation(
            CHINCHILLA_TABLE_A3_APPROACH2, "chinchilla-2",
            "Hoffmann et al. 2022, Table A3 approach 2 regressed in log10 (a = 0.49, Table 2)",
            TABLE_A3_OFF_LAW_ROWS["chinchilla-2"],
        ),
        "chinchilla-3": table_allocation(
            CHINCHILLA_TABLE_A3_APPROACH3, "chinchilla-3",
            "Hoffmann et al. 2022, Table A3 approach 3 regressed in log10 (a = 0.459; eq. 10's rounded "
            "exponents give a = 0.452 and 32B instead of 42B at Gopher's budget)",
            TABLE_A3_OFF_LAW_ROWS["chinchilla-3"],
        ),
        "kaplan": kaplan_allocation(),
    }
