"""benchmarks/gpu_suite.py, the one-GPU measurement, run end to end on CPU at toy shapes: every variant's
arguments reach train_step.py, results are recorded per variant (failures too) and the budget is kept."""

import importlib.util
import json
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_arguments_keep_the_variant_and_swap_the_shapes(suite):
    args = suite.variant_args(["--preset", "1.3b", "--batch", "16", "--remat", "dots"], tiny=True, steps=2)
    flags = dict(zip(args[::2], args[1::2], strict=False))
    assert flags["--preset"] == "1.3b" and flags["--remat"] == "dots" and flags["--batch"] == "4"
    assert flags["--d-model"] == "32" and flags["--dtype"] == "float32" and args[-1] == "--json"
    full = suite.variant_args(["--preset", "350m", "--scan-layers"], tiny=False, steps=5)
    assert full == ["--preset", "350m", "--scan-layers", "--steps", "5", "--json"]


@pytest.mark.slow
def test_suite_runs_packed_and_plain_variants_and_keeps_its_budget(suite, tmp_path):
    rows = suite.main(["--tiny", "--steps", "2", "--out", str(tmp_path), "--only", "350m,350m packed8 cudnn,350m packed8 xla,1.3b scan",
                       "--budget-s", "1e9"])  # fmt: skip
    by_name = {r["variant"]: r for r in rows}
    assert set(by_name) == {"350m", "350m packed8 cudnn", "350m packed8 xla", "1.3b scan"}
    for r in rows:
        assert "error" not in r, r
        assert r["step_s"] > 0 and r["ratio_to_jnp_dot"] > 0
    assert by_name["350m packed8 xla"]["packed_docs"] == 8 and by_name["1.3b scan"]["scan_layers"] is True
    assert by_name["350m packed8 cudnn"]["attention_max_segments"] == 8
    assert by_name["350m packed8 xla"]["attention_max_segments"] == 0
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(ln)["variant"] for ln in lines] == [r["variant"] for r in rows]
    assert "| 350m packed8 xla |" in (tmp_path / "results.md").read_text()
    skipped = suite.main(["--tiny", "--out", str(tmp_path / "b"), "--only", "350m,1.3b", "--budget-s", "-1"])
    assert all(r["error"].startswith("skipped") for r in skipped)
