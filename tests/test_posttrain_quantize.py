"""Weight quantization (qwix numerics, packed storage) and `chinchax quantize` on a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chinchax.cli import main
from chinchax.configlib import load_config
from chinchax.data.pipeline import register_memory_source
from chinchax.errors import UserError
from chinchax.posttrain.quantize import QuantSpec, dequantize_flat, quantize_flat, stored_bytes
from chinchax.train.config import ExperimentConfig
from chinchax.train.trainer import train

# QLoRA (Dettmers et al. 2023), Appendix E: the NF4 data type's 16 values.
PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def _kernels(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "decoder.blocks.self_attention.q_DHK": rng.standard_normal((1, 128, 4, 16)).astype(np.float32),
        "decoder.blocks.self_attention.o_HKD": rng.standard_normal((1, 4, 16, 128)).astype(np.float32),
        "decoder.blocks.mlp.wi_DF": rng.standard_normal((1, 128, 256)).astype(np.float32),
        "decoder.blocks.mlp.wo_FD": rng.standard_normal((1, 256, 128)).astype(np.float32),
    }


def test_nf4_code_book_is_the_papers():
    from qwix._src.core.numerics import get_nf4_buckets  # the code book qwix quantizes to
    from scipy.stats import norm

    np.testing.assert_array_equal(np.asarray(get_nf4_buckets(), np.float32), np.float32(PAPER_NF4))
    # and the paper's construction (quantiles of N(0, 1), asymmetric so that 0 is exact; bitsandbytes'
    # create_normal_map, in its float32 arithmetic: torch's float32 linspace) gives it bit for bit
    torch = pytest.importorskip("torch")
    offset = 0.9677083
    positive = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1]).tolist()
    negative = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1])).tolist()
    values = torch.tensor(sorted(positive + [0.0] + negative), dtype=torch.float32)
    np.testing.assert_array_equal((values / values.max()).numpy(), np.float32(PAPER_NF4))


def test_nf4_round_trips_the_code_book_and_rounds_to_nearest():
    path = "decoder.blocks.mlp.wi_DF"
    book = np.float32(PAPER_NF4)
    # one group of 64 inputs per output channel: absmax 1, every value a code, so dequantization is exact
    w = np.tile(np.concatenate([book] * 4), (1, 1))[:, :64].reshape(1, 64, 1).repeat(3, axis=2)
    spec = QuantSpec("nf4", 64)
    out = dequantize_flat(quantize_flat({path: w}, spec), {path: w.shape}, spec)[path]
    np.testing.assert_array_equal(np.asarray(out), w)
    mids = (book[:-1] + book[1:]) / 2 + np.float32(1e-3)  # just above a midpoint: rounds up
    w2 = np.concatenate([mids, [1.0]]).astype(np.float32).reshape(1, 16, 1)
    out2 = dequantize_flat(quantize_flat({path: w2}, QuantSpec("nf4", 16)), {path: w2.shape}, QuantSpec("nf4", 16))
    np.testing.assert_array_equal(np.asarray(out2[path]).reshape(-1)[:-1], book[1:])


@pytest.mark.parametrize("fmt, levels", [("int8", 127.5), ("int4", 7.5), ("int3", 3.5), ("nf4", None)])
def test_error_within_half_a_step(fmt, levels):
    flat = _kernels()
    spec = QuantSpec(fmt, 32)
    deq = dequantize_flat(quantize_flat(flat, spec), {k: v.shape for k, v in flat.items()}, spec)
    for path, w in flat.items():
        err = np.abs(np.asarray(deq[path]) - w)
        absmax = np.abs(w).max()
        if levels is not None:  # symmetric integers: absmax / levels per step
            assert err.max() <= absmax / levels / 2 * 1.0001, (fmt, path)
        else:  # NF4: the widest gap of the code book is 1 - 0.7230
            assert err.max() <= absmax * (1 - 0.7229568) / 2 * 1.0001, path
        assert err.max() > 0  # it did quantize


def test_qlora_base_bytes_at_most_0_3_of_float32():
    flat = _kernels()
    stored = quantize_flat(flat, QuantSpec("nf4", 64, double_quant=True))
    ratio = stored_bytes(stored) / sum(v.nbytes for v in flat.values())
    assert ratio <= 0.3, ratio
    # 4 bits + one int8 scale per 64 + a float32 per 256 scales: 0.129 of float32
    assert 0.125 < ratio < 0.135, ratio
    single = stored_bytes(quantize_flat(flat, QuantSpec("nf4", 64)))
    assert stored_bytes(stored) < single  # double quantization saves the float32 scales


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    src = register_memory_source("ptq", {"train": [f"x = {i} * y + {i}\n" * 20 for i in range(40)],
                                         "validation": [f"z = {i} - y\n" * 20 for i in range(8)]})
    out = tmp_path_factory.mktemp("ptq") / "base"
    cfg = load_config(ExperimentConfig, "experiments/tiny.yaml", [
        f"data.source={src}", "data.seq_len=32", "data.eval_batches=2", "trainer.batch_size=4",
        "trainer.progress_bar=false", "model.d_model=64", "model.n_layers=1", "model.n_heads=4",
        "model.d_ff=128", "model.max_len=64", "trainer.steps=4", "optimizer.warmup_steps=1", f"trainer.run_dir={out}"])
    train(cfg)
    return out


def test_quantize_cli_writes_an_evaluable_model_dir(run_dir, capsys):
    from chinchax.model.convert.hf import load_converted

    losses = {}
    for fmt in ("int8", "int3"):
        out = run_dir.parent / fmt
        assert main(["quantize", str(run_dir), "--format", fmt, "--group-size", "32", "--out", str(out)]) == 0
        info = json.loads((out / "quantization.json").read_text())
        losses[fmt] = info["loss_after"] - info["loss_before"]
        assert info["format"] == fmt and info["kernel_bytes_ratio"] < (0.3 if fmt == "int3" else 0.3 + 0.01)
        cfg, params = load_converted(out)
        assert cfg.d_model == 64 and (out / "quantized.npz").is_file()
        assert json.loads((out / "conversion.json").read_text())["tokenizer"] == "byte"
    assert abs(losses["int8"]) < 0.01  # 8 bits barely move the loss
    assert abs(losses["int3"]) > abs(losses["int8"])  # 3 bits move it more
    assert "eval loss" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--format", "fp2"], ["--format 'fp2'", "int8"]),
        (["--format", "int4", "--group-size", "48"], ["--group-size 48", "divide", "64"]),
    ],
)
def test_quantize_bad_input(run_dir, tmp_path, args, words):
    from chinchax.posttrain.quantize import QuantSpec
    from chinchax.posttrain.quantize_run import quantize_run

    fmt = args[1]
    group = int(args[3]) if len(args) > 2 else 64
    with pytest.raises(UserError) as e:
        quantize_run(run_dir, tmp_path / "q", QuantSpec(fmt, group))
    for word in words:
        assert word in str(e.value), (word, str(e.value))
