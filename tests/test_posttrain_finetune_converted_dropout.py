"""A converted GPT-2 keeps Hugging Face's dropout (0.1) and fine-tunes with it.

It used to fail at the first step with "ValueError: output array is read-only": the model's RNG counters
(`train.state.ModelParts.other`, host numpy from `jax.device_get`, read-only) went into the model as numpy
values, and nnx's RngStream draws with `count[...] += 1`, an in-place numpy add. Not a matter of conversion:
any model with dropout > 0 failed so, in pretraining too. Writable copies would not do either: each trace
would bump the shared host counters, so a retraced step would draw other dropout masks.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chinchax.cli import main  # noqa: E402
from chinchax.model.convert.hf import load_converted  # noqa: E402

torch.set_num_threads(1)
TEXT = ["the quick brown fox jumps over the lazy dog. " * 4] * 12


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("converted-dropout")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=384, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)  # GPT-2's dropouts: 0.1 (the defaults)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "hf")
    assert main(["model", "convert", str(root / "hf"), str(root / "cx")]) == 0
    cfg, _ = load_converted(root / "cx")
    assert (cfg.dropout, cfg.attention_dropout) == (0.1, 0.1)
    return root / "cx"


def test_finetune_of_a_converted_gpt2_with_dropout(converted, tmp_path, capsys):
    from chinchax.data.pipeline import register_memory_source

    src = register_memory_source("converted-dropout", {"train": TEXT, "validation": TEXT[:2]})
    run_dir = tmp_path / "ft"
    assert main(["finetune", str(converted), "experiments/finetune_tiny.yaml", f"data.source={src}",
                 "data.tokenizer=byte", "data.seq_len=16", "data.eval_batches=1", "trainer.batch_size=2",
                 "trainer.steps=1", "trainer.checkpoint_every=1", "trainer.progress_bar=false",
                 "finetune.method=full", f"trainer.run_dir={run_dir}"]) == 0
    capsys.readouterr()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "done" and np.isfinite(run["eval_loss"])


def test_a_traced_step_leaves_the_host_rng_counters_alone(converted):
    from chinchax.train import state as state_lib
    from chinchax.train.step import forward

    cfg, params = load_converted(converted)
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    parts = state_lib.model_parts(cfg, mesh, 0)
    parts.other = jax.tree.map(np.array, parts.other)  # writable: an in-place add would go unnoticed
    before = jax.tree.map(np.copy, parts.other)
    batch = {"inputs": np.arange(2 * 8, dtype=np.int32).reshape(2, 8)}

    def logits(train):  # a fresh jax.jit each call: a new trace of the same step
        return np.asarray(jax.jit(lambda p, b: forward(parts, p, b, train=train))(params, batch))

    first, again = logits(True), logits(True)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(parts.other), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first, again)  # the retrace draws the same masks
    assert np.abs(first - logits(False)).max() > 1e-3  # and the dropout does act
