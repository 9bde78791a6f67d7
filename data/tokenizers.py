"""Tokenizers: a byte-level one that needs no training, SentencePiece (trained here or loaded), and Hugging Face
tokenizer.json files (loaded, or a byte-level BPE trained here: data/hf_tokenizer.py).

    tok = load_tokenizer("byte")                    # or "spm:/path/x.model", "/path/x.model", "hf:/path/tokenizer.json"
    ids = tok.encode("text")                        # list[int], no BOS/EOS added (the pipeline adds EOS)
    arrays = tok.encode_batch(["a", "b"])           # list of int32 arrays, multi-threaded for SentencePiece
    tok.decode(ids) == "text"                       # lossless for text (see below)

Every tokenizer has `pad_id`, `eos_id`, `bos_id`, `unk_id`, `mask_id`, `sentinel_ids` (`<extra_id_0>`,
`<extra_id_1>`, ... in that order), `vocab_size` and `hash`, which goes into run.json. The byte and SentencePiece
tokenizers have pad_id 0, a mask and 100 sentinels; a loaded tokenizer.json keeps its own ids, so its pad may be
another id (GPT-2: its EOS), and it may have no mask (mask_id None) and no sentinels (data/hf_tokenizer.py).

Id layout of the byte tokenizer AND of SentencePiece models trained by `train_sentencepiece` (the same
first 361 ids, so a byte-level and a subword run differ only above id 360):

    0 <pad>   1 </s> (eos)   2 <s> (bos)   3 <unk>   4 <mask>   5..104 <extra_id_0>..<extra_id_99>
    105..360  the bytes 0x00..0xFF                 (byte tokenizer: vocab_size = 361)
    361..     learned pieces                       (SentencePiece: vocab_size = --vocab-size)

Trained SentencePiece models use byte fallback (no <unk> ever for text), the 'identity' normalization,
keep every space (remove_extra_whitespaces=False, no dummy prefix), so decode(encode(s)) == s for any
string. Special tokens are control symbols: text that spells "<mask>" is encoded as ordinary characters,
never as the mask token. `decode` writes sentinels and the mask as "<extra_id_N>" and "<mask>" (readable
span-corruption examples) and drops pad, eos and bos.

A loaded `.model` file (e.g. T5's or LLaMA's) keeps its own ids. What it lacks is appended after its
vocabulary in T5's convention: 100 sentinels with <extra_id_0> the LAST id (T5: 32099), then <mask>,
then <s> and </s> if missing. Its pad must be id 0 (T5 has it there; a model without a pad, like LLaMA,
pads with id 0, its <unk>, which is harmless because padded positions carry no loss).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from chinchax.errors import UserError
from chinchax.fileio import write_bytes_atomic

NUM_SENTINELS = 100
PAD, EOS, BOS, UNK, MASK = 0, 1, 2, 3, 4
FIRST_SENTINEL = 5
BYTE_OFFSET = FIRST_SENTINEL + NUM_SENTINELS  # 105
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256  # 361
SENTINEL_PIECES = tuple(f"<extra_id_{i}>" for i in range(NUM_SENTINELS))
MASK_PIECE = "<mask>"
_BYTE_LAYOUT = "chinchax byte tokenizer v1: pad=0 eos=1 bos=2 unk=3 mask=4 sentinels=5..104 bytes=105..360"


class _SpecialsMixin:
    """decode() helpers shared by both tokenizers: how special ids read as text."""

    def _special_text(self) -> dict[int, str]:
        table = {self.pad_id: "", self.eos_id: "", self.bos_id: "", self.mask_id: MASK_PIECE}
        table.update({sid: piece for sid, piece in zip(self.sentinel_ids, SENTINEL_PIECES, strict=True)})
        return table

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def describe(self) -> dict:
        """What run.json records about the tokenizer."""
        return {"kind": self.kind, "path": getattr(self, "path", None), "hash": self.hash,
                "vocab_size": self.vocab_size}


class ByteTokenizer(_SpecialsMixin):
    """UTF-8 bytes shifted by 105 (see the module docstring); no training, vocab_size 361."""

    kind = "byte"
    vocab_size = BYTE_VOCAB_SIZE
    pad_id, eos_id, bos_id, unk_id, mask_id = PAD, EOS, BOS, UNK, MASK
    sentinel_ids = tuple(range(FIRST_SENTINEL, FIRST_SENTINEL + NUM_SENTINELS))
    hash = hashlib.sha256(_BYTE_LAYOUT.encode()).hexdigest()

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        specials = self._special_text()
        out: list[str] = []
        run = bytearray()
        for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel():
            i = int(i)
            if BYTE_OFFSET <= i < BYTE_VOCAB_SIZE:
                run.append(i - BYTE_OFFSET)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run.clear()
            out.append(specials.get(i, "\ufffd"))  # <unk> and out-of-range ids read as U+FFFD
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=361)"


class SentencePieceTokenizer(_SpecialsMixin):
    """A SentencePiece model (BPE or unigram) with the chinchax special tokens (see module docstring)."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, path: str | None = None):
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self.path = path
        self.hash = hashlib.sha256(self._proto).hexdigest()
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(self._proto)
        except Exception as e:  # noqa: BLE001 - sentencepiece raises bare RuntimeError/OSError
            raise UserError(f"{path or 'tokenizer'}: not a SentencePiece model ({e}).") from None
        self._sp = sp
        self._setup_specials()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"tokenizer {path}: no such file. Train one with `chinchax data tokenizer SOURCE "
                            f"--vocab-size N --out {path}` or use 'byte'.")
        return cls(path.read_bytes(), path=str(path.resolve()))

    def _piece_id(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return i if self._sp.id_to_piece(i) == piece else None

    def _setup_specials(self) -> None:
        sp = self._sp
        base = sp.get_piece_size()
        if sp.pad_id() not in (-1, 0):
            raise UserError(f"{self.path}: the model's <pad> is id {sp.pad_id()}; chinchax needs pad id 0.")
        if sp.pad_id() == -1 and not (sp.is_unknown(0) or sp.is_control(0)):
            raise UserError(f"{self.path}: the model has no <pad> and id 0 is the ordinary piece "
                            f"{sp.id_to_piece(0)!r}; chinchax pads with id 0, so it needs a pad, unk or "
                            f"control symbol there.")
        self.pad_id = 0
        self.unk_id = sp.unk_id()
        sentinels = [self._piece_id(p) for p in SENTINEL_PIECES]
        extra = 0
        if all(s is not None for s in sentinels):
            self.sentinel_ids = tuple(sentinels)
        else:  # T5's convention: <extra_id_0> is the last of the 100 ids appended to the vocabulary
            self.sentinel_ids = tuple(base + NUM_SENTINELS - 1 - i for i in range(NUM_SENTINELS))
            extra = NUM_SENTINELS
        mask = self._piece_id(MASK_PIECE)
        if mask is None:
            mask, extra = base + extra, extra + 1
        self.mask_id = mask
        self.bos_id = sp.bos_id()
        if self.bos_id < 0:
            self.bos_id, extra = base + extra, extra + 1
        self.eos_id = sp.eos_id()
        if self.eos_id < 0:
            self.eos_id, extra = base + extra, extra + 1
        self.vocab_size = base + extra
        self._base_size = base
        self._specials = self._special_text()
        self._specials.setdefault(self.unk_id, None)  # unk inside the model: let sentencepiece render it

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[np.ndarray]:
        """Encode many texts at once (sentencepiece's C++ threads; -1 = all cores)."""
        return [np.asarray(ids, dtype=np.int32)
                for ids in self._sp.encode(list(texts), num_threads=num_threads)]

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        flat = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel()
        for i in flat.tolist():
            text = self._specials.get(i, None)
            if text is None and 0 <= i < self._base_size:
                run.append(i)
                continue
            if run:
                out.append(self._sp.decode(run))
                run = []
            out.append("\ufffd" if text is None else text)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)

    def id_to_piece(self, i: int) -> str:
        if 0 <= i < self._base_size:
            return self._sp.id_to_piece(i)
        appended = {self.mask_id: MASK_PIECE, self.bos_id: "<s>", self.eos_id: "</s>",
                    **dict(zip(self.sentinel_ids, SENTINEL_PIECES, strict=True))}
        return appended[i]

    def __getstate__(self):  # picklable for grain worker processes
        return {"proto": self._proto, "path": self.path}

    def __setstate__(self, state):
        self.__init__(state["proto"], path=state["path"])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size})"


