"""The reward-model overoptimization study (Gao, Schulman and Hilton 2022) on chinchax models, offline on a CPU.

    chinchax align study [--quick] [--out runs/alignment_study]

1. pretrain a small byte-level policy on stdlib Python (experiments/alignment_policy.py);
2. sample pairs of function bodies for stdlib signatures, label them with the gold score (posttrain/gold.py);
3. train proxy reward models of several sizes on the gold-labelled pairs;
4. per proxy: best-of-n over n (one pool of samples, scored by every proxy), PPO over steps and DPO over
   epochs on proxy-labelled pairs, recording gold score, proxy score and d = sqrt(KL) from the initial policy;
5. fit R_bon(d) and R_RL(d) (scaling/overoptimization.py), plot, write report.md and summary.json.
Every stage writes a run dir under --out and resumes, so a rerun redoes only what is missing.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from chinchax import configlib, jsonio
from chinchax.fileio import write_text_atomic

DEFAULT_CONFIG = Path(__file__).with_name("alignment_study.yaml")


def load_study_config(path=None, *, quick: bool) -> dict:
    cfg = configlib.read_yaml(path or DEFAULT_CONFIG)
    quick_part = cfg.pop("quick", {}) or {}
    if quick:
        for key, value in quick_part.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def _policy_texts(n_docs: int) -> list[str]:
    from chinchax.data.sources import open_source

    src = open_source("stdlib", "train")
    return src.__getitems__(range(min(n_docs, len(src))))


def _proxy_config(out: Path, name: str, arch: dict, cfg: dict, pairs_file: Path, max_len: int):
    from chinchax.model.config import ModelConfig
    from chinchax.posttrain import reward
    from chinchax.train.config import OptimizerConfig, TrainerConfig

    p = cfg["proxy"]
    return reward.RewardRunConfig(
        model=ModelConfig(vocab_size=384, max_len=max_len, **arch),
        optimizer=OptimizerConfig(learning_rate=p["learning_rate"], warmup_steps=10, weight_decay=0.0, schedule="cosine"),
        trainer=TrainerConfig(run_dir=str(out / name), steps=p["steps"], batch_size=p["batch_size"], log_every=10,
                              progress_bar=False, seed=cfg["seed"]),
        reward=reward.RewardSettings(train_file=str(pairs_file), eval_fraction=0.2, max_len=max_len),
    )


def run(cfg: dict, out: Path) -> dict:
    """The study's stages in order (module docstring), each resuming from what an earlier run left in `out`."""
    from chinchax.posttrain import preference

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    base, ref = _pretrained_policy(cfg, out)
    timings["policy_s"] = time.perf_counter() - t0
    train_prompts, eval_prompts, max_len = _prompts(cfg, base.tokenizer)
    pairs_file = _gold_pairs(cfg, out, base, train_prompts)
    pairs = preference.read_preferences(pairs_file)
    timings["pairs_s"] = time.perf_counter() - t0
    proxies = _train_proxies(cfg, out, pairs_file, max_len)
    timings["proxies_s"] = time.perf_counter() - t0
    results: dict = {**_best_of_n(cfg, base, eval_prompts, proxies), "pairs": len(pairs)}
    timings["bon_s"] = time.perf_counter() - t0
    evaluator = _evaluator(cfg, ref, base.tokenizer, eval_prompts)
    for px, res in zip(proxies, results["proxies"], strict=True):
        res["ppo"] = _ppo_curve(cfg, out, px, train_prompts, evaluator(px["rm"]))
    timings["ppo_s"] = time.perf_counter() - t0
    for px, res in zip(proxies, results["proxies"], strict=True):
        res["dpo"] = _dpo_curve(cfg, out, px, pairs, base.tokenizer, max_len, evaluator(px["rm"]))
    timings["dpo_s"] = time.perf_counter() - t0
    results["timings"] = timings
    return results


def _pretrained_policy(cfg: dict, out: Path):
    """The policy pretrained (or resumed) under out/policy, loaded twice: the initial policy and the frozen
    reference that KL is measured from."""
    from chinchax.experiments.alignment_policy import pretrain_policy
    from chinchax.posttrain import policy
    from chinchax.train.config import wandb_overrides

    # W&B (a `wandb_project:` key in the study YAML): the policy's pretraining run, in the study's group.
    # Reward models, PPO and DPO train in their own loops, which log to metrics.jsonl only.
    project = cfg.get("wandb_project")
    wandb = wandb_overrides(project, group=out.name, job_type="policy-pretrain") if project else []
    pretrain_policy(out / "policy", _policy_texts(cfg["policy"]["corpus_docs"]), steps=cfg["policy"]["steps"],
                    overrides=[*cfg["policy"]["overrides"], *wandb])
    return policy.load_policy(out / "policy"), policy.load_policy(out / "policy")


