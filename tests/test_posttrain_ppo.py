"""PPO and RLOO on a chinchax decoder against a reward model: the reward goes up, the KL to the reference is
measured and penalised, the adaptive coefficient moves, resume is exact, the exported policy loads as a run
dir, and bad settings (a KL coefficient below zero, another vocabulary) fail clearly."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.experiments.alignment_policy import TEST_TEXTS, pretrain_policy
from chinchax.model.config import ModelConfig
from chinchax.posttrain import policy, policy_ppo, preference, reward
from chinchax.train.config import OptimizerConfig, TrainerConfig

PROMPTS = ["def add(a, b):\n    ", "def scale(x, k):\n    ", "def first(items):\n    ", "def clamp(v, lo, hi):\n    "]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppo")
    pretrain_policy(d / "policy", TEST_TEXTS, steps=20)
    # A reward model that prefers completions with 'return' over ones without it.
    pairs = [preference.Pair(p, f"return {w}\n", f"{w} = 1\n") for p in PROMPTS for w in ("a", "x", "y", "items", "v")]
    preference.write_preferences(d / "pairs.jsonl", pairs)
    reward.train_reward(reward.RewardRunConfig(
        model=ModelConfig(vocab_size=384, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0, schedule="constant"),
        trainer=TrainerConfig(run_dir=str(d / "rm"), steps=40, batch_size=8, log_every=10, progress_bar=False),
        reward=reward.RewardSettings(train_file=str(d / "pairs.jsonl"), eval_fraction=0.2, max_len=64),
    ))
    return d


def _cfg(d, run, steps=8, **ppo):
    return policy_ppo.PPORunConfig(
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0, schedule="constant"),
        trainer=TrainerConfig(run_dir=str(d / run), steps=steps, batch_size=8, log_every=1, checkpoint_every=4,
                              progress_bar=False),
        ppo=policy_ppo.PPOSettings(policy=str(d / "policy"), reward_model=str(d / "rm"), max_new_tokens=10,
                                   **{"kl_coef": 0.05, **ppo}),
    )


@pytest.fixture(scope="module")
def ppo_run(setup):
    return policy_ppo.train_ppo(_cfg(setup, "ppo", kl_target=0.5, kl_horizon=50), prompts=PROMPTS)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_ppo_raises_the_reward_and_measures_kl(setup, ppo_run):
    rows = _rows(setup / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    first, last = np.mean([r["score"] for r in rows[:2]]), np.mean([r["score"] for r in rows[-2:]])
    assert last > first, (first, last)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # step 1's rollout comes from the reference itself
    assert rows[-1]["kl"] > 0.0
    assert len({r["kl_coef"] for r in rows}) > 1  # adaptive: the coefficient moved
    # the exported policy is an ordinary run dir, and it differs from the reference
    exported = policy.load_policy(setup / "ppo" / "policy")
    assert exported.step == 8


@pytest.mark.slow
def test_ppo_resume_equals_uninterrupted(setup, ppo_run, tmp_path):
    copy = tmp_path / "ppo"
    shutil.copytree(setup / "ppo", copy)
    shutil.rmtree(copy / "checkpoints" / "8")
    cfg = _cfg(setup, "x", kl_target=0.5, kl_horizon=50)
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, run_dir=str(copy)))
    again = policy_ppo.train_ppo(cfg, prompts=PROMPTS)
    drop = lambda row: {k: v for k, v in row.items() if k != "elapsed_s"}  # noqa: E731
    assert drop(again["final"]) == drop(ppo_run["final"])
    assert again["kl_coef_final"] == ppo_run["kl_coef_final"]


@pytest.mark.slow
def test_rloo_runs_critic_free(setup):
    result = policy_ppo.train_ppo(_cfg(setup, "rloo", steps=3, algorithm="rloo", samples_per_prompt=2), prompts=PROMPTS)
    assert result["final"]["value_loss"] == 0.0 and np.isfinite(result["final"]["policy_loss"])


@pytest.mark.slow
def test_grpo_runs_with_the_kl_in_the_loss(setup):
    result = policy_ppo.train_ppo(_cfg(setup, "grpo", steps=3, algorithm="grpo", samples_per_prompt=2, kl_coef=0.1),
                                  prompts=PROMPTS)
    assert result["final"]["value_loss"] == 0.0 and np.isfinite(result["final"]["policy_loss"])
    assert result["final"]["kl"] >= 0.0  # k3 per token is never negative


@pytest.mark.parametrize(
    "change, message",
    [(dict(kl_coef=-0.1), "kl_coef=-0.1 must be a finite number >= 0"),
     (dict(algorithm="rloo", samples_per_prompt=1), "samples_per_prompt >= 2"),
     (dict(algorithm="grpo", samples_per_prompt=1), "grpo needs ppo.samples_per_prompt >= 2"),
     (dict(kl_target=0.0), "kl_target=0.0 must be > 0"),
     (dict(minibatches=3), "does not split")],
)
def test_bad_settings(tmp_path, change, message):
    with pytest.raises(UserError, match=message):  # checked before any run dir is read
        policy_ppo.train_ppo(_cfg(tmp_path, "bad", **change), prompts=PROMPTS)


@pytest.mark.slow
def test_reward_model_of_another_vocabulary_is_refused(setup, tmp_path):
    from chinchax.data.tokenizers import train_sentencepiece

    # the same reward model, recorded as trained with a subword tokenizer (ids above 360 mean other pieces)
    spm = train_sentencepiece(list(TEST_TEXTS) * 20, tmp_path / "sub.model", vocab_size=400)
    other = tmp_path / "rm"
    shutil.copytree(setup / "rm", other)
    run = json.loads((other / "run.json").read_text())
    run["tokenizer"] = spm.describe()
    (other / "run.json").write_text(json.dumps(run))
    cfg = _cfg(setup, "vocab")
    cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, reward_model=str(other)))
    with pytest.raises(UserError, match="another vocabulary"):
        policy_ppo.train_ppo(cfg, prompts=PROMPTS)


@pytest.mark.slow
def test_cli_bon_and_ppo(setup, tmp_path, capsys):
    from chinchax.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    assert main(["align", "bon", "--policy", str(setup / "policy"), "--reward-model", str(setup / "rm"),
                 "--prompts", str(prompts), "--n", "1", "2", "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["n"] for r in rows] == [1, 2] and rows[1]["kl"] == pytest.approx(np.log(2) - 0.5)
    assert main(["align", "ppo", f"ppo.policy={setup / 'policy'}", f"ppo.reward_model={setup / 'rm'}",
                 f"ppo.prompts_file={prompts}", "ppo.max_new_tokens=6", "trainer.steps=1", "trainer.batch_size=4",
                 f"trainer.run_dir={tmp_path / 'cli_ppo'}", "trainer.progress_bar=false"]) == 0
    assert "score" in capsys.readouterr().out
    assert policy.load_policy(tmp_path / "cli_ppo" / "policy").step == 1
    assert main(["align", "ppo", "ppo.kl_coef=-1", f"ppo.policy={setup / 'policy'}",
                 f"ppo.reward_model={setup / 'rm'}", f"ppo.prompts_file={prompts}",
                 f"trainer.run_dir={tmp_path / 'neg'}"]) == 2
    assert "kl_coef=-1.0 must be a finite number >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_reward_model_initialised_from_the_policy_run(setup):
    cfg = reward.RewardRunConfig(reward=reward.RewardSettings(init_from=str(setup / "policy"),
                                                             train_file=str(setup / "pairs.jsonl")))
    model_cfg, tok, init = reward._resolve(cfg)
    base = policy.load_policy(setup / "policy")
    assert model_cfg == base.config.model and tok.hash == base.tokenizer.hash
    rm = reward.build(model_cfg, 0, init)
    np.testing.assert_array_equal(np.asarray(rm.backbone.embedding_VD[...]), np.asarray(base.model.embedding_VD[...]))
