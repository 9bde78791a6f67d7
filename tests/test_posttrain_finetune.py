"""`chinchax finetune` through the pretraining trainer: every method trains, leaves the base frozen where
it should, writes a run dir of the trainer's shape plus merged/ (whose loss is the run's eval loss), resumes
bitwise; bad settings fail with errors that name the key and the fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from chinchax.configlib import load_config
from chinchax.data.pipeline import register_memory_source
from chinchax.errors import UserError
from chinchax.model.convert.hf import flatten
from chinchax.posttrain.finetune import FinetuneConfig, finetune
from chinchax.train.checkpoint import load_numpy_state
from chinchax.train.config import ExperimentConfig
from chinchax.train.trainer import train

BASE_TEXT = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * 3 for i in range(60)]
# A fine-tuning task the base has never seen: one repeated sentence, easy to learn in a few steps.
TASK_TEXT = ["the quick brown fox jumps over the lazy dog. " * 4 for _ in range(40)]
BASE_SRC = register_memory_source("ft-base", {"train": BASE_TEXT[:50], "validation": BASE_TEXT[50:]})
TASK_SRC = register_memory_source("ft-task", {"train": TASK_TEXT[:30], "validation": TASK_TEXT[30:]})
COMMON = ["data.seq_len=32", "data.eval_batches=2", "trainer.batch_size=4", "trainer.progress_bar=false",
          "trainer.log_every=1", "optimizer.warmup_steps=0", "optimizer.schedule=constant"]


def _ft_cfg(run_dir, *extra):
    return load_config(FinetuneConfig, None, [*COMMON, f"data.source={TASK_SRC}", "trainer.steps=4",
                                               "optimizer.learning_rate=0.01", f"trainer.run_dir={run_dir}", *extra])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "base"
    cfg = load_config(ExperimentConfig, "experiments/tiny.yaml", [
        *COMMON, f"data.source={BASE_SRC}", "model.d_model=32", "model.n_layers=2", "model.n_heads=4",
        "model.d_ff=64", "model.max_len=64", "trainer.steps=4", f"trainer.run_dir={out}"])
    train(cfg)
    return out


@pytest.fixture(scope="module")
def runs(base_dir):
    out = {}
    for method in ("full", "lora", "qlora", "prompt_tuning"):
        run_dir = base_dir.parent / method
        result = finetune(base_dir, _ft_cfg(run_dir, f"finetune.method={method}", "finetune.lora.targets=[attention,mlp]",
                                            "finetune.qlora.group_size=32", "finetune.prompt.length=4"))
        out[method] = (run_dir, result)
    return out


def _base_flat(base_dir):
    step = max(int(p.name) for p in (base_dir / "checkpoints").iterdir() if p.name.isdigit())
    return flatten(load_numpy_state(base_dir / "checkpoints" / str(step))["params"])


def test_methods_train_and_keep_the_base_frozen(base_dir, runs):
    base = _base_flat(base_dir)
    n_base = sum(v.size for v in base.values())
    for method, (run_dir, result) in runs.items():
        info = result["finetune"]
        assert json.loads((run_dir / "run.json").read_text())["finetune"]["method"] == method
        assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "config.yaml").is_file()
        assert result["n_params"] == n_base  # X of the fine-tuning law: the base's size
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if "loss" in r]
        assert losses[-1] < losses[0], (method, losses)  # it learns the new task
        state = load_numpy_state(run_dir / "checkpoints" / "4")["params"]
        if method == "full":
            assert info["n_params_trainable"] == n_base
            assert not np.array_equal(flatten(state["trainable"])["decoder.blocks.mlp.wi_DF"], base["decoder.blocks.mlp.wi_DF"])
            continue
        frozen = flatten(state["frozen"]["base"])
        for key, value in frozen.items():  # the frozen part is bit for bit the base
            np.testing.assert_array_equal(value, base[key], err_msg=f"{method}: {key}")
    # LoRA: r·(in + out) per adapted kernel per layer: q k v o (32 in, 32 out), wi (32, 64), wo (64, 32)
    assert runs["lora"][1]["finetune"]["n_params_trainable"] == 2 * 8 * (4 * 64 + 2 * 96)
    assert runs["prompt_tuning"][1]["finetune"]["n_params_trainable"] == 4 * 32
    # QLoRA's frozen kernels are NF4: everything else in the frozen part is the same as LoRA's
    assert runs["qlora"][1]["finetune"]["frozen_base_bytes"] < 0.6 * runs["lora"][1]["finetune"]["frozen_base_bytes"]


def test_merged_model_has_the_runs_eval_loss(runs):
    from chinchax.data.pipeline import eval_batches
    from chinchax.data.tokenizers import load_tokenizer
    from chinchax.evaluation.losses import validation_loss
    from chinchax.model.convert.hf import load_converted, model_from_params

    for method in ("lora", "qlora", "full"):
        run_dir, result = runs[method]
        cfg, params = load_converted(run_dir / "merged")
        model = model_from_params(cfg, params)
        model.eval()
        data = _ft_cfg(run_dir).data
        batches = eval_batches(data, load_tokenizer(data.tokenizer), global_batch_size=4, variant=cfg.variant)
        loss = validation_loss(model, batches)["loss"]
        np.testing.assert_allclose(loss, result["eval_loss"], rtol=2e-6, err_msg=method)


def test_load_run_reads_a_finetune_run_dir_as_its_merged_model(runs):
    """`chinchax eval/generate RUN` on a fine-tune: the model it exported, not its {trainable, frozen}
    checkpoint; a prompt-tuned run is refused (its prompt is not a weight)."""
    from chinchax.evaluation.run_loading import load_run
    from chinchax.model.convert.hf import load_converted

    run_dir, _ = runs["lora"]
    loaded = load_run(run_dir)
    assert loaded.kind == "finetuned" and loaded.run_dir == run_dir
    _, merged = load_converted(run_dir / "merged")
    got = {k: np.asarray(v) for k, v in flatten(nnx_params(loaded.model)).items()}
    for key, value in flatten(merged).items():
        np.testing.assert_array_equal(got[key], np.asarray(value), err_msg=key)
    with pytest.raises(UserError, match="prompt-tuned run"):
        load_run(runs["prompt_tuning"][0])


def nnx_params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.slow
def test_lora_resume_is_bitwise(base_dir, runs, tmp_path):
    """4 steps with a checkpoint at 2, the step-4 checkpoint removed (a kill after step 2), re-run: the
    same adapters and optimizer state as the uninterrupted run."""
    run_dir = tmp_path / "resumed"
    args = ["finetune.method=lora", "finetune.lora.targets=[attention,mlp]", "trainer.checkpoint_every=2"]
    finetune(base_dir, _ft_cfg(run_dir, *args))
    shutil.rmtree(run_dir / "checkpoints" / "4")
    (run_dir / "run.json").unlink()
    finetune(base_dir, _ft_cfg(run_dir, *args))
    import jax

    resumed = jax.tree_util.tree_flatten_with_path(load_numpy_state(run_dir / "checkpoints" / "4"))[0]
    straight = jax.tree_util.tree_flatten_with_path(load_numpy_state(runs["lora"][0] / "checkpoints" / "4"))[0]
    assert [p for p, _ in resumed] == [p for p, _ in straight] and len(resumed) > 10
    for (path, a), (_, b) in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["finetune.lora.targets=[q,attn]"], ["finetune.lora.targets", "'attn'", "choose among"]),
        (["finetune.lora.targets=[wi_linear]"], ["wi_linear", "remove it from finetune.lora.targets"]),
        (["finetune.lora.rank=40"], ["finetune.lora.rank=40", "width", "<= 32"]),
        (["finetune.lora.dropout=1.0"], ["finetune.lora.dropout=1.0", "[0, 1)", "Set finetune.lora.dropout="]),
        (["finetune.method=adapters"], ["finetune.method", "lora"]),
        (["data.tokenizer=spm:/nonexistent.model"], ["data.tokenizer", "Set data.tokenizer=byte"]),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(base_dir, tmp_path, overrides, words):
    with pytest.raises(UserError) as e:
        finetune(base_dir, _ft_cfg(tmp_path / "bad", "finetune.method=lora", *overrides))
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_a_changed_method_is_not_resumed(base_dir, runs):
    run_dir = runs["lora"][0]
    with pytest.raises(UserError, match="other finetune settings"):
        finetune(base_dir, _ft_cfg(run_dir, "finetune.method=qlora", "finetune.lora.targets=[attention,mlp]"))


def test_cli_finetune_with_the_example_config(base_dir, capsys):
    from chinchax.cli import main

    run_dir = base_dir.parent / "cli"
    code = main(["finetune", str(base_dir), "experiments/finetune_tiny.yaml", f"data.source={TASK_SRC}",
                 "data.seq_len=32", "data.eval_batches=1", "trainer.steps=2", "trainer.batch_size=4",
                 "trainer.checkpoint_every=0", "trainer.progress_bar=false", f"trainer.run_dir={run_dir}",
                 "finetune.lora.targets=[q,v]"])
    assert code == 0
    out = capsys.readouterr().out
    assert "done: lora" in out and "trainable" in out
    assert json.loads((run_dir / "run.json").read_text())["finetune"]["n_params_trainable"] == 2 * 2 * 8 * 64


def test_cli_finetune_stopped_by_a_signal_exits_75_in_one_line(base_dir, tmp_path, capsys, monkeypatch):
    """As `chinchax train`: a signal during the fine-tune saves a checkpoint at the next call boundary and the
    command exits 75 with one line, no traceback; the same command again resumes and finishes. The signal is
    simulated at the Preemption object (tests/test_train_preemption.py sends real ones to `chinchax train`)."""
    from chinchax.cli import main
    from chinchax.train.preemption import Preemption

    def reached(self, first_step, last_step):
        self.signal_name = "SIGTERM"
        return True

    run_dir = tmp_path / "stopped"
    argv = ["finetune", str(base_dir), "experiments/finetune_tiny.yaml", f"data.source={TASK_SRC}",
            "data.seq_len=32", "data.eval_batches=1", "trainer.steps=3", "trainer.batch_size=4",
            "trainer.checkpoint_every=0", "trainer.progress_bar=false", f"trainer.run_dir={run_dir}",
            "finetune.lora.targets=[q,v]"]
    with monkeypatch.context() as m:
        m.setattr(Preemption, "reached", reached)
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 75, err[-2000:]
    assert "Traceback" not in err
    assert "chinchax finetune: stopped by SIGTERM at step 1" in err and "(exit code 75)" in err
    assert (run_dir / "checkpoints" / "1").is_dir() and not (run_dir / "run.json").exists()
    assert main(argv) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((run_dir / "run.json").read_text())["steps"] == 3


def test_a_mup_base_fine_tunes_with_its_multipliers(tmp_path):
    """Full fine-tuning of a µP base away from its base width: the run keeps the base's parametrization, and
    its updates carry µP's per-parameter multipliers (a hidden matrix moves 1/width as far, per unit of
    gradient sign, as an embedding); LoRA on the same base trains too."""
    base = tmp_path / "mup_base"
    cfg = load_config(ExperimentConfig, "experiments/tiny.yaml", [
        *COMMON, f"data.source={BASE_SRC}", "model.d_model=64", "model.n_layers=2", "model.n_heads=4",
        "model.d_ff=128", "model.max_len=64", "model.parametrization=mup", "model.mup_base_d_model=16",
        "trainer.steps=2", f"trainer.run_dir={base}"])
    train(cfg)
    before = _base_flat(base)
    finetune(base, _ft_cfg(tmp_path / "full", "finetune.method=full", "trainer.steps=1"))
    after = flatten(load_numpy_state(tmp_path / "full" / "checkpoints" / "1")["params"]["trainable"])
    # one Adam step from fresh moments moves every entry by ~lr (x its multiplier) where the gradient is not 0
    hidden = np.abs(after["decoder.blocks.mlp.wi_DF"] - before["decoder.blocks.mlp.wi_DF"]).max()
    table = np.abs(after["embedding_VD"] - before["embedding_VD"]).max()
    assert table == pytest.approx(0.01, rel=0.05) and hidden == pytest.approx(0.01 / 4, rel=0.05)
    finetune(base, _ft_cfg(tmp_path / "lora", "finetune.method=lora", "trainer.steps=1"))
    assert (tmp_path / "lora" / "run.json").is_file()
