"""The grain input pipeline: documents -> tokens -> packed rows -> objective -> batches, sharded per host.

    from chinchax.data.pipeline import train_iterator, eval_batches
    tok = chinchax.data.tokenizers.load_tokenizer(cfg.data.tokenizer)
    it = train_iterator(cfg.data, tok, global_batch_size=B, variant=cfg.model.variant,
                        process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)   # dict of np arrays, leading dim B // process_count (docs/interfaces.md)
    evals = eval_batches(cfg.data, tok, global_batch_size=B, variant=...)  # same list for every run

Saving and restoring the iterator (for the trainer). `it` is a grain `DatasetIterator`; its state is a
small JSON dict (indices and counters, never data). Checkpoint it with orbax beside the train state,
using grain's own handler args, which write one `process_<i>-of-<n>.json` per host:

    import grain, orbax.checkpoint as ocp
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(train_state),
                                            data=grain.checkpoint.CheckpointSave(it)))
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                          data=grain.checkpoint.CheckpointRestore(it)))
    it = restored.data          # the same object, moved to the saved position

Save the state right after taking the batches of the steps already done (before the next `next(it)`);
the restored iterator then yields exactly the batches an uninterrupted run would, without replay.
Without orbax: `state = it.get_state()` (json-serialisable) and `it.set_state(state)` on a fresh
`train_iterator(...)` built from the same DataConfig, batch size and process layout.

Order of operations. Host `process_index` reads documents `process_index::process_count` of the split,
shuffled (grain's index shuffle: no buffer, memory independent of corpus size), repeated forever with a
new shuffle each epoch, tokenized (EOS appended to every document), then, by objective and variant:
  - decoder/encoder rows (causal LM, prefix LM for decoders, masked LM): pack (data.packing) -> objective
    per row with segment-aware shifts/splits (causal LM: per batch; with concat packing the packing, the
    row shuffle of data.shuffle_rows and the batching run in numpy a window at a time, bitwise grain's
    per-row chain: data/concat_batches.py);
  - encoder-decoder prefix LM: windows/documents of at most min(S, L) tokens -> random split -> the
    (encoder, decoder) pairs packed together;
  - span corruption: T5 windows of the concatenated stream -> corrupt -> one example per row.
With data.loss_on=targets (causal LM on prompt/target records) each record is tokenized as prompt and
target apart, with a 0/1 weight per token (1 on the target and its EOS) that is packed beside the tokens
and becomes the batch's `loss_weights`.
The objective's randomness comes from grain's `random_map` (seeded by data.seed, the host index and the
row index), so it is part of the checkpointed state too.

Evaluation uses the `eval_split`, no shuffle, a fixed seed (not data.seed) and always the same global
batches regardless of the number of hosts; each host gets its rows of every global batch.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence

import grain
import numpy as np

from chinchax.data import objectives as obj
from chinchax.data import packing as pk
from chinchax.data.concat_batches import ConcatBatchesIterDataset
from chinchax.data.config import DataConfig
from chinchax.data.sources import PromptTarget, open_prompt_targets, open_source
from chinchax.errors import UserError

log = logging.getLogger(__name__)

EVAL_SEED = 1234  # eval examples must not depend on the training seed: sweeps compare eval losses
DEFAULT_VARIANT = {
    "causal_lm": "decoder_only",
    "prefix_lm": "decoder_only",
    "span_corruption": "encoder_decoder",
    "masked_lm": "encoder_only",
}
SUPPORTED_VARIANTS = {
    "causal_lm": ("decoder_only",),
    "prefix_lm": ("decoder_only", "encoder_decoder"),
    "span_corruption": ("encoder_decoder", "decoder_only"),
    "masked_lm": ("encoder_only",),
}

# --- in-memory sources -----------------------------------------------------------------------------------

_MEMORY_SOURCES: dict[str, dict[str, Sequence[str | PromptTarget]]] = {}


def register_memory_source(name: str, splits: dict[str, Sequence[str | PromptTarget]]) -> str:
    """Make documents per split available as `source: memory:NAME` (tests, notebooks, benchmarks).

    A split is any random-access sequence of `str` (a list, or an object with __len__/__getitem__ that
    makes documents on demand), or of `PromptTarget` records (instruction data: data.loss_on=targets can
    weight their targets alone; with loss_on=all a record is its text); it is used as is, not copied.
    """
    for split, docs in splits.items():
        if len(docs) == 0 or not isinstance(docs[0], (str, PromptTarget)):
            raise UserError(f"memory source {name!r}: split {split!r} must be a non-empty sequence of str documents "
                            "or of PromptTarget records")
    _MEMORY_SOURCES[name] = dict(splits)
    return f"memory:{name}"


def _memory_split(cfg: DataConfig, split: str) -> Sequence[str | PromptTarget]:
    name = cfg.source[len("memory:") :]
    if name not in _MEMORY_SOURCES:
        known = ", ".join(sorted(_MEMORY_SOURCES)) or "none"
        raise UserError(f"data.source={cfg.source!r} was never registered (registered: {known}); "
                        "call chinchax.data.pipeline.register_memory_source first")
    splits = _MEMORY_SOURCES[name]
    if split not in splits:
        raise UserError(f"memory source {name!r} has no split {split!r}; it has {', '.join(splits)}")
    return splits[split]


@dataclasses.dataclass(frozen=True)
class _Texts:
    """PromptTarget records seen as their documents' text (data.loss_on=all, and every text reader)."""

    records: Sequence[PromptTarget]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index) -> str:
        return self.records[index].text


