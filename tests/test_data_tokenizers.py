"""Tokenizers: byte-level and SentencePiece round trips, the special-id layout, loading foreign models."""

import hashlib
import io
import pickle
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from chinchax.data.tokenizers import (
    SENTINEL_PIECES,
    ByteTokenizer,
    check_vocab_fits,
    load_tokenizer,
    train_sentencepiece,
)
from chinchax.errors import UserError

HARD_TEXTS = [
    "",
    "plain ascii",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\n\n\nblank lines\n",
    "    indented:\n        deeper\n",
    "unicode: héllo wörld, 日本語のテキスト, Ελληνικά, עברית, emoji 😀👍🏽, math ∑∫√",
    "control \x00\x01\x7f chars and a zero-width\u200bjoiner",
    "literal <mask> and <extra_id_0> and </s> and <pad> in the text",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
]


def stdlib_docs(n_files=40):
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))[:n_files]
    return [p.read_text(encoding="utf-8") for p in files]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "bpe.model"
    tok = train_sentencepiece(stdlib_docs(), out, vocab_size=1000, model_type="bpe", num_threads=1)
    return tok, out


# --------------------------------------------------------------------------------------------------
# Byte tokenizer


def test_byte_tokenizer_layout_and_round_trip():
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 361
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.sentinel_ids == tuple(range(5, 105))
    assert tok.encode("A") == [105 + 65] and tok.encode("é") == [105 + 0xC3, 105 + 0xA9]
    for text in HARD_TEXTS:
        ids = tok.encode(text)
        assert len(ids) == len(text.encode("utf-8")) and all(105 <= i < 361 for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode(np.asarray(ids, dtype=np.int32)) == text
        np.testing.assert_array_equal(tok.encode_array(text), np.asarray(ids, dtype=np.int32))
        assert tok.encode_array(text).dtype == np.int32
    batch = tok.encode_batch(HARD_TEXTS)
    assert [b.tolist() for b in batch] == [tok.encode(t) for t in HARD_TEXTS]
    # specials: pad/eos/bos vanish, sentinels and the mask are readable
    ids = [tok.bos_id] + tok.encode("ab") + [tok.sentinel_ids[0], tok.mask_id, tok.sentinel_ids[99], tok.eos_id, 0]
    assert tok.decode(ids) == "ab<extra_id_0><mask><extra_id_99>"
    assert tok.hash == load_tokenizer("bytes").hash and len(tok.hash) == 64
    assert tok.describe() == {"kind": "byte", "path": None, "hash": tok.hash, "vocab_size": 361}


# --------------------------------------------------------------------------------------------------
# SentencePiece trained here


def test_trained_sentencepiece_has_the_chinchax_layout(trained):
    tok, path = trained
    assert tok.vocab_size == 1000
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.sentinel_ids == tuple(range(5, 105))  # same first ids as the byte tokenizer
    assert [tok.id_to_piece(i) for i in (5, 104, 105, 360)] == ["<extra_id_0>", "<extra_id_99>", "<0x00>", "<0xFF>"]
    assert tok.hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_tokenizer(str(path)).hash == tok.hash == load_tokenizer(f"spm:{path}").hash


def test_trained_sentencepiece_round_trips_losslessly(trained):
    tok, _ = trained
    for text in HARD_TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, text
        assert tok.unk_id not in ids  # byte fallback: unseen characters become bytes, never <unk>
        # text that spells a special token is ordinary text, never the special id
        assert not set(ids) & {tok.pad_id, tok.eos_id, tok.bos_id, tok.mask_id, *tok.sentinel_ids}
    assert [a.tolist() for a in tok.encode_batch(HARD_TEXTS)] == [tok.encode(t) for t in HARD_TEXTS]
    assert tok.encode_batch(HARD_TEXTS)[1].dtype == np.int32
    ids = tok.encode("x = 1") + [tok.sentinel_ids[3], tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "x = 1<extra_id_3>"


def test_trained_sentencepiece_compresses_held_out_code(trained):
    tok, _ = trained
    held_out = stdlib_docs(60)[40:]
    n_bytes = sum(len(d.encode()) for d in held_out)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(held_out))
    assert n_bytes / n_tokens > 2.0  # a 1k BPE on Python code: about 2.5-3 bytes per token
    assert all(tok.decode(tok.encode(d)) == d for d in held_out)


def test_training_is_deterministic_and_unigram_works(tmp_path, trained):
    tok, _ = trained
    again = train_sentencepiece(stdlib_docs(), tmp_path / "again.model", vocab_size=1000, model_type="bpe",
                                num_threads=1)
    assert again.hash == tok.hash
    uni = train_sentencepiece(stdlib_docs(8), tmp_path / "uni.model", vocab_size=600, model_type="unigram")
    assert uni.vocab_size == 600 and uni.sentinel_ids == tuple(range(5, 105)) and uni.mask_id == 4
    for text in HARD_TEXTS:
        assert uni.decode(uni.encode(text)) == text
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically


def test_pickled_tokenizer_encodes_the_same(trained):
    tok, _ = trained
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.hash == tok.hash and clone.encode(HARD_TEXTS[5]) == tok.encode(HARD_TEXTS[5])
    assert pickle.loads(pickle.dumps(ByteTokenizer())).encode("x") == [105 + ord("x")]


# --------------------------------------------------------------------------------------------------
# Loading models trained elsewhere (T5-like and LLaMA-like id layouts)


def foreign_model(path: Path, **ids) -> Path:
    model = io.BytesIO()
    lines = [line for doc in stdlib_docs(10) for line in doc.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=500,
                                   model_type="unigram", minloglevel=2, **ids)
    path.write_bytes(model.getvalue())
    return path


def test_t5_like_model_gets_t5_sentinels_appended(tmp_path):
    path = foreign_model(tmp_path / "t5.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    tok = load_tokenizer(str(path))
    base = 500
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.sentinel_ids[0] == base + 99 and tok.sentinel_ids[99] == base  # T5: <extra_id_0> is last
    assert tok.mask_id == base + 100 and tok.bos_id == base + 101 and tok.vocab_size == base + 102
    assert tok.id_to_piece(base + 99) == "<extra_id_0>" and tok.id_to_piece(tok.mask_id) == "<mask>"
    ids = tok.encode("import os") + [tok.sentinel_ids[0], tok.sentinel_ids[1]]
    assert tok.decode(ids) == "import os<extra_id_0><extra_id_1>"


def test_llama_like_model_without_pad_pads_with_unk(tmp_path):
    path = foreign_model(tmp_path / "llama.model", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    tok = load_tokenizer(str(path))
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 0, 1, 2)
    assert tok.vocab_size == 500 + 101 and len(set(tok.sentinel_ids)) == 100


def test_a_model_with_pad_elsewhere_is_refused(tmp_path):
    path = foreign_model(tmp_path / "pad3.model", unk_id=0, bos_id=1, eos_id=2, pad_id=3)
    with pytest.raises(UserError, match=r"pad.* is id 3; chinchax needs pad id 0"):
        load_tokenizer(str(path))


def test_bad_tokenizer_specs(tmp_path):
    with pytest.raises(UserError, match=r"no such file.*chinchax data tokenizer"):
        load_tokenizer(str(tmp_path / "missing.model"))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(UserError, match=r"junk\.model: not a SentencePiece model"):
        load_tokenizer(str(junk))
    with pytest.raises(UserError, match=r"expected 'byte', 'spm:PATH'"):
        load_tokenizer("gpt2")
    with pytest.raises(UserError, match=r"vocab_size 300: must exceed 361"):
        train_sentencepiece(["text"], tmp_path / "x.model", vocab_size=300)
    with pytest.raises(UserError, match=r"model_type 'word'"):
        train_sentencepiece(["text"], tmp_path / "x.model", vocab_size=1000, model_type="word")
    with pytest.raises(UserError, match=r"could not train a 50000-piece unigram model"):
        train_sentencepiece(["tiny text only"] * 3, tmp_path / "x.model", vocab_size=50000, model_type="unigram")
    assert not (tmp_path / "x.model").exists()


def test_check_vocab_fits():
    check_vocab_fits(ByteTokenizer(), 384)
    check_vocab_fits(ByteTokenizer(), 361)
    with pytest.raises(UserError, match=r"model's vocab_size 256 is smaller than the tokenizer's 361"):
        check_vocab_fits(ByteTokenizer(), 256)


def test_sentinel_pieces_are_ordered():
    assert SENTINEL_PIECES[:3] == ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>") and len(SENTINEL_PIECES) == 100
