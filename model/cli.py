"""`chinchax model info|presets|convert|export-hf`: parameter counts, shapes and FLOPs per token, and
conversion to and from Hugging Face checkpoints (chinchax.model.convert)."""

from __future__ import annotations

import argparse

from chinchax import jsonio


def register(subparsers) -> None:
    model = subparsers.add_parser("model", help="inspect model configurations", description="Inspect model configurations.")
    model_sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    info = model_sub.add_parser(
        "info",
        help="parameter counts, shapes and FLOPs per token of a preset or YAML",
        description="Print total, embedding and non-embedding parameter counts, every parameter's shape and "
        "logical axes, and training FLOPs per token by each convention (6N with Kaplan's non-embedding N, "
        "6N with total N, Kaplan's forward C = 2N + 2·n_layer·n_ctx·d_attn, and the detailed matmul count "
        "used for MFU). Counts come from the real parameter tree, built abstractly (no memory).",
        epilog="examples:  chinchax model info gpt2\n           chinchax model info llama2-7b n_layers=16 --json\n"
        "           chinchax model info experiments/tiny.yaml model.d_model=128",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("spec", help="a preset name (see `chinchax model presets`) or a YAML file")
    info.add_argument("overrides", nargs="*", help="dotted overrides, e.g. d_model=512 or model.n_layers=6")
    info.add_argument("--seq-len", type=int, default=None, help="context length for FLOPs (default: max_len)")
    info.add_argument("--json", action="store_true", help="emit JSON instead of a table")
    info.add_argument("--no-shapes", action="store_true", help="omit the per-parameter shape list")
    info.set_defaults(handler=_info)

    register_convert(model_sub)  # `model convert HF_DIR OUT_DIR`, `model export-hf MODEL_DIR OUT_DIR`

    presets = model_sub.add_parser("presets", help="list the model presets", description="List the model presets.")
    presets.set_defaults(handler=_presets)
    model.set_defaults(handler=lambda args: model.print_help() or 0)


def _presets(args) -> int:
    from chinchax.model.config import load_model_config
    from chinchax.model.counting import count_params
    from chinchax.model.presets import preset_names

    for name in preset_names():
        cfg = load_model_config(name)
        print(f"{name:16s} {cfg.variant:16s} {count_params(cfg).total:>15,d} params")
    return 0


def _info(args) -> int:
    from chinchax.configlib import to_dict
    from chinchax.model.config import load_model_config
    from chinchax.model.counting import count_params, describe_shapes, flops_per_token

    cfg = load_model_config(args.spec, args.overrides)
    counts = count_params(cfg)
    seq_len = args.seq_len or cfg.max_len
    flops = flops_per_token(cfg, seq_len)
    shapes = [] if args.no_shapes else describe_shapes(cfg)
    if args.json:
        print(
            jsonio.dumps(
                {
                    "config": to_dict(cfg),
                    "n_params": counts.total,
                    "n_params_embedding": counts.embedding,
                    "n_params_non_embedding": counts.non_embedding,
                    "seq_len": seq_len,
                    "flops_per_token": flops.as_dict(),
                    "shapes": {path: {"shape": list(shape), "axes": list(axes)} for path, shape, axes in shapes},
                },
                indent=2,
            )
        )
        return 0
    print(f"{cfg.name}: {cfg.variant}, {cfg.attention} attention, {cfg.position} positions, {cfg.activation} MLP")
    print(f"  parameters      total {counts.total:>16,d}")
    print(f"                  embedding {counts.embedding:>12,d}   (vocabulary and position tables)")
    print(f"                  non-embedding {counts.non_embedding:>8,d}   (Kaplan's N)")
    print(f"  training FLOPs per token at seq_len {seq_len}:")
    print(f"    6N (total N, Chinchilla)        {flops.six_n:>14.4g}")
    print(f"    6N (non-embedding N, Kaplan)    {flops.six_n_non_embedding:>14.4g}")
    print(f"    Kaplan forward 2N+2·n_layer·n_ctx·d_attn {flops.kaplan_forward:>10.4g}   (forward only)")
    print(f"    detailed matmuls, fwd+bwd (MFU) {flops.detailed:>14.4g}")
    if shapes:
        print("  shapes (layer parameters carry a leading `layers` axis):")
        width = max(len(p) for p, _, _ in shapes)
        for path, shape, axes in shapes:
            print(f"    {path:{width}s}  {str(shape):24s} {axes}")
    return 0


def register_convert(subparsers) -> None:
    """Adds `convert` (HF -> chinchax) and `export-hf` (chinchax -> HF) to the `chinchax model`
    subcommands."""
    from chinchax.model.convert.hf_families import FAMILIES

    parser = subparsers.add_parser(
        "convert",
        help="convert a local Hugging Face checkpoint into a chinchax model directory",
        description="Convert a Hugging Face checkpoint on disk (config.json + model.safetensors or "
        f"pytorch_model.bin; families: {', '.join(sorted(FAMILIES))}) into OUT_DIR: model.yaml (the "
        "chinchax model config), params/ (orbax checkpoint of the parameters) and conversion.json. "
        "Needs torch and transformers; nothing is downloaded.",
    )
    parser.add_argument("hf_dir", help="directory a HF model was saved to with save_pretrained")
    parser.add_argument("out_dir", help="new (or empty) directory for the chinchax model")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="model config changes the weights do not fix, e.g. max_len=4096 dropout=0.0",
    )
    parser.add_argument(
        "--tokenizer", metavar="SPEC",
        help="tokenizer for generate/eval/finetune on the result: 'byte', a SentencePiece .model or a Hugging Face "
        "tokenizer.json (hf:PATH), copied in; default: the HF directory's tokenizer.model, else its tokenizer.json",
    )
    parser.set_defaults(handler=_convert_handler)

    export = subparsers.add_parser(
        "export-hf",
        help="write a converted chinchax model as a Hugging Face checkpoint",
        description="Write MODEL_DIR (model.yaml + params/, as `chinchax model convert` makes them) as a "
        "Hugging Face directory (config.json + model.safetensors) that transformers' from_pretrained "
        "loads. The family defaults to the one recorded in MODEL_DIR/conversion.json.",
    )
    export.add_argument("model_dir", help="directory with model.yaml and params/")
    export.add_argument("out_dir", help="new (or empty) directory for the HF checkpoint")
    export.add_argument("--family", choices=sorted(FAMILIES), help="HF model_type to write")
    export.set_defaults(handler=_export_handler)


