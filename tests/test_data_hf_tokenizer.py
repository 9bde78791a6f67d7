"""Hugging Face tokenizer.json files (data/hf_tokenizer.py) against the real client, transformers'
PreTrainedTokenizerFast: the same ids and the same text back, on unicode, long whitespace runs and text that
looks like (or is) a special token; the special-token roles; the BPE trainer and its CLI; bad files."""

from __future__ import annotations

import json
import pickle
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from chinchax.cli import main
from chinchax.data.hf_tokenizer import HFTokenizer, train_bpe
from chinchax.data.tokenizers import load_tokenizer
from chinchax.errors import UserError

transformers = pytest.importorskip("transformers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "naïve café — déjà vu, Ελληνικά κείμενα, русский текст, 日本語のテキスト, emoji 🧪🚀🙂\n",
    "def f(x):\n    return {'a': [1, 2, 3], 'b': x ** 2}\n\n\nclass A:\n\tpass\n",
    *(p.read_text(encoding="utf-8") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:6]),
]
TEXTS = [
    "naïve café — 日本語のテキスト, עברית, e\u0301 combining, 🧪🚀 and a lone \U0001f9ec",
    "def g():\n" + " " * 37 + "return 1\t\t\t\n\n\n\n\n" + "\u00a0\u2003\u3000 odd spaces" + " " * 300 + "end",
    # look-alikes of special tokens: none is one, so they are ordinary text everywhere
    "<|endoftext |> < |endoftext|> <|endof text|> </ s> <s > <pad <MASK> [MASK] <extra_id_100> <extra_id_-1>",
    "",
    "x",
]