def open_documents(cfg: DataConfig, split: str) -> Sequence[str]:
    """Random-access documents (str) of a split: `memory:NAME` here, anything else via data.sources."""
    if cfg.source.startswith("memory:"):
        docs = _memory_split(cfg, split)
        return _Texts(docs) if isinstance(docs[0], PromptTarget) else docs
    return open_source(cfg.source, split, cfg.data_dir, text_field=cfg.text_field)


def open_prompt_target_documents(cfg: DataConfig, split: str) -> Sequence[PromptTarget]:
    """The PromptTarget records of a split (data.loss_on=targets): a memory source of records, or JSONL."""
    if not cfg.source.startswith("memory:"):
        return open_prompt_targets(cfg.source, split)
    docs = _memory_split(cfg, split)
    if not isinstance(docs[0], PromptTarget):
        raise UserError(f"data.loss_on=targets needs records with prompt and target fields; data.source="
                        f"{cfg.source!r} holds plain text documents. Register PromptTarget records (as "
                        "data.mixtures.register_mixture does), or set data.loss_on=all")
    return docs


# --- transforms (classes, so worker processes can pickle them) -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tokenize:
    tokenizer: object
    eos_id: int

    def __call__(self, text: str) -> np.ndarray:
        encode_array = getattr(self.tokenizer, "encode_array", None)  # vectorised where the tokenizer has it
        ids = encode_array(text) if encode_array is not None else self.tokenizer.encode(text)
        out = np.empty(len(ids) + 1, np.int32)
        out[:-1] = ids
        out[-1] = self.eos_id
        return out


@dataclasses.dataclass(frozen=True)
class TokenizePromptTarget:
    """data.loss_on=targets: prompt and target tokenized apart, EOS appended; weight 1 on the target's
    tokens and the EOS (the model learns to answer and to stop), 0 on the prompt's."""

    tokenizer: object
    eos_id: int

    def __call__(self, record: PromptTarget) -> dict:
        encode = getattr(self.tokenizer, "encode_array", None) or self.tokenizer.encode
        prompt, target = (np.asarray(encode(text), np.int32) for text in (record.prompt, record.target))
        tokens = np.concatenate([prompt, target, np.array([self.eos_id], np.int32)])
        weights = np.zeros(len(tokens), np.int32)
        weights[len(prompt) :] = 1
        return {"tokens": tokens, "weights": weights}


@dataclasses.dataclass(frozen=True)
class RowObjective:
    """Packed decoder/encoder row -> batch keys."""

    objective: str
    special: obj.SpecialTokens
    mlm_probability: float

    def __call__(self, row: dict, rng: np.random.Generator) -> dict:
        args = (row["tokens"], row["segment_ids"], row["positions"])
        if self.objective == "causal_lm":
            return obj.causal_lm(*args, bos_id=self.special.bos_id)
        if self.objective == "prefix_lm":
            return obj.prefix_lm(*args, rng, bos_id=self.special.bos_id)
        return obj.masked_lm(*args, rng, special=self.special, mlm_probability=self.mlm_probability)


@dataclasses.dataclass(frozen=True)
class CausalLMBatch:
    """Packed rows, batched -> causal LM batch keys. Applied after batching: one numpy pass per batch
    instead of a grain element per row (measured: 1.55 -> 0.89 ms a batch of 32 x 64)."""

    bos_id: int

    def __call__(self, rows: dict) -> dict:
        return obj.causal_lm_batch(rows["tokens"], rows["segment_ids"], rows["positions"], bos_id=self.bos_id,
                                   token_weights_BL=rows.get("weights"))  # data.loss_on=targets


