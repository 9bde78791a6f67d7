"""`chinchax data build | tokenizer | info`: prepare sources, train tokenizers, measure corpora."""

from __future__ import annotations

import argparse
import sys

from chinchax import jsonio

SOURCE_HELP = ("'stdlib' (the Python standard library of this interpreter), 'site-packages' (the Python sources of "
               "this environment), 'text:PATH_OR_GLOB' (.txt, .jsonl, .parquet, code), 'parquet:PATH_OR_GLOB' (only "
               "the .parquet shards: FineWeb...), or 'tfds:NAME[/CONFIG][:VERSION]' (any TFDS catalog dataset)")


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--data-dir", default=None,
                   help="where datasets live (default: $CHINCHAX_DATA_DIR or ~/.cache/chinchax/data; gs:// for tfds:)")
    p.add_argument("--text-field", default="text",
                   help="TFDS feature, JSONL key or Parquet column holding the text (default: text)")
    p.add_argument("--max-files", type=int, default=None, help="stdlib/text/parquet: use only the first N files")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="text/parquet: skip empty, binary, non-UTF-8 or damaged files instead of failing "
                        "(stdlib always skips)")


def register(subparsers) -> None:
    data = subparsers.add_parser(
        "data", help="prepare data sources, train tokenizers, measure corpora",
        description="Data sources (TFDS datasets, your own text and Parquet shards, the embedded standard-library "
        "corpus) and tokenizers (byte-level, SentencePiece, or Hugging Face tokenizer.json).",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    build = sub.add_parser(
        "build", help="prepare a source as ArrayRecord", formatter_class=raw,
        description="Prepare a source so training can read it with random access: build text:/parquet:/stdlib corpora "
        "(a manifest of files, sizes and sha256; rebuilt only when it changes) or download and prepare a "
        "TFDS dataset as ArrayRecord.",
        epilog="examples:  chinchax data build stdlib\n           chinchax data build 'text:~/corpus/**/*.jsonl' "
        "--text-field body\n           chinchax data build 'parquet:~/fineweb/sample/10BT/*.parquet'\n"
        "           chinchax data build tfds:lm1b --data-dir gs://bucket/tfds",
    )
    _source_args(build)
    build.add_argument("--force", action="store_true", help="text/parquet/stdlib: rebuild even if the manifest matches")
    build.set_defaults(handler=_build)

    tok = sub.add_parser(
        "tokenizer", help="train a SentencePiece or byte-level BPE tokenizer on a source", formatter_class=raw,
        description="Train a tokenizer on a source's train split, with a lossless round trip and the ids pad=0 "
        "eos=1 bos=2 unk=3 mask=4, sentinels <extra_id_0..99> = 5..104 (as the byte tokenizer):\n"
        "  --kind sentencepiece  a SentencePiece .model (BPE or unigram, --model-type), byte fallback, bytes at "
        "105..360\n"
        "  --kind bpe            a GPT-2-style byte-level BPE trained with Hugging Face tokenizers, written as a "
        "tokenizer.json\n"
        "                        (load it with data.tokenizer=hf:PATH or PATH.json; transformers reads it too)",
        epilog="examples:  chinchax data tokenizer stdlib --vocab-size 8192 --out ~/tok/stdlib8k.model\n"
        "           chinchax data tokenizer stdlib --kind bpe --vocab-size 8192 --out ~/tok/stdlib8k/tokenizer.json",
    )
    _source_args(tok)
    tok.add_argument("--kind", choices=("sentencepiece", "bpe"), default=None,
                     help="default: bpe when --out ends in .json, else sentencepiece")
    tok.add_argument("--vocab-size", type=int, required=True, help="ids in the tokenizer (> 361)")
    tok.add_argument("--model-type", choices=("bpe", "unigram"), default=None,
                     help="sentencepiece only: its model type (default: bpe)")
    tok.add_argument("--out", required=True, help="the file to write: a .model (sentencepiece) or a .json (bpe)")
    tok.add_argument("--max-train-mb", type=float, default=200.0, help="train on at most this much text (MB)")
    tok.set_defaults(handler=_tokenizer)

    info = sub.add_parser(
        "info", help="documents, bytes, tokens and bytes per token of a source",
        description="Count documents, UTF-8 bytes and tokens of a split, and bytes per token (multiply a loss "
        "in bits per token by tokens/bytes to get bits per byte).",
    )
    _source_args(info)
    info.add_argument("--split", default="train", help="split to measure (default: train)")
    info.add_argument("--tokenizer", default="byte",
                      help="'byte', 'spm:PATH', PATH.model, 'hf:PATH' or PATH.json (default: byte)")
    info.add_argument("--max-docs", type=int, default=None, help="measure only the first N documents")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)
    data.set_defaults(handler=lambda args: data.print_help() or 2)