@pytest.fixture(scope="module")
def tokenizers_dir(tmp_path_factory):
    """Our BPE (chinchax's specials at 0..104) and a GPT-2-like one (only <|endoftext|>), both trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("tok")
    ours = train_bpe(CORPUS, root / "ours" / "tokenizer.json", vocab_size=700)
    gpt2 = Tokenizer(models.BPE())
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    (root / "gpt2").mkdir()
    gpt2.save(str(root / "gpt2" / "tokenizer.json"))
    return root, ours


def _fast(path):
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))


@pytest.mark.parametrize("which", ["ours", "gpt2"])
def test_ids_and_text_equal_transformers(tokenizers_dir, which):
    root, _ = tokenizers_dir
    path = root / which / "tokenizer.json"
    tok, fast = load_tokenizer(f"hf:{path}"), _fast(path)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == fast(text, add_special_tokens=False)["input_ids"], text
        assert tok.decode(ids) == fast.decode(ids) == text  # lossless, as transformers decodes it
    batch = tok.encode_batch(TEXTS)
    assert [b.dtype for b in batch] == [np.int32] * len(TEXTS)
    assert [b.tolist() for b in batch] == [tok.encode(t) for t in TEXTS]
    assert tok.encode_array(TEXTS[0]).tolist() == tok.encode(TEXTS[0])
    # the spec forms all load the same file
    for spec in (str(path), str(path.parent), f"hf:{path.parent}"):
        assert load_tokenizer(spec).hash == tok.hash


def test_text_spelling_a_special_token_is_that_token_as_in_transformers(tokenizers_dir):
    root, ours = tokenizers_dir
    text = "a</s>b<mask>c<extra_id_7>d<|endoftext|>"
    ids = ours.encode(text)
    assert ids == _fast(root / "ours" / "tokenizer.json")(text, add_special_tokens=False)["input_ids"]
    assert {ours.eos_id, ours.mask_id, ours.sentinel_ids[7]} <= set(ids)
    assert ours.decode(ids) == "ab<mask>c<extra_id_7>d<|endoftext|>"  # eos dropped (as every chinchax tokenizer)
    gpt2 = load_tokenizer(str(root / "gpt2" / "tokenizer.json"))
    assert gpt2.encode("a<|endoftext|>b") == [*gpt2.encode("a"), gpt2.eos_id, *gpt2.encode("b")]
    assert gpt2.decode([gpt2.eos_id, *gpt2.encode("ok"), 10**6]) == "ok\ufffd"  # out of range: U+FFFD


def test_roles_of_the_trained_bpe_match_the_byte_layout(tokenizers_dir):
    _, ours = tokenizers_dir
    assert (ours.pad_id, ours.eos_id, ours.bos_id, ours.unk_id, ours.mask_id) == (0, 1, 2, 3, 4)
    assert ours.sentinel_ids == tuple(range(5, 105))
    assert ours.vocab_size == 700 and ours.describe()["kind"] == "hf"
    assert ours.decode(ours.encode("hi")) == "hi" and not set(ours.encode("".join(TEXTS))) & {0, 1, 2, 3}
    # bits per byte: each id stands for the bytes it encodes
    lengths = ours.token_byte_lengths()
    for text in TEXTS:
        assert lengths[ours.encode(text)].sum() == len(text.encode("utf-8"))
    assert lengths[:105].sum() == 0


def test_a_gpt2_like_tokenizer_pads_with_eos_and_has_no_mask_or_sentinels(tokenizers_dir):
    from chinchax.data.config import DataConfig
    from chinchax.data.pipeline import register_memory_source, train_iterator

    root, ours = tokenizers_dir
    tok = load_tokenizer(str(root / "gpt2" / "tokenizer.json"))
    eot = _fast(root / "gpt2" / "tokenizer.json").convert_tokens_to_ids("<|endoftext|>")
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (eot, eot, eot, eot)
    assert tok.mask_id is None and tok.sentinel_ids == () and tok.vocab_size == 500  # nothing appended
    src = register_memory_source("hf-tok-gpt2", {"train": CORPUS[:3], "validation": CORPUS[:1]})
    for objective, lacks, variant in (("masked_lm", "a mask token", "encoder_only"),
                                      ("span_corruption", "<extra_id_N> sentinels", "encoder_decoder")):
        cfg = DataConfig(source=src, tokenizer=str(root / "gpt2"), seq_len=32, objective=objective).validate()
        with pytest.raises(UserError, match=f"needs {lacks}.*does not have"):
            train_iterator(cfg, tok, global_batch_size=2, variant=variant)
        # the same objective with a tokenizer that has them: batches, with the mask / sentinels in the inputs
        batch = next(train_iterator(cfg, ours, global_batch_size=2, variant=variant))
        key = "inputs" if variant == "encoder_only" else "encoder_inputs"
        assert set(np.unique(batch[key])) & {ours.mask_id, *ours.sentinel_ids}


def test_roles_from_tokenizer_config_and_errors(tokenizers_dir, tmp_path):
    root, _ = tokenizers_dir
    gpt2 = json.loads((root / "gpt2" / "tokenizer.json").read_text())
    d = tmp_path / "named"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(gpt2))
    older = {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
             "single_word": False}  # how transformers 4 wrote a token: both forms are read
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "Ġthe",
                                                         "bos_token": older}))
    tok = load_tokenizer(f"hf:{d}")
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(d))  # transformers reads the same roles
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (fast.eos_token_id, fast.pad_token_id, fast.bos_token_id)
    assert tok.hash != load_tokenizer(str(root / "gpt2")).hash  # the roles are part of the hash
    pickled = pickle.loads(pickle.dumps(tok))
    assert (pickled.hash, pickled.pad_id, pickled.encode(TEXTS[0])) == (tok.hash, tok.pad_id, tok.encode(TEXTS[0]))

    # special_tokens_map.json wins over tokenizer_config.json, in transformers and here
    (d / "special_tokens_map.json").write_text(json.dumps({"pad_token": "Ġa"}))
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(d))
    assert load_tokenizer(f"hf:{d}").pad_id == fast.pad_token_id == fast.convert_tokens_to_ids("Ġa") != tok.pad_id
    (d / "special_tokens_map.json").unlink()

    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(UserError, match=r"names eos_token '<\|im_end\|>', which is not in"):
        load_tokenizer(f"hf:{d}")
    gpt2["added_tokens"] = []
    (tmp_path / "no_eos.json").write_text(json.dumps(gpt2))
    with pytest.raises(UserError, match=r"no_eos.json has no end-of-text token.*tokenizer_config.json"):
        load_tokenizer(str(tmp_path / "no_eos.json"))


@pytest.mark.parametrize(("content", "message"), [
    (b'{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []', "is not valid JSON.*cut short"),
    (b'{"model": "caf\xe9"}', r"is not UTF-8 text \(byte 0xe9\)"),
    (b'{"a": 1}', "is not a Hugging Face tokenizer.json"),
    (b"[1, 2, 3]", "is not a Hugging Face tokenizer.json"),
])
def test_a_bad_file_is_one_user_error_naming_it_and_the_fix(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_tokenizer(f"hf:{path}")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert "chinchax data tokenizer" in str(err.value) or "UTF-8" in str(err.value) or "JSON" in str(err.value)


def test_missing_files_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty holds no tokenizer.json"):
        load_tokenizer(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(UserError, match="missing.json does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))


def test_train_bpe_is_deterministic_and_refuses_bad_sizes(tmp_path):
    a = train_bpe(CORPUS, tmp_path / "a.json", vocab_size=600)
    b = train_bpe(CORPUS, tmp_path / "b.json", vocab_size=600)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes() and a.hash == b.hash
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temporary left
    with pytest.raises(UserError, match="must exceed 361"):
        train_bpe(CORPUS, tmp_path / "c.json", vocab_size=361)
    with pytest.raises(UserError, match="ending in .json"):
        train_bpe(CORPUS, tmp_path / "c.model", vocab_size=600)


def test_cli_trains_a_bpe_that_data_info_reads(tmp_path, capsys):
    code = tmp_path / "code"
    code.mkdir()
    for i, text in enumerate(CORPUS):
        (code / f"f{i}.txt").write_text(text, encoding="utf-8")
    data, out = str(tmp_path / "data"), tmp_path / "tok" / "tokenizer.json"
    assert main(["data", "tokenizer", f"text:{code}", "--data-dir", data, "--kind", "bpe", "--vocab-size", "500",
                 "--out", str(out)]) == 0
    assert f"wrote {out}: byte-level BPE, vocab_size 500" in capsys.readouterr().out
    assert main(["data", "info", f"text:{code}", "--data-dir", data, "--tokenizer", f"hf:{out}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tokenizer_hash"] == HFTokenizer.from_path(out).hash and info["bytes_per_token"] > 1.5
    for argv, message in ((["--kind", "bpe", "--out", str(tmp_path / "x.model")], "ending in .json"),
                          (["--out", str(tmp_path / "x.json"), "--model-type", "unigram"], "--model-type"),
                          (["--kind", "sentencepiece", "--out", str(tmp_path / "x.json")], "is a .model file")):
        assert main(["data", "tokenizer", f"text:{code}", "--data-dir", data, "--vocab-size", "500", *argv]) == 2
        assert message in capsys.readouterr().err
