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
            "Running the same command again resumes from the newest verified checkpoint. SIGTERM or SIGINT "
            "saves a checkpoint at the next step and exits with code 75 (run the command again to resume)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("config", help="experiment YAML, e.g. experiments/tiny.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.steps=100")
    parser.set_defaults(handler=_handle)


def _handle(args) -> int:
    from chinchax.train.preemption import PREEMPTED_EXIT_CODE

    try:
        return _train(args)
    except KeyboardInterrupt:  # Ctrl-C before training began (imports, config): nothing to save
        print("chinchax train: interrupted before training started", file=sys.stderr)
        return PREEMPTED_EXIT_CODE


def _train(args) -> int:
    from chinchax.configlib import load_config
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.diskspace import DISK_FULL_EXIT_CODE, DiskFull
    from chinchax.train.preemption import PREEMPTED_EXIT_CODE
    from chinchax.train.trainer import TrainingDiverged, TrainingPreempted, train

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    try:
        result = train(cfg)
    except TrainingDiverged as e:
        print(f"chinchax train: {e}", file=sys.stderr)
        return 3
    except DiskFull as e:  # the checkpoints already saved are kept: free space and run again to resume
        print(f"chinchax train: error: {e}", file=sys.stderr)
        return DISK_FULL_EXIT_CODE
    except TrainingPreempted as e:  # SIGTERM / SIGINT: saved at e.step, see train/preemption.py
        print(f"chinchax train: {e} (exit code {PREEMPTED_EXIT_CODE})", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if result:
        loss = result["eval_loss"] if result.get("eval_loss") is not None else result["final_train_loss"]
        mfu = f"{result['mfu']:.1%}" if result.get("mfu") is not None else "n/a"
        print(
            f"done: {result['steps']} steps, {result['n_tokens']:,} tokens, loss {loss:.4f}, MFU {mfu} "
            f"-> {cfg.trainer.run_dir}/run.json"
        )
    return 0
