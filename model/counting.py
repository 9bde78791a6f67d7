"""Parameter and FLOP counts, from the real parameter tree (`nnx.eval_shape`: no memory, any size).

Parameters
    total          every parameter (a tied embedding counted once)
    embedding      vocabulary-sized tables and projections, learned position tables (Kaplan's exclusions)
    non_embedding  total - embedding (Kaplan's N)

FLOPs per token (all per token of the model's main input; for an encoder-decoder the encoder's work on
its `encoder_seq_len` tokens is spread over the decoder's `seq_len` tokens):
    six_n                 6 · N_total                       (Chinchilla's C = 6ND, training)
    six_n_non_embedding   6 · N_non_embedding               (Kaplan's C = 6ND, training)
    kaplan_forward        2 · N_non_embedding + 2 · n_layer · n_ctx · d_attn   (Kaplan eq. 2.2, forward only)
    detailed              forward + backward (3x forward) of every matmul: projections, attention scores and
                          weighted values (halved for causal and prefix-LM self-attention, whose upper triangle
                          is masked work), cross-attention, the MLM transform and the logits. Used for MFU.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from flax import nnx

from chinchax.compute import FLOPS_PER_PARAM_TOKEN
from chinchax.model.config import ModelConfig
from chinchax.model.transformer import EMBEDDING_PARAM_NAMES, Transformer


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int
    non_embedding: int
    shapes: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class FlopCounts:
    six_n: float
    six_n_non_embedding: float
    kaplan_forward: float
    detailed: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def abstract_params(cfg: ModelConfig) -> nnx.State:
    """The parameter tree as shapes only (no memory is allocated)."""
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param)


def count_params(cfg: ModelConfig) -> ParamCounts:
    counts = _count_params(cfg)
    return dataclasses.replace(counts, shapes=dict(counts.shapes))  # the caller's own dict


@functools.lru_cache(maxsize=64)
def _count_params(cfg: ModelConfig) -> ParamCounts:
    # cached: tracing the model takes ~0.06 s, and a sweep worker counts every run's model (and planners
    # count ladders of shapes)
    shapes: dict[str, tuple[int, ...]] = {}
    total = embedding = 0
    for path, leaf in nnx.to_flat_state(abstract_params(cfg)):
        shape = tuple(leaf.get_value().shape)
        size = 1
        for s in shape:
            size *= s
        shapes["/".join(str(p) for p in path)] = shape
        total += size
        if str(path[-1]) in EMBEDDING_PARAM_NAMES:
            embedding += size
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding, shapes=shapes)


def _stack_matmul_flops(cfg: ModelConfig, n_layers: int, q_len: int, kv_len: int, causal: bool, cross_len: int):
    """Forward matmul FLOPs of one stack for one sequence of `q_len` tokens."""
    D, H, G, K, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.d_ff
    projections = 2 * q_len * D * (H * K + 2 * G * K) + 2 * q_len * H * K * D
    scores_and_values = 2 * 2 * q_len * kv_len * H * K
    if causal:
        scores_and_values /= 2
    mlp = 2 * q_len * D * F * (3 if cfg.gated else 2)
    cross = 0.0
    if cross_len:
        cross = 2 * q_len * D * H * K + 2 * cross_len * D * 2 * G * K + 2 * 2 * q_len * cross_len * H * K
        cross += 2 * q_len * H * K * D
    return n_layers * (projections + scores_and_values + mlp + cross)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None, encoder_seq_len: int | None = None) -> FlopCounts:
    """Training FLOPs per token (see the module docstring for each convention)."""
    seq_len = seq_len or cfg.max_len
    counts = count_params(cfg)
    D, V = cfg.d_model, cfg.vocab_size
    forward = 2 * seq_len * D * V + (2 * seq_len * D * D if cfg.mlm_transform else 0)
    if cfg.variant == "encoder_only":
        forward += _stack_matmul_flops(cfg, cfg.n_layers, seq_len, seq_len, False, 0)
    elif cfg.variant == "decoder_only":
        forward += _stack_matmul_flops(cfg, cfg.n_layers, seq_len, seq_len, True, 0)
    else:
        encoder_seq_len = encoder_seq_len or seq_len
        forward += _stack_matmul_flops(cfg, cfg.encoder_layers, encoder_seq_len, encoder_seq_len, False, 0)
        forward += _stack_matmul_flops(cfg, cfg.n_layers, seq_len, seq_len, True, encoder_seq_len)
    d_attn = cfg.n_heads * cfg.head_size
    n_layer = cfg.n_layers + cfg.encoder_layers
    return FlopCounts(
        six_n=FLOPS_PER_PARAM_TOKEN * counts.total,
        six_n_non_embedding=FLOPS_PER_PARAM_TOKEN * counts.non_embedding,
        kaplan_forward=2.0 * counts.non_embedding + 2.0 * n_layer * seq_len * d_attn,
        detailed=3.0 * forward / seq_len,
    )


def describe_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...], tuple]]:
    """(path, shape, logical axis names) for every parameter, for `chinchax model info`."""
    rows = []
    for path, leaf in nnx.to_flat_state(abstract_params(cfg)):
        names = leaf.get_metadata().get("out_sharding") or ()
        rows.append(("/".join(str(p) for p in path), tuple(leaf.get_value().shape), tuple(names)))
    return rows


