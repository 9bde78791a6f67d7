"""`python -m chinchax.evaluation.lm_eval_main [lm_eval arguments]`: lm-eval's own CLI with the "chinchax"
model registered (lm-eval 0.4.13 has no entry-point or plugin discovery for models; see lm_eval_model.py).

    python -m chinchax.evaluation.lm_eval_main --model chinchax --model_args run=runs/tiny \
        --include_path tasks/ --tasks chinchax_quiz --num_fewshot 4
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lm_eval.__main__ import cli_evaluate

    import chinchax.evaluation.lm_eval_model  # noqa: F401 - registers "chinchax" in lm-eval's model registry

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
