"""benchmarks/int8_matmul.py on CPU at toy shapes: each int8 product computes x·w to int8's precision, and the
script reports a speed ratio for every shape (the GPU figure itself needs a lent GPU)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    """A benchmarks/ script as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _script("int8_matmul")


def test_int8_products_are_the_matmul_to_int8_precision(bench):
    r = bench.measure(("check", 64, 256, 96), repeats=2)
    # bf16 inputs: ~2^-9 relative per element, averaging down; int8 per channel: ~1/254 of the range per element
    assert r["bf16_rel_error"] < 5e-3
    assert 1e-3 < r["w8_rel_error"] < 2e-2  # only w is rounded to int8
    assert r["w8_rel_error"] < r["w8a8_rel_error"] < 3e-2  # x too
    for key in ("bf16_s", "w8a8_s", "w8_s", "speedup_w8a8", "speedup_w8"):
        assert r[key] > 0


def test_script_reports_every_shape_as_json(bench, capsys):
    assert bench.main(["--tiny", "--repeats", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["shape"] for r in rows] == [s[0] for s in bench.TINY_SHAPES]
    assert all(r["speedup_w8a8"] == pytest.approx(r["bf16_s"] / r["w8a8_s"]) for r in rows)


def test_gpu_suite_runs_it_as_its_last_step(tmp_path):
    suite = _script("gpu_suite")
    rows = suite.main(["--tiny", "--out", str(tmp_path), "--only", suite.INT8])
    assert [r["variant"] for r in rows] == [suite.INT8]
    shapes = rows[0]["shapes"]
    assert [r.get("shape") for r in shapes] == ["tiny in", "tiny out"], shapes
    lines = (tmp_path / "int8_matmul.jsonl").read_text().splitlines()
    assert [json.loads(ln)["shape"] for ln in lines] == ["tiny in", "tiny out"]
