"""Bad inputs get a message that names the problem, the place (a CSV's own line numbers) and the fix."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from chinchax.errors import UserError
from chinchax.scaling.fitresult import FitResult
from chinchax.scaling.table import budgets, describe_budgets, load_table

NUMPY_REPR = re.compile(r"np\.(float|int)\d*\(")


def _csv(tmp_path, text: str, name="r.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _raises(source, pattern):
    with pytest.raises(UserError, match=pattern) as info:
        load_table(source)
    assert not NUMPY_REPR.search(str(info.value)), str(info.value)
    return str(info.value)


GOOD = "n_params,n_tokens,loss\n1e6,2e7,3.1\n2e6,1e7,3.0\n4e6,5e6,3.05\n"


def test_empty_file(tmp_path):
    _raises(_csv(tmp_path, ""), r"r\.csv is empty.*header line")
    _raises(_csv(tmp_path, "\n\n  \n"), "is empty")
    _raises(_csv(tmp_path, "n_params,n_tokens,loss\n"), "header but no rows")


def test_binary_bytes_named_csv(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(bytes(range(256)) * 4)
    _raises(path, "not a text CSV.*binary")
    pd.DataFrame({"n_params": [1e6], "n_tokens": [2e7], "loss": [3.0]}).to_parquet(tmp_path / "p.csv")
    _raises(tmp_path / "p.csv", "Parquet file named .csv; rename it to .parquet")


def test_non_numeric_cell_says_not_a_number_with_line(tmp_path):
    text = "n_params,n_tokens,loss\n1e6,2e7,3.1\n2e6,1e7,abc\n4e6,5e6,3.05\n"
    msg = _raises(_csv(tmp_path, text), r"column 'loss' holds 'abc' at line 3, which is not a number")
    assert "missing" not in msg and "NaN" not in msg and "inf" not in msg
    # a blank line in the file does not shift the line numbers
    text = "n_params,n_tokens,loss\n1e6,2e7,3.1\n\n2e6,1e7,3.0\n4e6,5e6,3.05\n8e6,x,3.0\n"
    _raises(_csv(tmp_path, text), "'n_tokens' holds 'x' at line 6")


def test_missing_and_non_positive_name_the_line(tmp_path):
    text = "n_params,n_tokens,loss\n1e6,2e7,3.1\n2e6,1e7,\n4e6,5e6,3.05\n"
    _raises(_csv(tmp_path, text), r"'loss' has 1 missing/NaN/inf value\(s\) \(first at line 3\)")
    text = "n_params,n_tokens,loss\n1e6,2e7,3.1\n2e6,1e7,3.0\n-4e6,5e6,3.05\n"
    msg = _raises(_csv(tmp_path, text), r"'n_params' must be positive, but line 4 holds -4e\+06")
    assert "np.float64" not in msg


def test_duplicate_rows_are_refused_not_counted(tmp_path):
    text = GOOD + "2e6,1e7,3.0\n"
    _raises(_csv(tmp_path, text), r"1 row\(s\) repeat another row exactly \(line 3 = line 5\).*not an independent run")
    df = pd.read_csv(_csv(tmp_path, GOOD))
    _raises(pd.concat([df, df.iloc[[0]]]), r"row 0 = row 3")
    # the same numbers under different run names are different runs (e.g. seeds): accepted
    assert len(load_table(df.assign(run=["a", "b", "c"]))) == 3


def _chinchilla_style_runs(seed=0, jitter=0.03):
    """240 runs over Chinchilla's 9 isoFLOP budgets, FLOPs jittered by a few % (detailed FLOP counts)."""
    rng = np.random.default_rng(seed)
    budgets_ = [6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21]
    rows = []
    for i in range(240):
        c = budgets_[i % 9]
        n = 10 ** rng.uniform(7, 9)
        flops = c * np.exp(rng.uniform(-jitter, jitter))
        rows.append({"n_params": n, "n_tokens": flops / (6 * n), "flops": flops, "loss": 3.0 + rng.uniform(0, 1)})
    return pd.DataFrame(rows), budgets_


def test_budgets_grouped_by_relative_tolerance(capsys):
    df, true_budgets = _chinchilla_style_runs()
    old_rounding = np.round(df["flops"] / 10 ** np.floor(np.log10(df["flops"])), 1)
    assert len(np.unique(old_rounding * 10 ** np.floor(np.log10(df["flops"])))) > 20  # what 2-digit rounding gave
    loaded = load_table(df)
    b = budgets(loaded)
    assert sorted(np.unique(b)) == pytest.approx(true_budgets, rel=0.01)
    for budget in true_budgets:  # every run lands in its own budget
        assert (np.isclose(b, budget, rtol=0.01) == np.isclose(df["flops"], budget, rtol=0.05)).all()
    err = capsys.readouterr().err  # the grouping is printed
    assert "240 runs grouped into 9 isoFLOP budget(s)" in err and "6e+18 FLOPs: 27 run(s)" in err
    assert describe_budgets(loaded).splitlines()[0] == err.splitlines()[0]


def test_budget_column_is_used_and_not_reported(capsys):
    df, _ = _chinchilla_style_runs()
    loaded = load_table(df.assign(budget=df["flops"].round(-15)))
    assert np.array_equal(budgets(loaded), loaded["budget"].to_numpy())
    assert "isoFLOP budget" not in capsys.readouterr().err


def test_kaplan_fit_on_a_flat_table_does_not_overflow():
    from chinchax.scaling.fit_kaplan import fit_kaplan

    # 20 valid runs whose loss barely moves with N or D: Kaplan's N_c = coef^(1/alpha_N) is ~10^1800,
    # which raised OverflowError; now the constant is NaN and a warning says why.
    rows = [{"n_params": n, "n_tokens": d, "loss": 3.2 - 0.001 * i + 0.0005 * ((7 * i + 3 * j) % 4)}
            for i, n in enumerate([1e7, 3e7, 1e8, 3e8, 1e9]) for j, d in enumerate([1e9, 3e9, 1e10, 3e10])]
    df = load_table(pd.DataFrame(rows))
    with pytest.warns(UserWarning, match=r"L\(N\): the loss barely falls with N .*beyond floating point") as record:
        result = fit_kaplan(df, n_bootstrap=8)
    assert np.isnan(result.params["N_c"]) and result.params["alpha_N"] > 0
    assert any("N_c" in w for w in result.extra["warnings"])
    assert not any(NUMPY_REPR.search(str(w.message)) for w in record)


def test_fit_json_that_is_not_a_chinchax_fit(tmp_path):
    cases = {
        "list.json": "[1, 2, 3]",
        "config.json": json.dumps({"model": {"d_model": 256}, "law": "x"}),
        "run.json": json.dumps({"run": "r0", "status": "done", "n_params": 1e6}),
        "half.json": json.dumps({"law": "kaplan", "params": {}, "allocation": [1, 2]}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(UserError, match=r"is not a chinchax fit.*chinchax fit TABLE --out"):
            FitResult.from_json(path)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00\x01")  # binary: named as not UTF-8 text (fileio.read_user_json)
    with pytest.raises(UserError, match=r"bin\.json:1:1 is not UTF-8 text \(byte 0xff\)"):
        FitResult.from_json(tmp_path / "bin.json")
    (tmp_path / "cut.json").write_text('{"law": "kaplan", "params": {')  # cut short: not valid JSON
    with pytest.raises(UserError, match=r"cut\.json:1:\d+ is not valid JSON.*cut short"):
        FitResult.from_json(tmp_path / "cut.json")
