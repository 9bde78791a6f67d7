"""`chinchax train CONFIG [key=value ...]`: train (or resume) one run; see docs/training.md."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from an experiment YAML (resumes if the run directory exists)",
        description=(
            "Train a transformer from an experiment YAML (sections model, data, optimizer, trainer) with "
            "dotted overrides such as trainer.steps=200 model.d_model=256. The run directory "
            "(trainer.run_dir) gets config.yaml, metrics.jsonl, checkpoints/ and, at the end, run.json. "
            "Running the same command again resumes from the newest verified checkpoint."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("config", help="experiment YAML, e.g. experiments/tiny.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.steps=100")
    parser.set_defaults(handler=_handle)


def _handle(args) -> int:
    from chinchax.configlib import load_config
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.trainer import TrainingDiverged, train

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    try:
        result = train(cfg)
    except TrainingDiverged as e:
        print(f"chinchax train: {e}", file=sys.stderr)
        return 3
    if result:
        loss = result["eval_loss"] if result.get("eval_loss") is not None else result["final_train_loss"]
        mfu = f"{result['mfu']:.1%}" if result.get("mfu") is not None else "n/a"
        print(
            f"done: {result['steps']} steps, {result['n_tokens']:,} tokens, loss {loss:.4f}, MFU {mfu} "
            f"-> {cfg.trainer.run_dir}/run.json"
        )
    return 0
