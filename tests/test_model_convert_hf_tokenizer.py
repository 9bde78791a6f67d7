"""`chinchax model convert` of a GPT-2 whose HF directory holds a tokenizer.json (no tokenizer.model): the
tokenizer comes along, `chinchax generate` continues prompts greedily with the same ids and the same text as
transformers' `generate`, and `chinchax eval` and `chinchax finetune` run on the converted model.

Two tokenizers, both trained here: ours (`train_bpe`: pad 0, eos 1, bos 2, mask and sentinels reserved) and a
GPT-2-like one with <|endoftext|> as its only special token (pad = bos = eos = unk, no mask, no sentinels). The
model's embedding table holds exactly the tokenizer's ids, as real GPT-2's does (50257 rows, 50257 ids).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chinchax.cli import main  # noqa: E402
from chinchax.data.hf_tokenizer import train_bpe  # noqa: E402
from chinchax.data.tokenizers import load_tokenizer  # noqa: E402
from chinchax.model.convert.hf import converted_tokenizer  # noqa: E402

torch.set_num_threads(1)
T = transformers
CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 4,
    "a converted model reads text like a run; naïve café, 日本語, emoji 🧪\n" * 3,
    "def f(x):\n    return x * 2  # a comment\n\n" * 3,
]
PROMPTS = ["the quick brown", "def f(x):\n    return"]
NEW_TOKENS = 10


def _gpt2_like_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    path.parent.mkdir(parents=True)
    tok.save(str(path))


@pytest.fixture(scope="module", params=["ours", "gpt2_like"])
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    source = root / "tok" / "tokenizer.json"
    if request.param == "ours":
        train_bpe(CORPUS, source, vocab_size=420)
        roles = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    else:
        _gpt2_like_tokenizer(source)
        roles = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}  # GPT-2's tokenizer_config
    fast = T.PreTrainedTokenizerFast(tokenizer_file=str(source), **roles)
    tok = load_tokenizer(str(source))
    torch.manual_seed(0)
    config = T.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                          initializer_range=0.2, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                          pad_token_id=tok.pad_id)  # wide weights: the greedy choice is never a near tie
    hf_model = T.GPT2LMHeadModel(config).eval()
    hf_dir, cx = root / "hf", root / "cx"
    hf_model.save_pretrained(hf_dir)
    fast.save_pretrained(hf_dir)  # tokenizer.json + tokenizer_config.json, as on the hub
    assert not (hf_dir / "tokenizer.model").exists()
    # dropout 0: fine-tuning a converted model with dropout > 0 fails inside nnx (a read-only RNG count), a
    # trainer matter apart from tokenizers
    assert main(["model", "convert", str(hf_dir), str(cx), "dropout=0.0", "attention_dropout=0.0"]) == 0
    return {"hf_model": hf_model, "fast": fast, "tok": tok, "hf_dir": hf_dir, "cx": cx, "root": root}


def test_convert_takes_the_tokenizer_json(converted):
    from chinchax.evaluation.run_loading import load_run

    cx, tok = converted["cx"], converted["tok"]
    assert json.loads((cx / "conversion.json").read_text())["tokenizer"] == "tokenizer.json"
    assert (cx / "tokenizer.json").read_bytes() == (converted["hf_dir"] / "tokenizer.json").read_bytes()
    assert (cx / "tokenizer_config.json").is_file()
    run = load_run(cx)
    assert run.config.data.tokenizer == converted_tokenizer(cx) == f"hf:{cx.absolute() / 'tokenizer.json'}"
    assert (run.tokenizer.eos_id, run.tokenizer.bos_id, run.tokenizer.pad_id) == (tok.eos_id, tok.bos_id, tok.pad_id)
    assert run.config.model.vocab_size == run.tokenizer.vocab_size  # the table holds exactly the tokenizer's ids


def test_greedy_generation_equals_transformers_ids_and_text(converted, capsys):
    hf_model, fast, tok = converted["hf_model"], converted["fast"], converted["tok"]
    argv = ["generate", str(converted["cx"]), "--max-new-tokens", str(NEW_TOKENS), "--json"]
    for prompt in PROMPTS:  # both in one batch: the shorter prompt is left-padded with pad_id
        argv += ["--prompt", prompt]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == PROMPTS
    dropped = {tok.pad_id, tok.eos_id, tok.bos_id}  # what every chinchax decode leaves out
    for prompt, line in zip(PROMPTS, lines, strict=True):
        ids = [tok.bos_id, *fast(prompt, add_special_tokens=False)["input_ids"]]  # chinchax starts with BOS
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_id,
                                    pad_token_id=tok.pad_id, output_scores=True, return_dict_in_generate=True)
        top2 = torch.stack(out.scores)[:, 0].topk(2).values
        assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-3  # no near tie for float error to flip
        new = out.sequences[0, len(ids):].tolist()
        assert line["tokens"] == new
        assert line["completion"] == fast.decode([i for i in new if i not in dropped]) == tok.decode(new)


@pytest.mark.parametrize("converted", ["gpt2_like"], indirect=True)  # pad = eos, no mask: the odd one; once is enough
def test_eval_and_finetune_run_on_it(converted, tmp_path, capsys):
    from chinchax.data.pipeline import register_memory_source
    from chinchax.evaluation.run_loading import load_run

    cx = converted["cx"]
    task = tmp_path / "yesno.jsonl"
    task.write_text("".join(json.dumps({"context": f"Is {i} even?", "choices": [" yes", " no"], "label": i % 2})
                            + "\n" for i in range(4)))
    assert main(["eval", str(cx), "--task", str(task), "--batch-size", "4"]) == 0
    result = json.loads((cx / "eval.json").read_text())["results"]["yesno/0shot"]
    assert result["examples"] == 4 and result["acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)

    src = register_memory_source(f"hf-tok-ft-{cx.parent.name}", {"train": CORPUS * 4, "validation": CORPUS})
    repo = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "ft"
    assert main(["finetune", str(cx), str(repo / "experiments" / "finetune_tiny.yaml"), f"data.source={src}",
                 f"data.tokenizer={converted_tokenizer(cx)}", "data.seq_len=32", "data.eval_batches=1",
                 "trainer.batch_size=4", "trainer.steps=2", "trainer.checkpoint_every=2", "trainer.log_every=1",
                 "trainer.progress_bar=false", "trainer.peak_flops=1e11", "finetune.method=full",
                 f"trainer.run_dir={run_dir}"]) == 0
    capsys.readouterr()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "done" and np.isfinite(run["eval_loss"]) and run["eval_bits_per_byte"] > 0
    assert run["tokenizer_hash"] == load_tokenizer(converted_tokenizer(cx)).hash
    merged = load_run(run_dir)  # the fine-tuned model, with the converted model's tokenizer
    assert merged.tokenizer.hash == run["tokenizer_hash"]