def _open(args, split: str):
    from chinchax.data.sources import open_source

    return open_source(args.source, split, args.data_dir, text_field=args.text_field, max_files=args.max_files,
                       skip_bad_files=args.skip_bad_files)


def _build(args) -> int:
    from chinchax.data import sources, text_builder
    from chinchax.errors import UserError

    data_dir = args.data_dir or sources.default_data_dir()
    if args.source.startswith("tfds:"):
        builder = sources.prepare_tfds(args.source[len("tfds:"):], data_dir)
        splits = {name: s.num_examples for name, s in builder.info.splits.items()}
        print(f"{args.source}: prepared in {builder.data_dir}: {jsonio.dumps(splits)}")
        return 0
    if args.max_files is not None and args.max_files < 1:
        raise UserError(f"--max-files {args.max_files}: must be at least 1")
    spec = sources.corpus_spec(args.source, max_files=args.max_files, skip_bad_files=args.skip_bad_files,
                               text_field=args.text_field)
    corpus_dir, manifest = text_builder.ensure_built(spec, data_dir, force=args.force)
    print(f"{args.source}: {manifest['num_docs']} documents from {manifest['num_files']} files "
          f"({manifest['num_bytes']:,} bytes, {len(manifest.get('skipped', {}))} skipped) in {corpus_dir}")
    print(f"manifest sha256 {manifest['manifest_hash']}" + (f", {manifest['python']}" if "python" in manifest else ""))
    return 0


def _tokenizer(args) -> int:
    from chinchax.data.hf_tokenizer import train_bpe
    from chinchax.data.tokenizers import train_sentencepiece
    from chinchax.errors import UserError

    kind = args.kind or ("bpe" if args.out.endswith(".json") else "sentencepiece")
    if kind == "bpe" and args.model_type is not None:
        raise UserError("--model-type chooses SentencePiece's model; --kind bpe is always a byte-level BPE")
    if kind == "sentencepiece" and args.out.endswith(".json"):
        raise UserError(f"--out {args.out}: a SentencePiece model is a .model file (a .json path is read as a "
                        "Hugging Face tokenizer.json); use --kind bpe for a tokenizer.json")
    if kind == "bpe" and not args.out.endswith(".json"):
        raise UserError(f"--out {args.out}: a byte-level BPE is written as a tokenizer.json; give a path ending in "
                        ".json (e.g. tok/tokenizer.json)")
    docs = _open(args, "train")
    max_train_bytes = int(args.max_train_mb * 1e6)
    if kind == "bpe":
        tok = train_bpe(iter(docs), args.out, vocab_size=args.vocab_size, max_train_bytes=max_train_bytes)
        print(f"wrote {tok.path}: byte-level BPE, vocab_size {tok.vocab_size}, sha256 {tok.hash}")
        return 0
    model_type = args.model_type or "bpe"
    tok = train_sentencepiece(iter(docs), args.out, vocab_size=args.vocab_size, model_type=model_type,
                              max_train_bytes=max_train_bytes)
    print(f"wrote {tok.path}: {model_type}, vocab_size {tok.vocab_size}, sha256 {tok.hash}")
    return 0


def _info(args) -> int:
    from chinchax.data.sources import document_stats
    from chinchax.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    docs = _open(args, args.split)
    stats = document_stats(docs, tokenizer, max_docs=args.max_docs)
    stats = {"source": args.source, "split": args.split, "tokenizer": args.tokenizer,
             "tokenizer_hash": tokenizer.hash, **stats, **{k: v for k, v in docs.metadata.items()}}
    if args.json:
        print(jsonio.dumps(stats, indent=1))
        return 0
    width = max(map(len, stats))
    for key, value in stats.items():
        value = f"{value:,}" if isinstance(value, int) else f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {value}", file=sys.stdout)
    return 0
