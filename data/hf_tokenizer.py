"""Hugging Face tokenizers: a `tokenizer.json` loaded with the `tokenizers` library, and a GPT-2-style byte-level
BPE trained with it.

    tok = load_tokenizer("hf:/path/tokenizer.json")   # or "hf:DIR", "/path/x.json", or a DIR holding tokenizer.json
    tok.encode("text")                                # the HF ids, no special tokens added (the pipeline adds EOS)

Encoding is `tokenizers.Tokenizer.encode(text, add_special_tokens=False)` on the file as written, so the ids are
those of `transformers.PreTrainedTokenizerFast(tokenizer_file=...)(text, add_special_tokens=False)`: the
normalizer and pre-tokenizer of the file apply, and text that spells one of the file's added tokens (GPT-2's
"<|endoftext|>") becomes that token, as in transformers (SentencePiece and byte tokenizers read such text as
ordinary characters). Truncation and padding saved in the file are turned off: documents are never cut here.

Ids keep the file's own numbering. The roles come from `tokenizer_config.json` and `special_tokens_map.json` (which
wins, as in transformers) beside a file named tokenizer.json (`eos_token`, `bos_token`, `pad_token`, `unk_token`, `mask_token`, as
transformers reads them), else from the file's special tokens by name:

    eos   </s> <|endoftext|> <|end_of_text|> <eos> <|eos|> [SEP]        required: a UserError without one
    bos   <s> <|begin_of_text|> <bos> <|startoftext|> [CLS]             none: bos = eos (GPT-2's convention)
    pad   <pad> [PAD] <|pad|> <|padding|>                               none: pad = eos (GPT-2, LLaMA-3)
    unk   <unk> [UNK] <|unk|>                                           none: unk = eos (GPT-2's unk_token)
    mask  <mask> [MASK]                                                 none: mask_id = None
    sentinels  <extra_id_0> .. <extra_id_99>, all of them (T5)         none: sentinel_ids = ()

pad need not be 0: packed rows mark padding by segment_ids 0 and carry no loss, whatever the id. Nothing is
appended to the vocabulary, so `vocab_size` is the file's (GPT-2: 50257) and a converted model's embedding
table always holds it; a tokenizer without a mask token or sentinels cannot feed masked LM or span corruption
(the pipeline says so) - train one with `train_bpe`, which reserves them, or use one that has them (BERT, T5).

`decode` is the file's decoder (`decode(ids, skip_special_tokens=False)`) with pad, eos and bos left out, like
every chinchax tokenizer; ids outside the vocabulary read as U+FFFD.

`train_bpe` writes a GPT-2-style tokenizer.json (ByteLevel pre-tokenizer and decoder, BPE, no normalizer, so
decode(encode(s)) == s for any string) whose first ids are the byte and SentencePiece tokenizers' specials:
0 <pad>  1 </s> (eos)  2 <s> (bos)  3 <unk> (never produced: every byte has a symbol)  4 <mask>
5..104 <extra_id_0>..<extra_id_99>, then the 256 byte symbols, then the learned merges.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from chinchax.data.tokenizers import (
    BOS,
    BYTE_VOCAB_SIZE,
    EOS,
    MASK,
    MASK_PIECE,
    NUM_SENTINELS,
    PAD,
    SENTINEL_PIECES,
    UNK,
    _SpecialsMixin,
)
from chinchax.errors import UserError
from chinchax.fileio import read_user_json, write_text_atomic

TOKENIZER_JSON = "tokenizer.json"
ROLE_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # transformers' files; the second wins, as there
ROLE_NAMES = {
    "eos": ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]"),
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]"),
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "mask": (MASK_PIECE, "[MASK]"),
}
TRAIN_SPECIALS = ("<pad>", "</s>", "<s>", "<unk>", MASK_PIECE, *SENTINEL_PIECES)  # ids 0..104, as the byte layout
FIX = ("give the tokenizer.json that transformers' save_pretrained or tokenizers' Tokenizer.save wrote, or train "
       "one with `chinchax data tokenizer SOURCE --kind bpe --vocab-size N --out PATH.json`")


def resolve_path(spec_path: str) -> Path:
    """A tokenizer.json path from 'PATH.json' or a directory holding tokenizer.json."""
    path = Path(spec_path).expanduser()
    if path.is_dir():
        if not (path / TOKENIZER_JSON).is_file():
            raise UserError(f"tokenizer directory {path} holds no {TOKENIZER_JSON}; {FIX}")
        path = path / TOKENIZER_JSON
    if not path.is_file():
        raise UserError(f"tokenizer file {path} does not exist; {FIX}")
    return path.resolve()


def _role_configs(path: Path) -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of the transformers configs beside a file named tokenizer.json, checked to be JSON."""
    if path.name != TOKENIZER_JSON:
        return ()
    found = [path.parent / name for name in ROLE_FILES if (path.parent / name).is_file()]
    for f in found:
        read_user_json(f, what="tokenizer config", fix=f"fix or remove it (it names the special tokens of {path})")
    return tuple((f.name, f.read_bytes()) for f in found)