SPECS = ("'byte', 'spm:PATH' or a path to a SentencePiece .model file, 'hf:PATH' or a path to a Hugging Face "
         "tokenizer.json (a .json file, or a directory holding tokenizer.json)")


def load_tokenizer(spec: str):
    """'byte' (or 'bytes'); 'spm:PATH' or PATH.model (SentencePiece); 'hf:PATH', PATH.json or a directory holding
    tokenizer.json (Hugging Face, data/hf_tokenizer.py); any other existing file is read as SentencePiece."""
    if not isinstance(spec, str) or not spec:
        raise UserError(f"tokenizer {spec!r}: expected {SPECS}.")
    if spec in ("byte", "bytes"):
        return ByteTokenizer()
    local = os.path.expanduser(spec)
    if spec.startswith("hf:") or spec.endswith(".json") or os.path.isdir(local):
        from chinchax.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_path(spec[len("hf:"):] if spec.startswith("hf:") else spec)
    path = spec[len("spm:"):] if spec.startswith("spm:") else spec
    if not spec.startswith("spm:") and not path.endswith(".model") and not os.path.isfile(local):
        raise UserError(f"tokenizer {spec!r}: expected {SPECS}.")
    return SentencePieceTokenizer.from_file(path)


def check_vocab_fits(tokenizer, model_vocab_size: int) -> None:
    """Raise UserError when the model's embedding table cannot hold every id of the tokenizer."""
    if model_vocab_size < tokenizer.vocab_size:
        raise UserError(
            f"the model's vocab_size {model_vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} "
            f"({tokenizer!r}); set model.vocab_size >= {tokenizer.vocab_size} (a multiple of 128 is fastest)."
        )


