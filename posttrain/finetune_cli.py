"""`chinchax finetune BASE CONFIG [key=value ...]` and `chinchax quantize RUN --format F`; see docs/finetuning.md."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    ft = subparsers.add_parser(
        "finetune",
        help="fine-tune a run dir or converted HF checkpoint (full, lora, qlora, prompt_tuning)",
        description=(
            "Fine-tune BASE (a `chinchax train` run dir or a `chinchax model convert` output) with the experiment "
            "YAML CONFIG (sections finetune, data, optimizer, trainer; the model is BASE's) and dotted overrides "
            "such as finetune.method=qlora finetune.lora.rank=16 trainer.steps=200. The run dir (trainer.run_dir) "
            "has the shape of a training run (config.yaml, metrics.jsonl, checkpoints/, run.json with a "
            "`finetune` entry) plus finetune.yaml, merged/ (the fine-tuned model, adapters merged: evaluate it "
            "with `chinchax eval`) and, for LoRA on a converted HF model, adapter/ in peft's format. Running the "
            "same command again resumes. SIGTERM or SIGINT saves a checkpoint at the next step and exits with code "
            "75 (run the command again to resume)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ft.add_argument("base", help="run dir or converted checkpoint to start from")
    ft.add_argument("config", help="experiment YAML, e.g. experiments/finetune_tiny.yaml")
    ft.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. finetune.method=lora")
    ft.set_defaults(handler=_finetune)

    q = subparsers.add_parser(
        "quantize",
        help="post-training weight quantization (int8, int4, int3, nf4) of a run into a new model dir",
        description=(
            "Quantize the attention and MLP kernels of RUN (run dir or converted checkpoint) with qwix, per output "
            "channel (--group-size 0) or per group of inputs, and write OUT: model.yaml + params/ (the dequantized "
            "weights the quantized model computes with: `chinchax eval OUT` scores it), quantized.npz (the packed "
            "codes and scales) and quantization.json (bytes, total model bits, loss before and after)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("run", help="run dir or converted checkpoint")
    q.add_argument("--format", required=True, help="int8, int4, int3 or nf4")
    q.add_argument("--group-size", type=int, default=64, help="inputs per scale; 0 = one scale per output channel")
    q.add_argument("--double-quant", action="store_true", help="quantize the scales to int8 too (QLoRA)")
    q.add_argument("--out", default=None, help="output dir (default: RUN-FORMAT-gG next to RUN)")
    q.add_argument("--no-loss", action="store_true", help="skip the validation loss before/after")
    q.set_defaults(handler=_quantize)


def _finetune(args) -> int:
    from chinchax.train.preemption import PREEMPTED_EXIT_CODE

    try:
        return _run_finetune(args)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (imports, config, base, export): nothing to save
        print("chinchax finetune: interrupted outside training (nothing to save); run the same command again",
              file=sys.stderr)
        return PREEMPTED_EXIT_CODE


def _run_finetune(args) -> int:
    from chinchax.configlib import load_config
    from chinchax.posttrain.finetune import FinetuneConfig, finetune
    from chinchax.train.preemption import PREEMPTED_EXIT_CODE
    from chinchax.train.trainer import TrainingDiverged, TrainingPreempted

    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    try:
        result = finetune(args.base, cfg)
    except TrainingDiverged as e:
        print(f"chinchax finetune: {e}")
        return 3
    except TrainingPreempted as e:  # SIGTERM / SIGINT: saved at e.step, see train/preemption.py
        print(f"chinchax finetune: {e} (exit code {PREEMPTED_EXIT_CODE})", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if result:
        info = result["finetune"]
        print(
            f"done: {info['method']}, {info['n_params_trainable']:,} trainable of {result['n_params']:,} parameters, "
            f"{result['steps']} steps, eval loss {result['eval_loss']} -> {cfg.trainer.run_dir}/run.json"
        )
    return 0


def _quantize(args) -> int:
    from pathlib import Path

    from chinchax.posttrain.quantize import QuantSpec
    from chinchax.posttrain.quantize_run import quantize_run

    spec = QuantSpec(args.format, args.group_size, args.double_quant)
    run = Path(args.run)
    out = Path(args.out) if args.out else run.with_name(f"{run.name}-{args.format}-g{args.group_size}")
    info = quantize_run(run, out, spec, measure_loss=not args.no_loss)
    loss = ""
    if "loss_after" in info:
        loss = f", eval loss {info['loss_before']:.4f} -> {info['loss_after']:.4f}"
    print(
        f"done: {args.format} kernels {info['kernel_stored_bytes']:,} bytes ({info['kernel_bytes_ratio']:.3f} of "
        f"float32), {info['model_bits'] / 8e6:.3f} MB of model bits{loss} -> {out}"
    )
    return 0
