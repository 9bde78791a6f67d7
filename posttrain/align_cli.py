"""`chinchax reward ...` and `chinchax align ...`: reward models and policy optimisation (docs/alignment.md).

    chinchax reward train CONFIG.yaml [key=value ...]     Bradley-Terry reward model (reward.*, model.*, trainer.*)
    chinchax reward eval RUN_DIR PAIRS.jsonl              accuracy, loss, Brier score, ECE on held-out pairs
    chinchax align dpo CONFIG.yaml [key=value ...]        DPO / IPO (dpo.loss_type) from preference pairs
    chinchax align ppo CONFIG.yaml [key=value ...]        PPO with a KL penalty, or RLOO (ppo.algorithm)
    chinchax align bon --policy RUN --reward-model RUN --prompts FILE --n 1 4 16

`chinchax align study` (Gao et al.'s overoptimization study) is an experiment: experiments/alignment_study.py
adds it to these subcommands (`align_subcommands`), so nothing here imports experiments/.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    rw = subparsers.add_parser("reward", help="train and evaluate reward models on preference pairs")
    rsub = rw.add_subparsers(dest="reward_command", metavar="SUBCOMMAND")
    t = rsub.add_parser("train", formatter_class=fmt, help="train (or resume) a reward model",
                        description="Train a Bradley-Terry reward model (a scalar head on any chinchax variant) "
                        "from a YAML with sections model, optimizer, trainer, reward; reward.init_from starts the "
                        "backbone from a pretraining run. Rerunning resumes from the newest verified checkpoint.")
    t.add_argument("config", nargs="?", default=None, help="YAML (optional: every key can be an override)")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. reward.train_file=pairs.jsonl")
    t.set_defaults(handler=_reward_train)
    e = rsub.add_parser("eval", help="accuracy and calibration of a trained reward model on pairs")
    e.add_argument("run_dir")
    e.add_argument("pairs", help="JSONL of {prompt, chosen, rejected}")
    e.set_defaults(handler=_reward_eval)

    al = subparsers.add_parser("align", help="policy optimisation: DPO/IPO, PPO/RLOO, best-of-n, the study")
    asub = al.add_subparsers(dest="align_command", metavar="SUBCOMMAND")
    al.set_defaults(align_subcommands=asub)  # argparse has no public way back to it
    for name, what in (("dpo", "DPO or IPO from preference pairs (dpo.*)"),
                       ("ppo", "PPO with a per-token KL penalty, or RLOO (ppo.*)")):
        p = asub.add_parser(name, formatter_class=fmt, help=what, description=f"{what}; rerunning resumes.")
        p.add_argument("config", nargs="?", default=None, help="YAML (optional: every key can be an override)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        p.set_defaults(handler=_dpo if name == "dpo" else _ppo)
    b = asub.add_parser("bon", formatter_class=fmt, help="best-of-n against a proxy reward model (gold score too)")
    b.add_argument("--policy", required=True, help="run dir of the policy")
    b.add_argument("--reward-model", required=True, help="run dir of the proxy reward model")
    b.add_argument("--prompts", required=True, help="JSONL with a \"prompt\" per line")
    b.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    b.add_argument("--max-new-tokens", type=int, default=32)
    b.add_argument("--temperature", type=float, default=1.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--gold", choices=("python", "none"), default="python",
                   help="python: the programmatic gold score of function bodies (posttrain.gold)")
    b.set_defaults(handler=_bon)


def align_subcommands(subparsers):
    """The subcommands of `chinchax align` (once `register` has run), for a study to add its own to."""
    return subparsers.choices["align"].get_default("align_subcommands")


def _config_and_overrides(args):
    """The optional YAML positional swallows the first override when there is no YAML: give it back."""
    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        return None, [args.config, *args.overrides]
    return args.config, args.overrides


def _reward_train(args) -> int:
    from chinchax.configlib import load_config
    from chinchax.posttrain.reward import RewardRunConfig, train_reward

    cfg = load_config(RewardRunConfig, *_config_and_overrides(args))
    result = train_reward(cfg)
    ev = result["eval"]
    print(f"done: {result['steps']} steps; held-out accuracy {ev['accuracy']:.3f}, BT loss {ev['bt_loss']:.4f}, "
          f"ECE {ev['ece']:.3f} ({ev['n_pairs']} pairs) -> {cfg.trainer.run_dir}/run.json")
    return 0


def _reward_eval(args) -> int:
    from chinchax.posttrain import preference, reward

    pairs = preference.read_preferences(args.pairs)  # a bad file fails before the model loads
    rm = reward.load_reward(args.run_dir)
    print(json.dumps(reward.evaluate_pairs(rm.model, rm.tokenizer, pairs, max_len=rm.max_len)))
    return 0


def _dpo(args) -> int:
    from chinchax.configlib import load_config
    from chinchax.posttrain.policy_dpo import DPORunConfig, train_dpo

    cfg = load_config(DPORunConfig, *_config_and_overrides(args))
    result = train_dpo(cfg)
    f = result["final"]
    print(f"done: {cfg.dpo.loss_type} loss {f['loss']:.4f}, reward accuracy {f['reward_accuracy']:.3f}, "
          f"margin {f['reward_margin']:.3f} -> {cfg.trainer.run_dir}")
    return 0


def _ppo(args) -> int:
    from chinchax.configlib import load_config
    from chinchax.posttrain.policy_ppo import PPORunConfig, train_ppo

    cfg = load_config(PPORunConfig, *_config_and_overrides(args))
    result = train_ppo(cfg)
    f = result["final"]
    print(f"done: {result['kind']} score {f['score']:.4f}, KL {f['kl']:.4f}, kl_coef {f['kl_coef']:.4g} -> "
          f"{cfg.trainer.run_dir} (policy: {cfg.trainer.run_dir}/policy)")
    return 0


def _bon(args) -> int:
    import numpy as np

    from chinchax.posttrain import gold, policy, policy_bon, reward
    from chinchax.posttrain.policy_ppo import read_prompts

    prompts = read_prompts(args.prompts)  # a bad file fails before the models load
    base = policy.load_policy(args.policy)
    rm = reward.load_reward(args.reward_model)
    gold_fn = gold.gold_scores if args.gold == "python" else (lambda p, c: np.full(len(p), np.nan))
    rows = policy_bon.best_of_n(base.model, base.tokenizer, prompts, ns=args.n, proxy=rm,
                                gold=gold_fn, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                seed=args.seed)
    for row in rows:
        print(json.dumps(row))
    return 0