@dataclasses.dataclass(frozen=True)
class PrefixPair:
    def __call__(self, tokens_n: np.ndarray, rng: np.random.Generator) -> dict:
        encoder_inputs, targets = obj.split_prefix(tokens_n, rng)
        return {"encoder_inputs": encoder_inputs, "targets": targets}


@dataclasses.dataclass(frozen=True)
class SpanCorrupt:
    cfg_noise_density: float
    cfg_mean_span: float
    special: obj.SpecialTokens
    variant: str
    decoder_length: int

    def __call__(self, window_n: np.ndarray, rng: np.random.Generator) -> dict:
        inputs, targets = obj.span_corruption(
            window_n, rng, noise_density=self.cfg_noise_density, mean_noise_span_length=self.cfg_mean_span,
            sentinel_ids=self.special.sentinel_ids, eos_id=self.special.eos_id,
        )
        if self.variant == "decoder_only":
            return obj.decoder_prefix_row(inputs, targets, self.decoder_length, bos_id=self.special.bos_id)
        return {"encoder_inputs": inputs, "targets": targets}


@dataclasses.dataclass(frozen=True)
class EncoderDecoderRow:
    bos_id: int

    def __call__(self, packed: dict) -> dict:
        return obj.encoder_decoder_example(packed, bos_id=self.bos_id)


def _has_two_tokens(tokens_n: np.ndarray) -> bool:
    return len(tokens_n) >= 2


# --- building --------------------------------------------------------------------------------------------


def resolve_variant(cfg: DataConfig, variant: str | None) -> str:
    variant = variant or DEFAULT_VARIANT[cfg.objective]
    if variant not in SUPPORTED_VARIANTS[cfg.objective]:
        raise UserError(
            f"data.objective={cfg.objective!r} does not train a model.variant={variant!r}; it trains "
            f"{' or '.join(SUPPORTED_VARIANTS[cfg.objective])}"
        )
    return variant


def span_corruption_raw_length(cfg: DataConfig, variant: str) -> int:
    """Window length before corruption, so the corrupted example fits the row(s) exactly (T5)."""
    lengths = (cfg.seq_len, None) if variant == "decoder_only" else (cfg.encoder_length, cfg.seq_len)
    try:
        return obj.span_corruption_raw_length(*lengths, cfg.noise_density, cfg.mean_noise_span_length)
    except ValueError:
        raise UserError(f"data.seq_len={cfg.seq_len} (encoder {cfg.encoder_length}) is too short for span "
                        "corruption: a corrupted window needs at least 3 input and 3 target tokens") from None


def _check(cfg: DataConfig, variant: str, special: obj.SpecialTokens) -> None:
    # A loaded tokenizer.json may lack what an objective writes into its inputs (data/hf_tokenizer.py).
    lacks = {"masked_lm": "a mask token" if special.mask_id is None else None,
             "span_corruption": "<extra_id_N> sentinels" if not special.sentinel_ids else None}.get(cfg.objective)
    if lacks:
        raise UserError(f"data.objective={cfg.objective} needs {lacks}, which data.tokenizer={cfg.tokenizer!r} does "
                        "not have; use a tokenizer that has them (T5's or BERT's tokenizer.json, 'byte', or one "
                        "trained with `chinchax data tokenizer`), or another objective")
    if cfg.objective == "span_corruption":
        if cfg.packing != "concat":
            raise UserError(f"data.objective=span_corruption cuts T5 windows from the concatenated stream; "
                            f"set data.packing=concat (got {cfg.packing!r})")
        raw = span_corruption_raw_length(cfg, variant)
        spans = obj.span_counts(raw, cfg.noise_density, cfg.mean_noise_span_length)[1]
        if spans > len(special.sentinel_ids):
            raise UserError(
                f"span corruption windows of {raw} tokens have {spans} noise spans but the tokenizer has only "
                f"{len(special.sentinel_ids)} sentinel ids; shorten data.seq_len/encoder_seq_len or raise "
                "data.mean_noise_span_length"
            )