def _roles(configs: tuple[tuple[str, bytes], ...], where: Path) -> dict[str, str]:
    """{role: token text} from those configs: `eos_token` etc., strings or (older files) AddedToken dicts."""
    roles = {}
    for name, data in configs:
        cfg = json.loads(data)
        if not isinstance(cfg, dict):
            raise UserError(f"tokenizer config {where / name} is not a JSON object; fix or remove it")
        for role in ROLE_NAMES:
            value = cfg.get(f"{role}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and value:
                roles[role] = value
    return roles


class HFTokenizer(_SpecialsMixin):
    """A Hugging Face tokenizer.json with chinchax's special-token contract (see the module docstring)."""

    kind = "hf"

    def __init__(self, data: bytes, *, path: str, configs: tuple[tuple[str, bytes], ...] = ()):
        """`data`: the tokenizer.json; `configs`: (file name, bytes) of the transformers configs beside it."""
        from tokenizers import Tokenizer

        self._data, self.path, self._configs = bytes(data), path, tuple(configs)
        self._roles = _roles(self._configs, Path(path).parent)
        try:
            tok = Tokenizer.from_str(self._data.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a JSON of another shape
            raise UserError(f"tokenizer file {path} is not a Hugging Face tokenizer.json ({e}); {FIX}") from None
        tok.no_truncation()  # a saved max_length would cut documents silently (transformers turns it off too)
        tok.no_padding()
        self._tok = tok
        added = tok.get_added_tokens_decoder()
        self.vocab_size = max(tok.get_vocab_size(with_added_tokens=True), max(added, default=-1) + 1)
        self._special_added = {t.content: i for i, t in added.items() if t.special}
        self._setup_roles()
        self.hash = hashlib.sha256(b"\0".join([self._data, *(c for _, c in self._configs)])).hexdigest()

    @classmethod
    def from_path(cls, spec_path: str | os.PathLike) -> HFTokenizer:
        path = resolve_path(str(spec_path))
        read_user_json(path, what="tokenizer file", fix=FIX)  # not UTF-8 / cut short: one line with the place
        return cls(path.read_bytes(), path=str(path), configs=_role_configs(path))

    def _setup_roles(self) -> None:
        ids: dict[str, int | None] = {}
        for role, names in ROLE_NAMES.items():
            if role in self._roles:
                i = self._tok.token_to_id(self._roles[role])
                if i is None:
                    raise UserError(f"the tokenizer config beside {self.path} names {role}_token "
                                    f"{self._roles[role]!r}, which is not in the tokenizer's vocabulary; fix it")
                ids[role] = i
            else:
                ids[role] = next((self._special_added[n] for n in names if n in self._special_added), None)
        if ids["eos"] is None:
            raise UserError(
                f"tokenizer file {self.path} has no end-of-text token chinchax recognizes (none of its special tokens "
                f"is one of {', '.join(ROLE_NAMES['eos'])}); put a tokenizer_config.json naming \"eos_token\" beside "
                f"it (as transformers' save_pretrained writes)"
            )
        self.eos_id = ids["eos"]
        self.bos_id = ids["bos"] if ids["bos"] is not None else self.eos_id
        self.pad_id = ids["pad"] if ids["pad"] is not None else self.eos_id
        self.unk_id = ids["unk"] if ids["unk"] is not None else self.eos_id
        self.mask_id = ids["mask"]
        sentinels = [self._special_added.get(p, self._tok.token_to_id(p)) for p in SENTINEL_PIECES]
        self.sentinel_ids = tuple(sentinels) if all(s is not None for s in sentinels) else ()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encode many texts at once (the library's Rust threads)."""
        return [np.asarray(e.ids, dtype=np.int32)
                for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        flat = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel().tolist()
        dropped = {self.pad_id, self.eos_id, self.bos_id}
        out: list[str] = []
        run: list[int] = []
        for i in flat:  # one decode per run, so decoders that join tokens (Metaspace) see them together
            if i in dropped:
                continue
            if 0 <= i < self.vocab_size:
                run.append(i)
                continue
            out.append(self._tok.decode(run, skip_special_tokens=False) + "\ufffd")
            run = []
        out.append(self._tok.decode(run, skip_special_tokens=False))
        return "".join(out)

    def token_byte_lengths(self) -> np.ndarray | None:
        """UTF-8 bytes each id stands for (0 for special tokens), for bits per byte; None where the file's
        scheme is neither byte-level (GPT-2: one symbol per byte) nor SentencePiece-like (U+2581 for a space,
        <0xNN> byte pieces)."""
        spec = json.loads(self._data)
        scheme = json.dumps(spec.get("decoder"))
        byte_level = '"ByteLevel"' in scheme
        if not byte_level and "\u2581" not in scheme and "Metaspace" not in scheme:
            return None
        lengths = np.zeros(self.vocab_size, np.int64)
        added = self._tok.get_added_tokens_decoder()
        for i in range(self.vocab_size):
            if i in added:  # added tokens are stored as plain text, not in the byte alphabet
                lengths[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
                continue
            piece = self._tok.id_to_token(i)
            if piece is None:
                continue
            if byte_level:
                lengths[i] = len(piece)  # each symbol of the byte-level alphabet is one byte
            elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
                lengths[i] = 1
            else:
                lengths[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        return lengths

    def files(self) -> dict[str, bytes]:
        """The files this tokenizer was read from, by name (what `chinchax model convert` copies)."""
        return {TOKENIZER_JSON: self._data, **dict(self._configs)}

    def __getstate__(self):  # picklable for grain worker processes
        return {"data": self._data, "path": self.path, "configs": self._configs}

    def __setstate__(self, state):
        self.__init__(state["data"], path=state["path"], configs=state["configs"])

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------------------
# Training


def _capped(documents: Iterable[str], max_train_bytes: int) -> Iterator[str]:
    total = 0
    for doc in documents:
        yield doc
        total += len(doc.encode("utf-8"))
        if total >= max_train_bytes:
            return


def train_bpe(
    documents: Iterable[str], out_path: str | os.PathLike, *, vocab_size: int, max_train_bytes: int = 200_000_000,
) -> HFTokenizer:
    """Train a GPT-2-style byte-level BPE on `documents` (in order, up to max_train_bytes) with tokenizers'
    BpeTrainer and write its tokenizer.json atomically. Ids 0..104 are the chinchax specials (module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size <= BYTE_VOCAB_SIZE:
        raise UserError(f"vocab_size {vocab_size}: must exceed {BYTE_VOCAB_SIZE} (105 special ids and the 256 byte "
                        f"symbols). Use the byte tokenizer for a byte-level vocabulary.")
    out_path = Path(out_path).expanduser()
    if out_path.suffix != ".json":
        raise UserError(f"--out {out_path}: a byte-level BPE is written as a tokenizer.json; give a path ending in "
                        ".json (e.g. tok/tokenizer.json)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2: no space invented
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(TRAIN_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_capped(documents, max_train_bytes), trainer)
    text = tok.to_str(pretty=True)
    write_text_atomic(out_path, text)
    result = HFTokenizer(text.encode("utf-8"), path=str(out_path.resolve()))
    assert (result.pad_id, result.eos_id, result.bos_id, result.unk_id, result.mask_id) == (PAD, EOS, BOS, UNK, MASK)
    assert len(result.sentinel_ids) == NUM_SENTINELS
    return result
