"""Parameter counts equal the reference implementations exactly; FLOP conventions are consistent."""

import math
import re
import resource
import time
import tracemalloc
from pathlib import Path

import pytest

from chinchax.model.config import ModelConfig, load_model_config
from chinchax.model.counting import count_params, flops_per_token
from chinchax.model.presets import preset_names

ROOT = Path(__file__).resolve().parents[1]

# Totals of the Hugging Face reference models (num_parameters() of the *ForMaskedLM / *LMHeadModel /
# *ForConditionalGeneration classes). BART's final_logits_bias is a buffer there, a parameter here.
REFERENCE_TOTALS = {
    "gpt2": 124_439_808,
    "bert-base": 109_514_298,
    "t5-base": 222_903_552,
    "t5-v1_1-base": 247_577_856,
    "llama2-7b": 6_738_415_616,
    "bloom-560m": 559_214_592,
    "bart-base": 139_420_416 + 50_265,
}


@pytest.mark.parametrize("preset", sorted(REFERENCE_TOTALS))
def test_total_parameters_match_reference(preset):
    assert count_params(load_model_config(preset)).total == REFERENCE_TOTALS[preset]


def test_embedding_split_gpt2():
    counts = count_params(load_model_config("gpt2"))
    # token table 50257x768 (tied: counted once) + position table 1024x768
    assert counts.embedding == 50257 * 768 + 1024 * 768
    assert counts.non_embedding == counts.total - counts.embedding == 85_056_000  # Kaplan's N for GPT-2 small


def test_untied_head_is_embedding_for_llama():
    counts = count_params(load_model_config("llama2-7b"))
    assert counts.embedding == 2 * 32000 * 4096


def test_flop_conventions_gpt2():
    cfg = load_model_config("gpt2")
    counts = count_params(cfg)
    flops = flops_per_token(cfg, 1024)
    assert flops.six_n == 6 * counts.total
    assert flops.six_n_non_embedding == 6 * counts.non_embedding
    assert flops.kaplan_forward == 2 * counts.non_embedding + 2 * 12 * 1024 * 768
    # Detailed count by hand: per layer qkv+o 2·4·D², causal scores+values 2·2·L·D/2, MLP 2·2·D·F; logits 2·D·V.
    D, F, V, L = 768, 3072, 50257, 1024
    forward = 12 * (2 * 4 * D * D + 2 * L * D + 4 * D * F) + 2 * D * V
    assert flops.detailed == pytest.approx(3 * forward, rel=1e-12)


def test_detailed_flops_grow_with_context_and_halve_causal_attention():
    causal = load_model_config("tiny-gpt2")
    bidirectional = causal.replace(variant="encoder_only", attention="bidirectional")
    short, long = flops_per_token(causal, 64).detailed, flops_per_token(causal, 128).detailed
    # attention per token grows linearly with L: 3 · n_layers · 2·L·D (causal half of 4·L·D)
    assert long - short == pytest.approx(3 * 2 * (2 * 64 * 64), rel=1e-12)
    extra = flops_per_token(bidirectional, 128).detailed - flops_per_token(causal, 128).detailed
    assert extra == pytest.approx(3 * 2 * (2 * 128 * 64), rel=1e-12)


def readme_parameter_counts() -> dict[str, int]:
    """{preset: parameters} from the presets table of README.md (its rows end in the parameter count)."""
    rows = re.findall(r"^\| `([\w.-]+)` \|.*\| ([\d,]+) \|$", (ROOT / "README.md").read_text(), re.M)
    return {name: int(count.replace(",", "")) for name, count in rows}


def test_every_preset_counts_without_memory():
    # llama2-7b would need 27 GB materialised; counting is abstract, so every preset counts quickly and small.
    count_params(load_model_config("tiny-llama"))  # imports and jax's start-up are not the counting's memory
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        start = time.perf_counter()
        totals = {"llama2-7b": count_params(load_model_config("llama2-7b")).total}
        seconds = time.perf_counter() - start
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 200e6 and seconds < 5.0, (peak_bytes, seconds)  # measured: 0.2 MB, 0.16 s
    totals |= {name: count_params(load_model_config(name)).total for name in preset_names() if name not in totals}
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kb) * 1024 < 200e6  # no new peak RSS
    assert all(n > 0 for n in totals.values())
    published = readme_parameter_counts()
    assert published == REFERENCE_TOTALS  # the README's table is the reference list
    assert {name: totals[name] for name in published} == published


def test_counts_are_cached_but_each_caller_gets_its_own_shapes():
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, vocab_size=64, max_len=16)
    first = count_params(cfg)
    first.shapes.clear()
    again = count_params(cfg)
    assert again.total == first.total and again.shapes and sum(math.prod(s) for s in again.shapes.values()) == again.total