def _prompts(cfg: dict, tok) -> tuple[list[str], list[str], int]:
    """(train prompts, eval prompts, the row length every stage encodes to)."""
    from chinchax.posttrain import gold

    seed, comp = cfg["seed"], cfg["completion"]
    train_prompts = gold.stdlib_prompts("train", cfg["prompts"]["train"], seed=seed)
    eval_prompts = gold.stdlib_prompts("validation", cfg["prompts"]["eval"], seed=seed)
    # Rows hold bos + prompt + completion + eos; a decoded sample may re-encode longer (see _gold_pairs' filter).
    max_len = max(len(tok.encode(p)) for p in train_prompts + eval_prompts) + 2 * comp["max_new_tokens"] + 3
    return train_prompts, eval_prompts, max_len


def _gold_pairs(cfg: dict, out: Path, base, train_prompts: list[str]) -> Path:
    """Gold-labelled pairs of the initial policy's own samples, written once to out/gold_pairs.jsonl."""
    from chinchax.posttrain import gold, policy, preference

    seed, comp, tok = cfg["seed"], cfg["completion"], base.tokenizer
    pairs_file = out / "gold_pairs.jsonl"
    if not pairs_file.is_file():
        pairs = []
        for k in range(cfg["pairs_per_prompt"]):
            a, _, _ = policy.generate_rows(base.model, tok, train_prompts, max_new_tokens=comp["max_new_tokens"],
                                           temperature=comp["temperature"], seed=seed * 1000 + 2 * k)
            b, _, _ = policy.generate_rows(base.model, tok, train_prompts, max_new_tokens=comp["max_new_tokens"],
                                           temperature=comp["temperature"], seed=seed * 1000 + 2 * k + 1)
            pairs += gold.gold_pairs(train_prompts, a, b)
        # A sample with special tokens or broken UTF-8 decodes to longer text ("<extra_id_3>", U+FFFD); keep
        # the pairs that still fit the reward model's rows.
        fits = lambda text: len(tok.encode(text)) <= 2 * comp["max_new_tokens"]  # noqa: E731
        pairs = [pr for pr in pairs if fits(pr.chosen) and fits(pr.rejected)]
        preference.write_preferences(pairs_file, pairs)
    return pairs_file


def _train_proxies(cfg: dict, out: Path, pairs_file: Path, max_len: int) -> list[dict]:
    """One proxy reward model per architecture in cfg["proxies"], trained on the gold-labelled pairs."""
    from chinchax.posttrain import reward

    proxies = []
    for i, arch in enumerate(cfg["proxies"]):
        name = f"proxy_d{arch['d_model']}_l{arch['n_layers']}"
        result = reward.train_reward(_proxy_config(out, name, arch, cfg, pairs_file, max_len))
        proxies.append({"name": name, "index": i, "n_params": result["n_params"], "eval": result["eval"],
                        "rm": reward.load_reward(out / name)})
    return proxies


def _best_of_n(cfg: dict, base, eval_prompts: list[str], proxies: list[dict]) -> dict:
    """Best-of-n: one pool of N samples per eval prompt, scored by gold once and by every proxy."""
    from chinchax.posttrain import gold, policy, policy_bon, reward

    seed, comp = cfg["seed"], cfg["completion"]
    N = max(cfg["bon_n"])
    gold_NP, scored = [], []
    for k in range(N):
        texts, _, rows = policy.generate_rows(base.model, base.tokenizer, eval_prompts,
                                              max_new_tokens=comp["max_new_tokens"],
                                              temperature=comp["temperature"], seed=seed * 7777 + k)
        gold_NP.append(gold.gold_scores(eval_prompts, texts))
        scored.append(rows)
    gold_PN = np.asarray(gold_NP).T
    gold0 = float(gold_PN.mean())
    results: dict = {"gold_initial": gold0, "proxies": []}
    for px in proxies:
        proxy_PN = np.asarray([reward.score_encoded(px["rm"].model, r, batch_size=len(eval_prompts))
                               for r in scored]).T
        bon = policy_bon.best_of_n_curve(proxy_PN, gold_PN, cfg["bon_n"])
        results["proxies"].append({"name": px["name"], "n_params": px["n_params"], "rm_eval": px["eval"],
                                   "proxy_initial": float(proxy_PN.mean()), "bon": bon})
    return results


def _evaluator(cfg: dict, ref, tok, eval_prompts: list[str]):
    """proxy reward model -> the evaluate(step, model) hook PPO and DPO call: gold, proxy and KL on the eval
    prompts, against the reference policy."""
    from chinchax.posttrain import gold, policy_measure

    seed, comp = cfg["seed"], cfg["completion"]

    def evaluator(rm):
        def evaluate(step, model):
            return policy_measure.measure(model, ref.model, tok, eval_prompts, gold=gold.gold_scores, proxy=rm,
                                          max_new_tokens=comp["max_new_tokens"], temperature=comp["temperature"],
                                          seed=seed + 12345)
        return evaluate

    return evaluator