def _rows(cfg: DataConfig, tokens: grain.IterDataset, variant: str, special, *, seed: int, num_bins: int):
    """Token arrays (one per document) -> examples with the batch keys of docs/interfaces.md."""
    L, S = cfg.seq_len, cfg.encoder_length
    if cfg.objective == "span_corruption":
        windows = pk.concat_windows(tokens, span_corruption_raw_length(cfg, variant)).filter(_has_two_tokens)
        examples = windows.random_map(
            SpanCorrupt(cfg.noise_density, cfg.mean_noise_span_length, special, variant, L), seed=seed
        )
        if variant == "decoder_only":
            return examples
        return pk.pack_pairs(examples, encoder_length=S, decoder_length=L, packing="none").map(
            EncoderDecoderRow(special.bos_id)
        )
    if variant == "encoder_decoder":  # prefix LM as encoder inputs / decoder targets
        width = min(S, L)
        pieces = pk.concat_windows(tokens, width) if cfg.packing == "concat" else pk.split_long(tokens, width)
        pairs = pieces.filter(_has_two_tokens).random_map(PrefixPair(), seed=seed)
        packed = pk.pack_pairs(pairs, encoder_length=S, decoder_length=L, packing=cfg.packing,
                               num_bins=num_bins, seed=seed)
        return packed.map(EncoderDecoderRow(special.bos_id))
    if cfg.loss_on == "targets":  # causal LM only (DataConfig.validate): its objective runs per batch
        return pk.pack_weighted(tokens, length=L, packing=cfg.packing, num_bins=num_bins, seed=seed)
    rows = pk.pack_tokens(tokens, length=L, packing=cfg.packing, num_bins=num_bins, seed=seed)
    if _objective_after_batching(cfg):
        return rows
    return rows.random_map(RowObjective(cfg.objective, special, cfg.mlm_probability), seed=seed)


def _objective_after_batching(cfg: DataConfig) -> bool:
    """Causal LM on packed rows needs no randomness: build_dataset applies it to whole batches."""
    return cfg.objective == "causal_lm"


def _token_stream(
    docs: Sequence, tokenize, *, shard: tuple[int, int], shuffle_seed: int | None, repeat: bool
):
    ds = grain.MapDataset.source(docs)
    index, count = shard
    if count > 1:
        ds = ds[index::count]
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    if repeat:
        ds = ds.repeat(None)
    ds = ds.map(tokenize)
    return ds.to_iter_dataset()


def _host_seed(seed: int, process_index: int) -> int:
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def _per_host(global_batch_size: int, process_count: int) -> int:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise UserError(
            f"global batch size {global_batch_size} must be a positive multiple of the {process_count} processes"
        )
    return global_batch_size // process_count


