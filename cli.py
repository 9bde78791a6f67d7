"""The `chinchax` command: a thin face over model/, data/, train/, scaling/ and evaluation/.

Each area owns its subcommands in a `cli.py` of its own with a `register(subparsers)` function;
this file only gathers them. Heavy imports (jax, flax) happen inside the handlers, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from chinchax.errors import UserError
from chinchax.hostenv import reexec_with_hugepage_malloc

# Modules that add subcommands, in the order `chinchax --help` lists them. A module that is not
# there yet (a feature still being built) is skipped rather than breaking the whole CLI.
_COMMAND_MODULES = (
    "chinchax.model.cli",
    "chinchax.data.cli",
    "chinchax.train.cli",
    "chinchax.scaling.cli",
    "chinchax.scaling.sweep_cli",
    "chinchax.evaluation.cli",
    "chinchax.experiments.demo",
    "chinchax.experiments.compare",
    "chinchax.experiments.coord_check",
    "chinchax.posttrain.finetune_cli",
    "chinchax.posttrain.align_cli",
    "chinchax.experiments.alignment_study",  # `chinchax align study`: after align_cli, which it extends
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chinchax",
        description="Language-model scaling studies in JAX/Flax: build transformer families, train them "
        "sharded, sweep isoFLOP grids and fit Kaplan and Chinchilla scaling laws.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, except that dotted `key=value` overrides may come anywhere, after options too
    (`sweep run X --executor ray budgets=[...]`): argparse ends a `nargs="*"` positional at the first
    option and calls what follows it unrecognized. `parse_intermixed_args` would do it, but it does not
    support subcommands. Anything else unrecognized is still an error."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides"):
        stray = [a for a in extra if a.startswith("-") or "=" not in a]
        if not stray:
            args.overrides = [*(args.overrides or []), *extra]
            return args
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command line, not a call from Python (tests)
        reexec_with_hugepage_malloc()
    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"chinchax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
