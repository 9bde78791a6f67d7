"""Results tables: loading each format, and clear errors for bad tables."""

import json

import numpy as np
import pandas as pd
import pytest

from chinchax.errors import UserError
from chinchax.scaling.fit_chinchilla import fit_approach2
from chinchax.scaling.fit_parametric import fit_approach3
from chinchax.scaling.laws import CHINCHILLA_3
from chinchax.scaling.synthetic import isoflop_table
from chinchax.scaling.table import budgets, holdout_split, load_table


def _table():
    return isoflop_table(CHINCHILLA_3, [1e18, 1e19, 1e20], 5, seed=0)


def test_csv_parquet_and_frame_agree(tmp_path):
    df = _table()
    df.to_csv(tmp_path / "r.csv", index=False)
    df.to_parquet(tmp_path / "r.parquet")
    a, b, c = load_table(tmp_path / "r.csv"), load_table(tmp_path / "r.parquet"), load_table(df)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert a["loss"].dtype == np.float64


def test_sweep_directory_of_run_json(tmp_path):
    for i, (n, d, loss, status) in enumerate([(1e6, 2e7, 3.0, "done"), (2e6, 1e7, 2.9, "done"), (3e6, 1e7, 9.9, "failed")]):
        run = tmp_path / f"r{i}"
        run.mkdir()
        rec = {"run": f"r{i}", "status": status, "n_params": n, "n_params_non_embedding": n * 0.8, "n_tokens": d,
               "flops_6nd": 6 * n * d, "final_train_loss": loss + 0.1, "eval_loss": loss if i else None}
        (run / "run.json").write_text(json.dumps(rec))
    df = load_table(tmp_path)
    assert list(df["run"]) == ["r0", "r1"]  # the failed run is skipped
    assert list(df["loss"]) == [3.1, 2.9]  # eval loss when there is one, else the final train loss
    assert df["flops"].iloc[1] == 6 * 2e6 * 1e7
    with pytest.raises(UserError, match="no finished run.json"):
        load_table(tmp_path / "r2")


def test_flops_filled_and_budgets_inferred():
    df = load_table(_table().drop(columns=["flops", "budget"]))
    assert np.allclose(df["flops"], 6 * df["n_params"] * df["n_tokens"])
    assert sorted(set(budgets(df))) == pytest.approx([1e18, 1e19, 1e20], rel=1e-6)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop(columns=["loss"]), "lacks column.*loss"),
        (lambda df: df.assign(loss=np.where(df.index == 3, np.nan, df["loss"])), "'loss' has 1 missing/NaN/inf"),
        (lambda df: df.assign(n_tokens=np.where(df.index == 2, np.inf, df["n_tokens"])), "'n_tokens' has 1"),
        (lambda df: df.assign(n_params=np.where(df.index == 4, -5.0, df["n_params"])), "'n_params' must be positive.*row 4"),
        (lambda df: df.assign(loss=0.0), "'loss' must be positive"),
    ],
)
def test_bad_tables_raise_clear_errors(mutate, message):
    with pytest.raises(UserError, match=message):
        load_table(mutate(_table()))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_table(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(UserError, match="unknown table format"):
        load_table(tmp_path / "x.xlsx")


def test_too_few_points_name_the_minimum():
    df = load_table(_table())
    with pytest.raises(UserError, match="approach 3.*at least 6 runs.*has 4"):
        fit_approach3(df.head(4), n_bootstrap=2)
    one_budget = df[budgets(df) == 1e18]
    with pytest.raises(UserError, match="at least 2 budgets with >= 3 runs"):
        fit_approach2(one_budget, n_bootstrap=2)


def test_holdout_largest_splits_by_budget():
    df = load_table(_table())
    fit, held = holdout_split(df, "largest")
    assert set(budgets(held)) == {1e20} and 1e20 not in set(budgets(fit))
    assert len(fit) + len(held) == len(df)
    with pytest.raises(UserError, match="not known"):
        holdout_split(df, "smallest")
