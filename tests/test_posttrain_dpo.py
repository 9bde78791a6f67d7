"""DPO and IPO on a chinchax decoder: the aligned policy prefers the chosen completions more than the reference
does, resumes exactly, reads back as an ordinary run dir (`load_run`), and bad settings fail clearly."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.experiments.alignment_policy import TEST_TEXTS, pretrain_policy
from chinchax.posttrain import policy, policy_dpo, preference
from chinchax.train.config import OptimizerConfig, TrainerConfig

PROMPTS = ["def add(a, b):\n    ", "def scale(x, k):\n    ", "def first(items):\n    ", "def clamp(v, lo, hi):\n    "]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    pretrain_policy(d / "policy", TEST_TEXTS, steps=20)
    pairs = [preference.Pair(p, "return 1\n", "pass\n") for p in PROMPTS] * 4
    preference.write_preferences(d / "pairs.jsonl", pairs)
    return d


def _cfg(d, run, *, loss_type="sigmoid", steps=12, checkpoint_every=0):
    return policy_dpo.DPORunConfig(
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0, schedule="constant"),
        trainer=TrainerConfig(run_dir=str(d / run), steps=steps, batch_size=8, log_every=4,
                              checkpoint_every=checkpoint_every, progress_bar=False),
        dpo=policy_dpo.DPOSettings(policy=str(d / "policy"), train_file=str(d / "pairs.jsonl"), beta=0.5,
                                   loss_type=loss_type, max_len=48),
    )


def _margin(d, run_dir):
    """Mean implicit reward margin log pi/pi_ref (chosen) - log pi/pi_ref (rejected) on the pairs."""
    pairs = preference.read_preferences(d / "pairs.jsonl")[:4]
    enc = preference.encode_pairs(policy.load_policy(d / "policy").tokenizer, pairs, variant="decoder_only", max_len=48)
    enc.pop("margin")
    ref = policy_dpo.reference_logps(policy.load_policy(d / "policy").model, enc, 8)
    new = policy_dpo.reference_logps(policy.load_policy(run_dir).model, enc, 8)
    ratio = new - ref
    return float(np.mean(ratio[:4] - ratio[4:]))


@pytest.fixture(scope="module")
def dpo_run(base):
    return policy_dpo.train_dpo(_cfg(base, "dpo", checkpoint_every=6))


def test_dpo_moves_the_policy_towards_the_chosen_completions(base, dpo_run):
    rows = [json.loads(line) for line in (base / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] < np.log(2) + 1e-3  # first logged step already below log 2 (= at the reference)
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["reward_accuracy"] == 1.0
    # read back through chinchax.evaluation's loader (an ordinary run dir) and compare with the reference
    assert _margin(base, base / "dpo") > 1.0


def test_ipo_trains_too(base):
    result = policy_dpo.train_dpo(_cfg(base, "ipo", loss_type="ipo", steps=8))
    assert result["final"]["reward_margin"] > 0


def test_dpo_resume_equals_uninterrupted(base, dpo_run, tmp_path):
    copy = tmp_path / "dpo"
    shutil.copytree(base / "dpo", copy)
    shutil.rmtree(copy / "checkpoints" / "12")
    cfg = _cfg(base, "x", checkpoint_every=6)
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, run_dir=str(copy)))
    again = policy_dpo.train_dpo(cfg)
    drop = lambda row: {k: v for k, v in row.items() if k != "elapsed_s"}  # noqa: E731
    assert drop(again["final"]) == drop(dpo_run["final"])  # bitwise: same batches, same updates


@pytest.mark.parametrize(
    "change, message",
    [(dict(beta=-0.1), "dpo.beta=-0.1 must be > 0"), (dict(loss_type="hinge"), "choose one of"),
     (dict(policy=""), "dpo.policy is empty")],
)
def test_bad_settings(base, change, message):
    cfg = _cfg(base, "bad")
    cfg = dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, **change))
    with pytest.raises(UserError, match=message):
        policy_dpo.train_dpo(cfg)
