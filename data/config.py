"""`DataConfig`: where the text comes from, how it is tokenized, packed and turned into training examples.

The trainer's `ExperimentConfig` embeds it as `data: DataConfig`; `chinchax.data.pipeline` reads it.

Lengths, per model variant (see `chinchax.data.pipeline` for how the variant is chosen):
  - decoder_only / encoder_only: every row is `seq_len` tokens.
  - encoder_decoder: the encoder side is `encoder_seq_len` tokens (None = `seq_len`), the decoder side
    `seq_len`. T5's span-corruption setting is `encoder_seq_len=512, seq_len=114`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from chinchax.errors import UserError

OBJECTIVES = ("causal_lm", "prefix_lm", "span_corruption", "masked_lm")
PACKINGS = ("concat", "first_fit", "none")
LOSS_ON = ("all", "targets")


@dataclass(frozen=True)
class DataConfig:
    # Where documents come from: "stdlib" (the embedded corpus), "site-packages", "tfds:NAME[/CONFIG][:VERSION]",
    # "text:PATH_OR_GLOB" (.txt, .jsonl, .parquet, code), "parquet:PATH_OR_GLOB" (Parquet shards only:
    # FineWeb...), or "memory:NAME" (registered in-process with pipeline.register_memory_source). A relative path
    # is read from the working directory of the process that trains.
    source: str = "stdlib"
    data_dir: str | None = None  # None = CHINCHAX_DATA_DIR or ~/.cache/chinchax/data
    text_field: str = "text"  # the TFDS feature, JSONL key or Parquet column that holds the text
    train_split: str = "train"
    eval_split: str = "validation"
    tokenizer: str = "byte"  # "byte", "spm:PATH" / PATH.model, "hf:PATH" / PATH.json (a tokenizer.json), or its DIR
    objective: str = "causal_lm"
    seq_len: int = 256
    encoder_seq_len: int | None = None
    # concat: concatenate documents and split into rows (no padding; a document may span two rows);
    # first_fit: keep documents whole where they fit, split only those longer than a row;
    # none: one document (or piece of one) per row, padded.
    packing: str = "concat"
    packing_bins: int = 0  # first_fit: rows packed together; 0 = the per-host batch size (at least 16)
    noise_density: float = 0.15  # span corruption (T5)
    mean_noise_span_length: float = 3.0
    mlm_probability: float = 0.15  # masked LM (BERT): share of tokens chosen for the loss
    seed: int = 0  # shuffling and objective randomness of the TRAIN stream (eval never depends on it)
    shuffle: bool = True
    # Train rows are shuffled within a window of this many rows after packing (0 = off). Concatenated rows
    # come in document order, so a small batch is otherwise a few consecutive pieces of one or two files:
    # gradients are far from i.i.d. and where a short run ends up depends on the last files it saw.
    shuffle_rows: int = 0
    eval_batches: int = 8  # fixed number of validation batches, identical for every run of this config
    # grain worker processes (0 = in the training process). Each worker packs its own slice of the
    # documents, so the stream (still deterministic and resumable) differs between worker counts; the
    # workers are spawned, so a script that starts them needs `if __name__ == "__main__":`.
    worker_count: int = 0
    # Which tokens the loss counts: "all" (pretraining), or "targets" (instruction tuning, FLAN/T5): for
    # sources of prompt/target records (a registered mixture, JSONL with `prompt` and `target` fields) only
    # the target's tokens and the EOS that ends it. "all" is stored as null, so the config.yaml of a run
    # made before this key existed still matches on resume (the trainer compares missing keys as null).
    loss_on: str | None = None

    def __post_init__(self):
        if self.loss_on == "all":  # one spelling of the default: resume compares configs key by key
            object.__setattr__(self, "loss_on", None)

    @property
    def encoder_length(self) -> int:
        return self.encoder_seq_len if self.encoder_seq_len is not None else self.seq_len

    def replace(self, **changes) -> DataConfig:
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> DataConfig:
        if self.objective not in OBJECTIVES:
            raise UserError(f"data.objective={self.objective!r} is not valid; choose one of {', '.join(OBJECTIVES)}")
        if self.packing not in PACKINGS:
            raise UserError(f"data.packing={self.packing!r} is not valid; choose one of {', '.join(PACKINGS)}")
        if self.loss_on not in (None, "targets"):
            raise UserError(f"data.loss_on={self.loss_on!r} is not valid; choose one of {', '.join(LOSS_ON)}")
        if self.loss_on == "targets" and self.objective != "causal_lm":
            raise UserError(f"data.loss_on=targets weights the tokens of a causal LM; data.objective="
                            f"{self.objective!r} chooses its own loss tokens. Set data.objective=causal_lm, or "
                            "data.loss_on=all")
        if not self.source:
            raise UserError("data.source is empty; use 'stdlib', 'tfds:NAME', 'text:PATH', 'parquet:PATH' or "
                            "'memory:NAME'")
        if not self.tokenizer:
            raise UserError("data.tokenizer is empty; use 'byte', the path of a SentencePiece .model file or "
                            "'hf:PATH' (a Hugging Face tokenizer.json)")
        if self.seq_len < 4:
            raise UserError(f"data.seq_len={self.seq_len} is too short; use at least 4 tokens")
        if self.encoder_seq_len is not None and self.encoder_seq_len < 4:
            raise UserError(f"data.encoder_seq_len={self.encoder_seq_len} is too short; use at least 4 or null")
        if not 0.0 < self.noise_density < 1.0:
            raise UserError(f"data.noise_density={self.noise_density} must be in (0, 1); T5 uses 0.15")
        if self.mean_noise_span_length < 1.0:
            raise UserError(f"data.mean_noise_span_length={self.mean_noise_span_length} must be >= 1; T5 uses 3")
        if not 0.0 < self.mlm_probability < 1.0:
            raise UserError(f"data.mlm_probability={self.mlm_probability} must be in (0, 1); BERT uses 0.15")
        if self.eval_batches < 1:
            raise UserError(f"data.eval_batches={self.eval_batches} must be at least 1")
        if self.worker_count < 0:
            raise UserError(f"data.worker_count={self.worker_count} must be >= 0 (0 = no worker processes)")
        if self.shuffle_rows < 0:
            raise UserError(f"data.shuffle_rows={self.shuffle_rows} must be >= 0 (0 = no row shuffle)")
        if self.packing_bins < 0:
            raise UserError(f"data.packing_bins={self.packing_bins} must be >= 0 (0 = the per-host batch size)")
        if not 0 <= self.seed < 2**31:
            raise UserError(f"data.seed={self.seed} must be in [0, 2**31)")
        return self
