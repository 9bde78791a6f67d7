"""Reward models: a scalar head on every variant, Bradley-Terry training that learns a preference, exact resume,
calibration metrics, and clear errors for bad preference files."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from chinchax.data.tokenizers import ByteTokenizer
from chinchax.errors import UserError
from chinchax.model.config import ModelConfig
from chinchax.posttrain import preference, reward
from chinchax.train.config import OptimizerConfig, TrainerConfig

TINY = dict(vocab_size=384, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64)


def _pairs(n, seed=0):
    # The preferred completion has more 'x' characters than the rejected one: a preference a tiny model learns.
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        good = "".join(rng.permutation(list("x" * (k + 3) + "y" * 2)))
        bad = "".join(rng.permutation(list("x" * k + "y" * 5)))
        out.append(preference.Pair("p:", good, bad))
    return out


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefs")
    preference.write_preferences(d / "train.jsonl", _pairs(256, 0))
    preference.write_preferences(d / "eval.jsonl", _pairs(64, 1))
    return d


def _cfg(run_dir, files, steps=60, checkpoint_every=0):
    return reward.RewardRunConfig(
        model=ModelConfig(**TINY),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=5, weight_decay=0.0, schedule="constant"),
        trainer=TrainerConfig(run_dir=str(run_dir), steps=steps, batch_size=16, log_every=10,
                              checkpoint_every=checkpoint_every, progress_bar=False),
        reward=reward.RewardSettings(train_file=str(files / "train.jsonl"), eval_file=str(files / "eval.jsonl"),
                                     max_len=32),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pair_files):
    run_dir = tmp_path_factory.mktemp("rm") / "run"
    return run_dir, reward.train_reward(_cfg(run_dir, pair_files, checkpoint_every=30))


@pytest.mark.slow
def test_reward_model_learns_the_preference(trained):
    run_dir, result = trained
    ev = result["eval"]
    assert ev["accuracy"] >= 0.9, ev
    assert ev["bt_loss"] < np.log(2)  # better than chance (0.693)
    assert 0.0 <= ev["ece"] <= 1.0 and 0.0 <= ev["brier"] < 0.25
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert rows[-1]["loss"] < rows[0]["loss"]
    on_disk = json.loads((run_dir / "run.json").read_text())
    assert on_disk["eval"] == ev


@pytest.mark.slow
def test_loaded_reward_model_scores_like_the_trained_one(trained, pair_files):
    run_dir, result = trained
    loaded = reward.load_reward(run_dir)
    again = reward.evaluate_pairs(loaded.model, loaded.tokenizer, preference.read_preferences(pair_files / "eval.jsonl"),
                                  max_len=loaded.max_len)
    assert again == pytest.approx(result["eval"], rel=1e-6)


@pytest.mark.slow
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(trained, pair_files, tmp_path):
    run_dir, result = trained
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "60")  # as if killed after the step-30 checkpoint
    (copy / "run.json").unlink()
    again = reward.train_reward(_cfg(copy, pair_files, checkpoint_every=30))
    assert again["eval"] == result["eval"]  # bitwise: same batches, same updates
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    changed = dataclasses.replace(_cfg(copy, pair_files), optimizer=OptimizerConfig(learning_rate=1e-2))
    with pytest.raises(UserError, match="different config"):
        reward.train_reward(changed)


@pytest.mark.parametrize(
    "variant",
    [dict(variant="encoder_only", attention="bidirectional"), dict(variant="encoder_decoder"),
     dict(variant="decoder_only", attention="prefix", position="rope")],
)
def test_scalar_head_on_every_variant(variant):
    cfg = ModelConfig(**{**TINY, **variant})
    model = reward.build(cfg, 0)
    tok = ByteTokenizer()
    enc = preference.encode_sequences(tok, ["ab", "abc"], ["cd", "c"], variant=cfg.variant, max_len=16)
    scores = reward.score_encoded(model, enc, batch_size=2)
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and scores[0] != scores[1]
    # padding does not change a score: the same row alone, without the other row's padding
    alone = preference.encode_sequences(tok, ["abc"], ["c"], variant=cfg.variant, max_len=16)
    np.testing.assert_allclose(reward.score_encoded(model, alone, batch_size=1), scores[1:], rtol=1e-5, atol=1e-6)


def test_calibration_metrics():
    p = np.array([0.9, 0.8, 0.4])
    got = reward.calibration(p)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["bt_loss"] == pytest.approx(-np.mean(np.log(p)))
    assert got["brier"] == pytest.approx(np.mean(np.concatenate([(p - 1) ** 2, (1 - p) ** 2])))
    # bins: 0.9 (y=1), 0.8 (y=1), 0.4 (y=1), 0.1 (y=0), 0.2 (y=0), 0.6 (y=0) -> each its own bin
    assert got["ece"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.1 + 0.2 + 0.6) / 6)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a", "chosen": "b"}', "has no rejected"),
        ('{"prompt": "a", "chosen": "same", "rejected": "same"}', "identical"),
        ('{"prompt": "a", "chosen": "", "rejected": "c"}', "empty completion"),
        ('{"prompt": "a", "chosen": 3, "rejected": "c"}', "must be a string"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_preference_files(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + line + "\n")
    with pytest.raises(UserError, match=message) as e:
        preference.read_preferences(path)
    assert "bad.jsonl:2" in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        preference.read_preferences(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no preference pairs"):
        preference.read_preferences(tmp_path / "empty.jsonl")


def test_too_long_pairs_are_refused_not_truncated():
    with pytest.raises(UserError, match="max_len=4"):
        preference.encode_sequences(ByteTokenizer(), ["abc"], ["def"], variant="decoder_only", max_len=4)



@pytest.mark.slow
def test_cli_reward_train_and_eval(pair_files, tmp_path, capsys):
    from chinchax.cli import main

    run = tmp_path / "cli_rm"
    args = ["reward", "train", "model.vocab_size=384", "model.d_model=16", "model.n_layers=1", "model.n_heads=2",
            "model.d_ff=32", "model.max_len=64", f"reward.train_file={pair_files / 'train.jsonl'}",
            "reward.max_len=32", "trainer.steps=4", "trainer.batch_size=8", "trainer.progress_bar=false",
            f"trainer.run_dir={run}"]
    assert main(args) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    assert main(["reward", "eval", str(run), str(pair_files / "eval.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_pairs"] == 64
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "x", "rejected": "x"}\n')
    assert main(["reward", "eval", str(run), str(bad)]) == 2
    assert "identical" in capsys.readouterr().err
