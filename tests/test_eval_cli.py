"""`chinchax eval` and `chinchax generate` on a run directory in the trainer's format (config.yaml + a
verified orbax checkpoint written with chinchax.train's own Checkpointer), end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chinchax import configlib
from chinchax.cli import main
from chinchax.data.pipeline import register_memory_source
from chinchax.data.tokenizers import ByteTokenizer
from chinchax.train.config import ExperimentConfig

DOCS = [f"document {i}: the quick brown fox jumps over the lazy dog {i * 7}." for i in range(12)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from chinchax.sharding import make_mesh
    from chinchax.train import state as state_lib
    from chinchax.train.checkpoint import Checkpointer
    from chinchax.train.metrics import atomic_write_text
    from chinchax.train.optimizer import make_optimizer

    register_memory_source("eval_cli_test", {"train": DOCS, "validation": DOCS})
    path = tmp_path_factory.mktemp("run")
    cfg = configlib.load_config(ExperimentConfig, {
        "model": {"preset": "tiny-gpt2", "vocab_size": 384, "d_model": 32, "n_heads": 4, "d_ff": 64, "max_len": 64},
        "data": {"source": "memory:eval_cli_test", "seq_len": 32, "eval_batches": 2},
        "optimizer": {"warmup_steps": 1},
        "trainer": {"run_dir": str(path), "steps": 10, "batch_size": 4},
    })
    atomic_write_text(path / "config.yaml", configlib.dump_yaml(cfg))
    mesh = make_mesh((-1, 1, 1))
    parts = state_lib.model_parts(cfg.model, mesh, cfg.trainer.seed)
    tx, _ = make_optimizer(cfg.optimizer, cfg.total_steps, parts.decay_mask)
    state, _ = state_lib.init_train_state(cfg.model, tx, parts, mesh, cfg.trainer.seed)
    ckpt = Checkpointer(path / "checkpoints", max_to_keep=2, use_async=False)
    ckpt.save(3, state, {"position": 3})
    ckpt.close()
    model = parts.merge(state["params"])
    model.eval()
    return path, cfg, model


def test_generate_cli_continues_prompts_with_the_checkpointed_model(run_dir, capsys):
    from chinchax.model.decoding import SamplingConfig, generate

    path, _, model = run_dir
    tok = ByteTokenizer()
    assert main(["generate", str(path), "--prompt", "the quick", "--prompt", "a", "--max-new-tokens", "5", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["the quick", "a"]
    expected = generate(model, [[tok.bos_id, *tok.encode("the quick")], [tok.bos_id, *tok.encode("a")]],
                        SamplingConfig(max_new_tokens=5, stop_tokens=(tok.eos_id,)))
    assert [line["tokens"] for line in lines] == expected.as_lists()
    assert lines[0]["completion"] == tok.decode(expected.as_lists()[0])


def test_eval_cli_writes_losses_and_task_results_into_eval_json(run_dir, tmp_path, capsys):
    from chinchax.data.pipeline import eval_batches
    from chinchax.evaluation.losses import validation_loss
    from chinchax.train.evaluate import token_byte_lengths

    path, cfg, model = run_dir
    task = tmp_path / "yesno.jsonl"
    task.write_text("".join(json.dumps({"context": f"Is {i} even?", "choices": [" yes", " no"], "label": i % 2}) + "\n"
                            for i in range(4)))
    rc = main(["eval", str(path), "--loss", "--conditional", "--input-len", "8", "--target-len", "8", "--max-pairs", "4",
               "--task", str(task), "--shots", "1", "--batch-size", "4"])
    assert rc == 0
    data = json.loads((path / "eval.json").read_text())
    assert data["step"] == 3 and set(data["results"]) == {"validation", "conditional", "yesno/1shot"}
    tok = ByteTokenizer()
    direct = validation_loss(model, eval_batches(cfg.data, tok, global_batch_size=4), byte_lengths=token_byte_lengths(tok))
    assert data["results"]["validation"]["loss"] == pytest.approx(direct["loss"], rel=1e-6)
    assert data["results"]["validation"]["bits_per_byte"] == pytest.approx(direct["bits_per_byte"], rel=1e-6)
    assert np.isfinite(data["results"]["conditional"]["conditional_loss"])
    assert data["results"]["conditional"]["pairs"] == 4
    mc = data["results"]["yesno/1shot"]
    assert mc["examples"] == 4 and mc["acc"] in (0.0, 0.25, 0.5, 0.75, 1.0) and mc["shots"] == 1
    # a second call merges into the same file; a run directory that cannot be loaded is skipped and reported
    assert main(["eval", str(tmp_path / "missing_run"), str(path), "--task", str(task), "--limit", "2"]) == 2
    assert "skipping" in capsys.readouterr().err
    data = json.loads((path / "eval.json").read_text())
    assert set(data["results"]) == {"validation", "conditional", "yesno/1shot", "yesno/0shot"}
    assert data["results"]["yesno/0shot"]["examples"] == 2


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--loss"]) == 2
    assert "a run directory" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--task", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_loading_skips_an_unverified_newer_step_and_leaves_it_in_place(run_dir, tmp_path, capsys):
    """A run still training may hold a finished step whose manifest is not written yet: evaluation uses the
    newest verified step and never moves or deletes anything."""
    import shutil

    from chinchax.evaluation.run_loading import load_run
    from chinchax.train.checkpoint import MANIFEST

    path, _, _ = run_dir
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    shutil.copytree(copy / "checkpoints" / "3", copy / "checkpoints" / "5")
    (copy / "checkpoints" / "5" / MANIFEST).unlink()
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    assert load_run(copy).step == 3
    assert "skipping checkpoint step 5" in capsys.readouterr().err
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
