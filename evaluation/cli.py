"""`chinchax generate RUN_DIR --prompt ...` and `chinchax eval RUN_DIR --task ...` (see docs/evaluation.md)."""

from __future__ import annotations

import argparse

from chinchax import jsonio


def register(subparsers) -> None:
    gen = subparsers.add_parser(
        "generate",
        help="continue prompts with a trained model (KV-cache decoding)",
        description=(
            "Load the newest verified checkpoint of a run directory and continue each --prompt with KV-cache "
            "decoding: greedy by default, or sampling with --temperature, --top-k, --top-p (seeded). "
            "Decoders continue the prompt; encoder-decoders read it with the encoder and write the answer."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("run_dir", help="a run directory written by `chinchax train`, or a checkpoint converted by `chinchax model convert`")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stop-id", type=int, action="append", default=[], help="extra stop token id (EOS always stops)")
    gen.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    gen.set_defaults(handler=_generate)

    ev = subparsers.add_parser(
        "eval",
        help="evaluate a trained model: losses, zero/few-shot tasks; results go to RUN_DIR/eval.json",
        description=(
            "Evaluate the newest verified checkpoint of a run directory. --loss: validation loss (nats/token, "
            "standard error, bits per byte) on the run's fixed validation batches. --conditional: loss of a "
            "target given an input, computed the natural way for the model's variant. --task: a JSONL task "
            "(context/choices/label or prompt/references) or tfds:super_glue/copa, tfds:hellaswag, tfds:piqa "
            "when prepared; multiple choice by log-likelihood (acc, acc_norm), generation by ROUGE and BLEU. "
            "Results are merged into RUN_DIR/eval.json. Several run directories, or a sweep directory (its runs/*), "
            "are evaluated one after the other on the same examples (a run that cannot be loaded is reported and "
            "skipped). --shots 0,1,4,16 scores every k; with several runs or several k the in-context-learning "
            "table (icl.csv, icl.json) and plots against N and compute, one line per k, go to --out. --cot arith "
            "compares chain-of-thought, self-consistency and direct answering. lm-evaluation-harness: "
            "`python -m chinchax.evaluation.lm_eval_main --model chinchax --model_args run=RUN_DIR ...`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories written by `chinchax train`, converted checkpoints, or a sweep directory")
    ev.add_argument("--task", action="append", default=[], help="JSONL file or tfds:NAME (repeatable)")
    ev.add_argument("--shots", type=_shots, default="0", help="k-shot examples from the task's train split: k or k1,k2,...")
    ev.add_argument("--cot", action="append", default=[], metavar="TASK",
                    help="chain-of-thought vs direct answering: 'arith[:N]' (built in) or a question/answer/rationale JSONL")
    ev.add_argument("--cot-samples", type=int, default=5, help="--cot: sampled rationales for the majority vote")
    ev.add_argument("--cot-temperature", type=float, default=0.7, help="--cot: sampling temperature of those")
    ev.add_argument("--out", default=None, help="where the ICL table and plots go; none: SWEEP_DIR/icl (runs "
                    "listed from one sweep's runs/ count as that sweep) or the first run's parent/icl")
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each task")
    ev.add_argument("--seed", type=int, default=0, help="which shots are drawn")
    ev.add_argument("--loss", action="store_true", help="validation loss on the run's fixed eval batches")
    ev.add_argument("--conditional", action="store_true", help="conditional loss on the validation split")
    ev.add_argument("--input-len", type=int, default=64, help="--conditional: input tokens per pair")
    ev.add_argument("--target-len", type=int, default=64, help="--conditional: target tokens per pair")
    ev.add_argument("--max-pairs", type=int, default=256, help="--conditional: documents used")
    ev.add_argument("--max-new-tokens", type=int, default=64, help="generation tasks")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--data-dir", default=None, help="where TFDS tasks are prepared")
    ev.set_defaults(handler=_eval)

    ex = subparsers.add_parser(
        "lm-eval-task",
        help="write an lm-evaluation-harness task YAML over a chinchax JSONL task (same prompts and shots)",
        description=(
            "Write NAME.yaml into OUT_DIR: an lm-eval task over the JSONL file (and its .train.jsonl) with "
            "chinchax's prompts and shot draws, for `python -m chinchax.evaluation.lm_eval_main --model chinchax "
            "--model_args run=RUN_DIR --include_path OUT_DIR --tasks NAME` (docs/evaluation.md)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ex.add_argument("jsonl", help="a chinchax JSONL task (multiple choice or generation)")
    ex.add_argument("out_dir", help="folder for lm-eval's --include_path")
    ex.add_argument("--name", default=None, help="lm-eval task name (default: chinchax_<file name>)")
    ex.set_defaults(handler=_export_lm_eval_task)


def _shots(text: str) -> list[int]:
    try:
        shots = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots {text!r}: give k or a comma list like 0,1,4,16") from None
    if not shots or min(shots) < 0:
        raise argparse.ArgumentTypeError(f"--shots {text!r}: every k must be >= 0")
    return list(dict.fromkeys(shots))


def _export_lm_eval_task(args) -> int:
    from chinchax.errors import UserError

    try:
        from chinchax.evaluation.lm_eval_model import export_task
    except ImportError as e:
        raise UserError(f"lm-evaluation-harness is not installed ({e}); pip install 'chinchax[eval]'") from None

    path = export_task(args.jsonl, args.out_dir, args.name)
    print(f"-> {path}\n   python -m chinchax.evaluation.lm_eval_main --model chinchax --model_args run=RUN_DIR "
          f"--include_path {path.parent} --tasks {path.stem}")
    return 0


def _generate(args) -> int:
    from chinchax.evaluation.generation_tasks import model_prompts
    from chinchax.evaluation.run_loading import load_run
    from chinchax.model.decoding import SamplingConfig, generate
    from chinchax.sharding import model_context

    run = load_run(args.run_dir)
    tok = run.tokenizer
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        stop_tokens=tuple(dict.fromkeys([*args.stop_id, tok.eos_id])), seed=args.seed,
    ).validate()
    prompts, encoder_inputs = model_prompts(run.model, tok, args.prompt)
    with model_context(run.model):  # the model's logical constraints (KV cache, logits) apply
        result = generate(run.model, prompts, sampling, encoder_inputs=encoder_inputs, pad_id=tok.pad_id)
    for prompt, tokens in zip(args.prompt, result.as_lists(), strict=True):
        text = tok.decode(tokens)
        if args.json:
            print(jsonio.dumps({"prompt": prompt, "completion": text, "tokens": tokens}))
        else:
            print(f"{prompt}\u2192{text}")
    return 0


def _eval(args) -> int:
    import sys
    from pathlib import Path

    from chinchax.errors import UserError
    from chinchax.evaluation import icl_curves
    from chinchax.evaluation import results as results_lib
    from chinchax.evaluation.chain_of_thought import load_cot_task
    from chinchax.evaluation.run_loading import load_run
    from chinchax.evaluation.tasks import load_task
    from chinchax.sharding import model_context

    if not (args.task or args.loss or args.conditional or args.cot):
        raise UserError("nothing to evaluate: pass --loss, --conditional, --task FILE.jsonl|tfds:NAME and/or --cot arith")
    if args.cot_samples < 0:
        raise UserError(f"--cot-samples={args.cot_samples} must be >= 0")
    if args.limit is not None and args.limit < 1:  # a slice [:-1] would drop the last example without a word
        raise UserError(f"--limit={args.limit} must be >= 1 (how many examples of each task to evaluate); leave "
                        "it out to evaluate them all")
    # bad task specs and impossible --shots fail before any model is loaded
    tasks = [load_task(spec, data_dir=args.data_dir) for spec in args.task]
    tasks += [load_cot_task(spec, seed=args.seed) for spec in args.cot]
    for task in tasks:
        _check_shots(task, max(args.shots), args.limit)
    run_dirs, sweep = icl_curves.expand_run_dirs(args.run_dirs)
    failed, rows = [], []
    for run_dir in run_dirs:
        try:
            run = load_run(run_dir)
        except UserError as e:
            if len(run_dirs) == 1:
                raise
            print(f"chinchax eval: skipping {run_dir}: {e}", file=sys.stderr)
            failed.append(run_dir)
            continue
        measured = {}
        with model_context(run.model):  # scoring and decoding under the run's mesh and the logical rules
            if args.loss:
                measured["validation"] = _validation(run)
            if args.conditional:
                measured["conditional"] = _conditional(run, args)
            for task in tasks:
                for k in args.shots:
                    key = f"{task.name}/cot/{k}shot" if task.kind == "cot" else f"{task.name}/{k}shot"
                    measured[key] = _task(run, task, args, k)
        scale = icl_curves.run_scale(run.run_dir, run.model.cfg)
        for key, metrics in measured.items():
            results_lib.record(run.run_dir, run.step, key, metrics)
            if "task" in metrics:
                rows += icl_curves.rows_for(run.run_dir.name, scale, metrics)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
                     if k not in ("samples", "examples_shown") or not isinstance(v, list)}
            print(f"{run.run_dir.name} {key}: {jsonio.dumps(shown)}")
        print(f"-> {run.run_dir / results_lib.EVAL_FILE} (step {run.step})")
    if rows and (len(run_dirs) > 1 or len(args.shots) > 1 or sweep is not None):
        out = Path(args.out) if args.out else icl_curves.default_out(run_dirs, sweep)
        table = icl_curves.write_table(rows, out)
        plots = icl_curves.plot(rows, out)
        print(f"-> {table[0]}, {table[1]}" + "".join(f", {p.name}" for p in plots))
    return 2 if failed else 0


def _check_shots(task, k: int, limit: int | None) -> None:
    """--shots larger than the pool is an error before any model loads (the per-question pool is the whole
    shot split, less the question itself when shots come from the scored split)."""
    from chinchax.errors import UserError

    pool = len(task.shots) - (1 if task.shots_are_examples else 0)
    if k > pool:
        raise UserError(f"--shots {k} is larger than task {task.name!r}'s pool of {pool} solved examples to draw "
                        f"from{' (the question itself excluded)' if task.shots_are_examples else ''}; lower --shots "
                        "or give more examples (a <name>.train.jsonl beside the task file)")


def _validation(run) -> dict:
    from chinchax.data.pipeline import eval_batches
    from chinchax.evaluation.losses import validation_loss
    from chinchax.train.evaluate import token_byte_lengths

    cfg = run.config
    batches = eval_batches(cfg.data, run.tokenizer, global_batch_size=cfg.trainer.batch_size, variant=cfg.model.variant)
    byte_lengths = token_byte_lengths(run.tokenizer) if cfg.data.objective == "causal_lm" else None
    return validation_loss(run.model, batches, byte_lengths=byte_lengths)


def _scorer(run, batch_size: int):
    from chinchax.evaluation.scoring import Scorer

    tok = run.tokenizer
    return Scorer(run.model, bos_id=tok.bos_id, mask_id=tok.mask_id, pad_id=tok.pad_id, batch_size=batch_size)


def _conditional(run, args) -> dict:
    from chinchax.data.pipeline import open_documents
    from chinchax.evaluation.losses import conditional_loss, conditional_pairs

    docs = open_documents(run.config.data, run.config.data.eval_split)
    texts = [docs[i] for i in range(min(len(docs), args.max_pairs))]
    pairs = conditional_pairs(
        [run.tokenizer.encode(t) for t in texts], input_len=args.input_len, target_len=args.target_len
    )
    out = conditional_loss(_scorer(run, args.batch_size), pairs)
    return {**out, "input_len": args.input_len, "target_len": args.target_len, "split": run.config.data.eval_split}


def _task(run, task, args, shots: int) -> dict:
    from chinchax.evaluation.chain_of_thought import evaluate_cot
    from chinchax.evaluation.generation_tasks import evaluate_generation
    from chinchax.evaluation.multiple_choice import evaluate_multiple_choice
    from chinchax.model.decoding import SamplingConfig

    if task.kind == "multiple_choice":
        return evaluate_multiple_choice(
            _scorer(run, args.batch_size), run.tokenizer, task, shots=shots, seed=args.seed, limit=args.limit
        )
    if task.kind == "cot":
        return evaluate_cot(run.model, run.tokenizer, task, shots=shots, seed=args.seed, samples=args.cot_samples,
                            temperature=args.cot_temperature, max_new_tokens=args.max_new_tokens, limit=args.limit,
                            batch_size=min(args.batch_size, 8))
    return evaluate_generation(
        run.model, run.tokenizer, task, SamplingConfig(max_new_tokens=args.max_new_tokens),
        shots=shots, seed=args.seed, limit=args.limit,
    )