def _ppo_curve(cfg: dict, out: Path, px: dict, train_prompts: list[str], evaluate) -> list:
    """PPO against one proxy: its evaluations over steps."""
    from chinchax.posttrain import policy_ppo
    from chinchax.train.config import OptimizerConfig, TrainerConfig

    p, comp, seed = cfg["ppo"], cfg["completion"], cfg["seed"]
    ppo_cfg = policy_ppo.PPORunConfig(
        optimizer=OptimizerConfig(learning_rate=p["learning_rate"], warmup_steps=0, weight_decay=0.0,
                                  schedule="constant"),
        trainer=TrainerConfig(run_dir=str(out / f"ppo_{px['name']}"), steps=p["steps"], batch_size=p["batch_size"],
                              log_every=1, checkpoint_every=p["eval_every"], progress_bar=False, seed=seed),
        ppo=policy_ppo.PPOSettings(policy=str(out / "policy"), reward_model=str(out / px["name"]),
                                   max_new_tokens=comp["max_new_tokens"], temperature=comp["temperature"],
                                   kl_coef=p["kl_coef"], ppo_epochs=p["ppo_epochs"], minibatches=p["minibatches"],
                                   eval_every=p["eval_every"]),
    )
    return policy_ppo.train_ppo(ppo_cfg, prompts=train_prompts, evaluate=evaluate)["evals"]


def _dpo_curve(cfg: dict, out: Path, px: dict, pairs: list, tok, max_len: int, evaluate) -> list:
    """DPO against one proxy: the same sampled pairs, labelled by the proxy's preference; its evaluations
    over epochs."""
    from chinchax.posttrain import policy_dpo, preference, reward
    from chinchax.train.config import OptimizerConfig, TrainerConfig

    d, seed = cfg["dpo"], cfg["seed"]
    proxy_pairs_file = out / f"proxy_pairs_{px['name']}.jsonl"
    if not proxy_pairs_file.is_file():
        enc = preference.encode_pairs(tok, pairs, variant="decoder_only", max_len=max_len)
        s = reward.score_encoded(px["rm"].model, {k: v for k, v in enc.items() if k != "margin"})
        n = len(pairs)
        relabelled = [pr if s[i] >= s[n + i] else preference.Pair(pr.prompt, pr.rejected, pr.chosen)
                      for i, pr in enumerate(pairs)]
        preference.write_preferences(proxy_pairs_file, relabelled)
    steps_per_epoch = max(1, len(pairs) // d["batch_size"])
    every = max(1, steps_per_epoch // d["evals_per_epoch"])
    dpo_cfg = policy_dpo.DPORunConfig(
        optimizer=OptimizerConfig(learning_rate=d["learning_rate"], warmup_steps=0, weight_decay=0.0,
                                  schedule="constant"),
        trainer=TrainerConfig(run_dir=str(out / f"dpo_{px['name']}"), steps=steps_per_epoch * d["epochs"],
                              batch_size=d["batch_size"], log_every=every, checkpoint_every=every,
                              progress_bar=False, seed=seed),
        dpo=policy_dpo.DPOSettings(policy=str(out / "policy"), train_file=str(proxy_pairs_file), beta=d["beta"],
                                   max_len=max_len, eval_every=every),
    )
    return policy_dpo.train_dpo(dpo_cfg, evaluate=evaluate)["evals"]


def register(subparsers) -> None:
    """`chinchax align study`, among the subcommands of `chinchax align` (posttrain/align_cli.py)."""
    import argparse

    from chinchax.posttrain.align_cli import align_subcommands

    s = align_subcommands(subparsers).add_parser(
        "study", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="reward-model overoptimization study (Gao et al. 2022)")
    s.add_argument("--config", default=None, help="study YAML (default experiments/alignment_study.yaml)")
    s.add_argument("--quick", action="store_true", help="the CI-sized version (minutes)")
    s.add_argument("--out", default="runs/alignment_study")
    s.set_defaults(handler=_study)


def _study(args) -> int:
    return main(config=args.config, quick=args.quick, out=args.out)


def main(config=None, *, quick: bool = False, out="runs/alignment_study") -> int:
    from chinchax.experiments.alignment_report import write_report

    cfg = load_study_config(config, quick=quick)
    out = Path(out)
    t0 = time.perf_counter()
    results = run(copy.deepcopy(cfg), out)
    results["wall_s"] = time.perf_counter() - t0
    results["quick"] = quick
    summary = write_report(results, out)
    write_text_atomic(out / "summary.json", jsonio.dumps(summary, indent=1))
    print(f"done in {results['wall_s']:.0f} s -> {out}/report.md")
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/alignment_study")
    ap.add_argument("--config", default=None)
    a = ap.parse_args()
    raise SystemExit(main(a.config, quick=a.quick, out=a.out))
