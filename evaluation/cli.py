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
    gen.add_argument("run_dir", help="a run directory written by `chinchax train`")
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
            "Results are merged into RUN_DIR/eval.json. Several run directories are evaluated one after the "
            "other on the same examples (a run that cannot be loaded is reported and skipped)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories written by `chinchax train` (several: e.g. every run of a sweep)")
    ev.add_argument("--task", action="append", default=[], help="JSONL file or tfds:NAME (repeatable)")
    ev.add_argument("--shots", type=int, default=0, help="k-shot examples from the task's train split")
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

    from chinchax.errors import UserError
    from chinchax.evaluation import results as results_lib
    from chinchax.evaluation.run_loading import load_run
    from chinchax.evaluation.tasks import load_task
    from chinchax.sharding import model_context

    if not (args.task or args.loss or args.conditional):
        raise UserError("nothing to evaluate: pass --loss, --conditional and/or --task FILE.jsonl|tfds:NAME")
    if args.shots < 0:
        raise UserError(f"--shots={args.shots} must be >= 0")
    tasks = [load_task(spec, data_dir=args.data_dir) for spec in args.task]  # bad specs fail before any run
    failed = []
    for run_dir in args.run_dirs:
        try:
            run = load_run(run_dir)
        except UserError as e:
            if len(args.run_dirs) == 1:
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
                measured[f"{task.name}/{args.shots}shot"] = _task(run, task, args)
        for key, metrics in measured.items():
            results_lib.record(run.run_dir, run.step, key, metrics)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items() if k != "samples"}
            print(f"{run.run_dir.name} {key}: {jsonio.dumps(shown)}")
        print(f"-> {run.run_dir / results_lib.EVAL_FILE} (step {run.step})")
    return 2 if failed else 0


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


def _task(run, task, args) -> dict:
    from chinchax.evaluation.generation_tasks import evaluate_generation
    from chinchax.evaluation.multiple_choice import evaluate_multiple_choice
    from chinchax.model.decoding import SamplingConfig

    if task.kind == "multiple_choice":
        metrics = evaluate_multiple_choice(
            _scorer(run, args.batch_size), run.tokenizer, task, shots=args.shots, seed=args.seed, limit=args.limit
        )
    else:
        metrics = evaluate_generation(
            run.model, run.tokenizer, task, SamplingConfig(max_new_tokens=args.max_new_tokens),
            shots=args.shots, seed=args.seed, limit=args.limit,
        )
    return metrics