def _convert_handler(args) -> int:
    from chinchax.model.convert.hf import convert_hf_checkpoint
    from chinchax.model.counting import count_params

    cfg = convert_hf_checkpoint(args.hf_dir, args.out_dir, args.overrides, tokenizer=args.tokenizer)
    counts = count_params(cfg)
    print(
        f"converted {args.hf_dir} -> {args.out_dir}: {cfg.variant} '{cfg.name}', {counts.total:,} parameters"
    )
    return 0


def _export_handler(args) -> int:
    import json
    from pathlib import Path

    from chinchax.errors import UserError
    from chinchax.model.convert.hf import load_converted
    from chinchax.model.convert.hf_export import export_hf_checkpoint
    from chinchax.model.convert.hf_families import FAMILIES

    model_type = args.family
    record = Path(args.model_dir) / "conversion.json"
    if model_type is None and record.is_file():
        model_type = json.loads(record.read_text()).get("model_type")
    if model_type is None:
        raise UserError(
            f"{args.model_dir} records no HF family; pass --family ({', '.join(sorted(FAMILIES))})"
        )
    cfg, params = load_converted(args.model_dir)
    export_hf_checkpoint(cfg, params, model_type, args.out_dir)
    print(f"exported '{cfg.name}' -> {args.out_dir} as HF {model_type}")
    return 0