def build_dataset(
    cfg: DataConfig,
    tokenizer,
    *,
    batch_size: int,
    split: str,
    variant: str | None = None,
    seed: int,
    shuffle: bool,
    repeat: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """The batched IterDataset of one host (endless with `repeat`; eval takes a fixed prefix of it)."""
    cfg.validate()
    variant = resolve_variant(cfg, variant)
    special = obj.SpecialTokens.from_tokenizer(tokenizer)
    _check(cfg, variant, special)
    targets = cfg.loss_on == "targets"
    docs = open_prompt_target_documents(cfg, split) if targets else open_documents(cfg, split)
    if len(docs) < process_count:
        raise UserError(f"{cfg.source} split {split!r} has {len(docs)} documents, fewer than {process_count} hosts")
    host_seed = _host_seed(seed, process_index)
    tokenize = (TokenizePromptTarget if targets else Tokenize)(tokenizer, special.eos_id)
    tokens = _token_stream(
        docs, tokenize, shard=(process_index, process_count), shuffle_seed=host_seed if shuffle else None,
        repeat=repeat,
    )
    # Causal LM on concat-packed plain documents: one numpy pass per window, bitwise grain's concat-pack ->
    # window shuffle -> batch (data/concat_batches.py), ~7x cheaper (0.52 -> 0.07 ms a batch of 16 x 64).
    if cfg.objective == "causal_lm" and cfg.packing == "concat" and not targets and variant != "encoder_decoder":
        batches = ConcatBatchesIterDataset(tokens, seq_len=cfg.seq_len, batch_size=batch_size,
                                           shuffle_rows=cfg.shuffle_rows if shuffle else 0, seed=host_seed)
        return batches.map(CausalLMBatch(special.bos_id))
    num_bins = cfg.packing_bins or max(batch_size, 16)
    rows = _rows(cfg, tokens, variant, special, seed=host_seed, num_bins=num_bins)
    if shuffle and cfg.shuffle_rows:  # checkpointable: the window's state is part of the iterator's
        rows = grain.experimental.WindowShuffleIterDataset(rows, window_size=cfg.shuffle_rows, seed=host_seed)
    batches = rows.batch(batch_size, drop_remainder=True)
    if variant != "encoder_decoder" and _objective_after_batching(cfg):
        batches = batches.map(CausalLMBatch(special.bos_id))
    return batches


def train_iterator(
    cfg: DataConfig,
    tokenizer,
    *,
    global_batch_size: int,
    variant: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
):
    """This host's endless, checkpointable iterator of training batches (see the module docstring)."""
    ds = build_dataset(
        cfg, tokenizer, batch_size=_per_host(global_batch_size, process_count), split=cfg.train_split,
        variant=variant, seed=cfg.seed, shuffle=cfg.shuffle, process_index=process_index,
        process_count=process_count,
    )
    if cfg.worker_count > 0:
        _parse_absl_flags()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return iter(ds)


def eval_batches(
    cfg: DataConfig,
    tokenizer,
    *,
    global_batch_size: int,
    variant: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """`cfg.eval_batches` validation batches: identical for every run with this data config and batch size.

    The validation split is read in order (cycled if it is too small, with a warning) by one logical
    reader, so the global batches do not depend on the number of hosts; this host gets its rows of each.
    With `data.shuffle_rows`, its documents and rows are shuffled with a fixed seed (never data.seed), so
    the rows sample many documents instead of the first few, and are still the same for every run.
    """
    per_host = _per_host(global_batch_size, process_count)
    key = _eval_key(cfg, tokenizer, global_batch_size, variant, process_index, process_count)
    if key in _EVAL_MEMO:
        return _EVAL_MEMO[key]

    def first_batches(repeat: bool) -> list[dict[str, np.ndarray]]:
        ds = build_dataset(cfg, tokenizer, batch_size=global_batch_size, split=cfg.eval_split, variant=variant,
                           seed=EVAL_SEED, shuffle=cfg.shuffle_rows > 0, repeat=repeat)
        it = iter(ds)
        out = []
        for batch in it:
            out.append(batch)
            if len(out) == cfg.eval_batches:
                break
        return out

    batches = first_batches(repeat=False)
    if len(batches) < cfg.eval_batches:
        log.warning("split %r of %s holds only %d batches of %d rows; cycling it to make %d",
                    cfg.eval_split, cfg.source, len(batches), global_batch_size, cfg.eval_batches)
        batches = first_batches(repeat=True)
    rows = slice(process_index * per_host, (process_index + 1) * per_host)
    out = [{k: _read_only(v[rows]) for k, v in b.items()} for b in batches]
    if key is not None:
        _EVAL_MEMO[key] = out
        while len(_EVAL_MEMO) > 4:
            _EVAL_MEMO.pop(next(iter(_EVAL_MEMO)))
    return out


# A sweep worker trains run after run on the same validation batches; building them takes 0.25-0.5 s a run.
_EVAL_MEMO: dict[tuple, list[dict[str, np.ndarray]]] = {}


def _eval_key(cfg: DataConfig, tokenizer, global_batch_size, variant, process_index, process_count):
    """What the validation batches depend on, or None where the documents have no fingerprint (in-memory
    sources can be registered again under one name; JSONL prompt/target files can change)."""
    if cfg.loss_on == "targets" or not getattr(tokenizer, "hash", None):
        return None
    meta = getattr(open_documents(cfg, cfg.eval_split), "metadata", {})
    documents = meta.get("manifest_hash") or meta.get("dataset")  # a built corpus's files; a TFDS version
    if not documents:
        return None
    return (repr(cfg), tokenizer.hash, documents, global_batch_size, variant, process_index, process_count)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.array(a)  # its own buffer: the memo never aliases a view of a larger batch
    a.flags.writeable = False
    return a


def _parse_absl_flags() -> None:
    # grain's worker processes read absl flags; an unparsed FLAGS object raises inside them.
    from absl import flags  # noqa: PLC0415

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])


def batch_shapes(cfg: DataConfig, batch_size: int, variant: str | None = None) -> dict[str, tuple[tuple, np.dtype]]:
    """Shape and dtype of every key of a batch, before the first batch exists (for jit shardings)."""
    variant = resolve_variant(cfg, variant)
    L, S = cfg.seq_len, cfg.encoder_length
    shapes = {
        "inputs": ((batch_size, L), np.dtype(np.int32)),
        "targets": ((batch_size, L), np.dtype(np.int32)),
        "loss_weights": ((batch_size, L), np.dtype(np.float32)),
        "segment_ids": ((batch_size, L), np.dtype(np.int32)),
        "positions": ((batch_size, L), np.dtype(np.int32)),
    }
    if variant == "decoder_only" and cfg.objective in ("prefix_lm", "span_corruption"):
        shapes["prefix_mask"] = ((batch_size, L), np.dtype(bool))
    if variant == "encoder_decoder":
        for key in ("encoder_inputs", "encoder_segment_ids", "encoder_positions"):
            shapes[key] = ((batch_size, S), np.dtype(np.int32))
    return shapes