# ----------------------------------------------------------------------------------------------------
# Training


def _sentences(documents: Iterable[str], max_train_bytes: int, max_sentence_bytes: int):
    """Cut documents into training 'sentences' at line boundaries (newlines kept, so pieces may span
    them); sentencepiece skips sentences longer than max_sentence_length, hence the cutting."""
    total = 0
    for doc in documents:
        buf: list[str] = []
        size = 0
        for line in doc.splitlines(keepends=True):
            n = len(line.encode("utf-8"))
            if size + n > max_sentence_bytes and buf:
                yield "".join(buf)
                buf, size = [], 0
            while n > max_sentence_bytes:  # one very long line: cut it (by characters, conservatively)
                head, line = line[: max_sentence_bytes // 4], line[max_sentence_bytes // 4:]
                yield head
                n = len(line.encode("utf-8"))
            buf.append(line)
            size += n
        if buf:
            yield "".join(buf)
        total += len(doc.encode("utf-8"))
        if total >= max_train_bytes:
            return


def train_sentencepiece(
    documents: Iterable[str],
    out_path: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    max_train_bytes: int = 200_000_000,
    character_coverage: float = 0.9995,
    num_threads: int | None = None,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model on `documents` (in order, up to max_train_bytes) and write it atomically."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise UserError(f"model_type {model_type!r}: expected 'bpe' or 'unigram'.")
    if vocab_size <= BYTE_VOCAB_SIZE:
        raise UserError(f"vocab_size {vocab_size}: must exceed {BYTE_VOCAB_SIZE} (the 361 fixed ids: specials, "
                        f"sentinels and bytes). Use the byte tokenizer for a byte-level vocabulary.")
    out_path = Path(out_path).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    max_sentence_bytes = 8192
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(documents, max_train_bytes, max_sentence_bytes),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            character_coverage=character_coverage,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,  # indentation runs become pieces (code)
            split_digits=True,
            max_sentence_length=max_sentence_bytes * 2,
            pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK,
            control_symbols=[MASK_PIECE, *SENTINEL_PIECES],
            input_sentence_size=0,  # use every sentence given (the cap is max_train_bytes): deterministic
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise UserError(f"sentencepiece could not train a {vocab_size}-piece {model_type} model: {e}. "
                        f"Choose another --vocab-size (or give more text).") from None
    proto = model.getvalue()
    write_bytes_atomic(out_path, proto)
    tok = SentencePieceTokenizer(proto, path=str(out_path.resolve()))
    assert (tok.mask_id, tok.sentinel_ids[0], tok.sentinel_ids[-1]) == (MASK, FIRST_SENTINEL, BYTE_OFFSET - 1)
    return tok
