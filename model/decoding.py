"""KV-cache decoding for decoder-only and encoder-decoder transformers, built from the model's public pieces.

    result = generate(model, [[bos, 5, 6], [bos, 7]], SamplingConfig(max_new_tokens=16, top_p=0.9))
    result.tokens   # [B, N] int32, pad_id after a row stopped;  result.lengths  # [B] tokens emitted

How it works
- Prompts of different lengths are LEFT-padded to a common width P, so every row writes the same cache slot
  at every step; each row's positions start at 0 on its first real token (`positions = index - pad`), and
  padded keys are masked out. A row's result is therefore the same as decoding it alone.
- The cache holds keys (RoPE already applied) and values of every self-attention layer, stacked over layers
  like the parameters: `k`, `v` of shape [layers, B, S, G, K] with logical axes
  (`layers`, `batch`, `length`, `kv_heads`, `kv`), S = P + max_new_tokens. An encoder-decoder also caches the
  cross-attention keys/values of the encoder output once, `cross_k`/`cross_v` [layers, B, S_enc, G, K].
- One function (`forward_chunk`) runs L new tokens against the cache: the prompt (prefill, L = P, logits of
  its last position only) and then one token per step (L = 1) inside a `lax.while_loop`, all under one
  `jax.jit`. A prefix-LM decoder sees its prompt bidirectionally (it was trained with the input as a
  bidirectional prefix) and the rest causally.
- Sampling: greedy (temperature 0), temperature, top-k, top-p (nucleus); filters apply in the order
  temperature -> top-k -> top-p (as HF transformers does); seeded with a JAX key folded per step. Sampling
  settings, seed and stop tokens are traced arrays: changing them never recompiles (shapes do).

This file mirrors `Stack.__call__`/`Block.__call__`/`Attention.__call__` of `transformer.py`/`attention.py`
step by step (their tests: cached == uncached to float precision for every position encoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax.errors import UserError
from chinchax.model.attention import alibi_bias

CACHE_AXES = ("layers", "batch", "length", "kv_heads", "kv")


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy (argmax); otherwise logits / temperature are sampled
    top_k: int = 0  # 0 = off; else sample only among the k most likely tokens
    top_p: float = 1.0  # 1 = off; else the smallest set of most likely tokens whose mass reaches top_p
    stop_tokens: tuple[int, ...] = ()  # a row stops after emitting one of these (it is kept in the output)
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> SamplingConfig:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise UserError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise UserError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")
        return self


@dataclass(frozen=True)
class GenerationResult:
    tokens: np.ndarray  # [B, N] generated tokens, pad_id after a row stopped
    lengths: np.ndarray  # [B] number of generated tokens of each row, stop token included
    step_logits: np.ndarray | None = None  # [B, N, V] float32 logits each token was drawn from (if asked)

    def as_lists(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths, strict=True)]


# --- sampling -------------------------------------------------------------------------------------------


def filter_logits(logits_BV: jax.Array, *, temperature, top_k, top_p) -> jax.Array:
    """Scaled logits with everything outside the top-k set and the nucleus set to -inf.

    `temperature` (> 0), `top_k` (0 = off) and `top_p` (1 = off) may be traced scalars: one compiled
    decoding loop serves every sampling setting.
    """
    logits_BV = logits_BV.astype(jnp.float32) / temperature
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    V = logits_BV.shape[-1]
    # top-k: drop everything below the k-th largest logit.
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth_B1 = jax.lax.dynamic_slice_in_dim(sorted_BV, k - 1, 1, axis=-1)
    sorted_BV = jnp.where(sorted_BV < kth_B1, -jnp.inf, sorted_BV)
    # top-p: keep a token while the mass of the tokens more likely than it is below top_p, i.e. the
    # smallest set whose mass reaches top_p (always at least the most likely token); on the top-k survivors.
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    n_keep_B1 = jnp.maximum(jnp.sum(mass_before_BV < top_p, axis=-1, keepdims=True), 1)
    n_keep_B1 = jnp.where(top_p >= 1.0, V, n_keep_B1)  # off means off, whatever the rounding of the cumsum
    threshold_B1 = jnp.take_along_axis(sorted_BV, n_keep_B1 - 1, axis=-1)
    threshold_B1 = jnp.maximum(threshold_B1, kth_B1)
    return jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)


def sample_logits(logits_BV: jax.Array, key: jax.Array, *, temperature, top_k, top_p) -> jax.Array:
    """Next tokens [B]: argmax where temperature == 0, else a draw from the filtered distribution."""
    safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
    filtered_BV = filter_logits(logits_BV, temperature=safe_temperature, top_k=top_k, top_p=top_p)
    sampled_B = jax.random.categorical(key, filtered_BV, axis=-1)
    return jnp.where(temperature > 0, sampled_B, jnp.argmax(logits_BV, axis=-1)).astype(jnp.int32)


# --- the model, one chunk of tokens at a time -----------------------------------------------------------


def _residual(cfg, x_BLD, norm, branch):
    if cfg.norm_position == "pre":
        out = x_BLD + branch(norm(x_BLD))
    else:
        out = norm(x_BLD + branch(x_BLD))
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


def _scan_layers(blocks, fn, carry, *xs):
    """lax.scan over a stacked `Block`: fn(block_of_one_layer, carry, *layer_slices) -> (carry, outputs)."""
    graphdef, state = nnx.split(blocks)

    def body(carry, layer):
        block_state, *slices = layer
        return fn(nnx.merge(graphdef, block_state), carry, *slices)

    return jax.lax.scan(body, carry, (state, *xs))


def init_cache(model, batch: int, length: int) -> dict:
    cfg = model.cfg
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    shape = (cfg.n_layers, batch, length, cfg.kv_heads, cfg.head_size)
    zeros = nn.with_logical_constraint(jnp.zeros(shape, dtype), CACHE_AXES)
    return {"k": zeros, "v": zeros}


def encode_for_decoding(model, cache: dict, encoder_inputs_BS, encoder_segment_ids_BS) -> dict:
    """Run the encoder once and cache every decoder layer's cross-attention keys and values."""
    encoder_BSD = model.encode(encoder_inputs_BS, encoder_segment_ids_BS=encoder_segment_ids_BS)

    def layer(block, carry, *_):
        k_BSGK, v_BSGK = block.cross_attention.project_kv(encoder_BSD, None)
        return carry, (k_BSGK, v_BSGK)

    _, (cross_k, cross_v) = _scan_layers(model.decoder.blocks, layer, None)
    return {
        **cache,
        "cross_k": nn.with_logical_constraint(cross_k, CACHE_AXES),
        "cross_v": nn.with_logical_constraint(cross_v, CACHE_AXES),
        "encoder_segment_ids": encoder_segment_ids_BS,
    }


def forward_chunk(model, cache: dict, tokens_BL, *, index, pads_B, prefix_end=0, last_only: bool = False):
    """Logits [B, L, V] of L new tokens written at cache slots index..index+L-1, and the updated cache.
    `last_only`: logits of the last new token only, [B, 1, V] (a prefill needs no more: saves P x V).

    `pads_B`: left padding of each row (its first real token sits at slot pads_B). Slots in
    [pads_B, prefix_end) form a bidirectional prefix (prefix-LM decoders; 0 = none; may be traced).
    """
    cfg, stack = model.cfg, model.decoder
    B, L = tokens_BL.shape
    S = cache["k"].shape[2]
    q_index_L = index + jnp.arange(L)
    k_index_S = jnp.arange(S)
    positions_BL = jnp.maximum(q_index_L[None, :] - pads_B[:, None], 0).astype(jnp.int32)
    kv_positions_BS = jnp.maximum(k_index_S[None, :] - pads_B[:, None], 0).astype(jnp.int32)

    x_BLD = model.embed(tokens_BL)
    if cfg.position == "learned":
        x_BLD = x_BLD + stack.position_embedding_PD[...][positions_BL + cfg.position_offset].astype(x_BLD.dtype)
    if cfg.embedding_norm:
        x_BLD = stack.embed_norm(x_BLD)
    x_BLD = stack.embed_dropout(x_BLD)

    # Which cached slot each new token may see: written, real (not left padding), causal, or both in the prefix.
    key_real_BS = (k_index_S[None, :] >= pads_B[:, None]) & (k_index_S[None, :] < index + L)
    allowed_BLS = jnp.broadcast_to(k_index_S[None, None, :] <= q_index_L[None, :, None], (B, L, S))
    q_prefix_BL = (q_index_L[None, :] >= pads_B[:, None]) & (q_index_L[None, :] < prefix_end)
    k_prefix_BS = key_real_BS & (k_index_S[None, :] < prefix_end)
    allowed_BLS = allowed_BLS | (q_prefix_BL[:, :, None] & k_prefix_BS[:, None, :])
    allowed_BLS = allowed_BLS & key_real_BS[:, None, :]
    # A padding query sees only itself, so no softmax row is empty.
    allowed_BLS = allowed_BLS | (k_index_S[None, None, :] == q_index_L[None, :, None])
    mask_B1LS = allowed_BLS[:, None]

    bias_BHLS = None
    if cfg.position == "t5_relative":
        bias_BHLS = stack.relative_bias(positions_BL, kv_positions_BS)
    elif cfg.position == "alibi":
        bias_BHLS = alibi_bias(positions_BL, kv_positions_BS, cfg.n_heads)

    cross = "cross_k" in cache
    cross_mask_B1LS = None
    if cross:
        cross_mask_B1LS = jnp.broadcast_to((cache["encoder_segment_ids"] != 0)[:, None, None, :], (B, 1, L, cache["cross_k"].shape[2]))

    def layer(block, x_BLD, k_BSGK, v_BSGK, cross_k_BSGK, cross_v_BSGK):
        attn = block.self_attention
        new = {}

        def self_attention(h_BLD):
            q_BLHK = attn.project_q(h_BLD, positions_BL)
            k_new_BLGK, v_new_BLGK = attn.project_kv(h_BLD, positions_BL)
            new["k"] = jax.lax.dynamic_update_slice(k_BSGK, k_new_BLGK.astype(k_BSGK.dtype), (0, index, 0, 0))
            new["v"] = jax.lax.dynamic_update_slice(v_BSGK, v_new_BLGK.astype(v_BSGK.dtype), (0, index, 0, 0))
            return attn.attend_and_project(q_BLHK, new["k"], new["v"], mask_B1LS=mask_B1LS, bias_BHLS=bias_BHLS)

        x_BLD = _residual(cfg, x_BLD, block.self_attention_norm, self_attention)
        if cross:
            cross_attn = block.cross_attention
            x_BLD = _residual(
                cfg,
                x_BLD,
                block.cross_attention_norm,
                lambda h: cross_attn.attend_and_project(
                    cross_attn.project_q(h, None), cross_k_BSGK, cross_v_BSGK, mask_B1LS=cross_mask_B1LS, bias_BHLS=None
                ),
            )
        x_BLD = _residual(cfg, x_BLD, block.mlp_norm, block.mlp)
        return x_BLD, (new["k"], new["v"])

    cross_kv = (cache["cross_k"], cache["cross_v"]) if cross else (None, None)
    x_BLD, (k, v) = _scan_layers(stack.blocks, layer, x_BLD, cache["k"], cache["v"], *cross_kv)
    if last_only:
        x_BLD = x_BLD[:, -1:]
    if cfg.final_norm:
        x_BLD = stack.final_norm(x_BLD)
    cache = {**cache, "k": nn.with_logical_constraint(k, CACHE_AXES), "v": nn.with_logical_constraint(v, CACHE_AXES)}
    return model.logits(x_BLD), cache


# --- the jitted generation loop ---------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "pad_id", "return_logits"))
def _generate(
    graphdef,
    state,
    tokens_BP,
    pads_B,
    encoder_inputs_BS,
    encoder_segment_ids_BS,
    sampling: dict,
    prefix,
    *,
    max_new_tokens: int,
    pad_id: int,
    return_logits: bool,
):
    model = nnx.merge(graphdef, state)
    model.eval()
    B, P = tokens_BP.shape
    N = max_new_tokens
    cache = init_cache(model, B, P + N)
    if encoder_inputs_BS is not None:
        cache = encode_for_decoding(model, cache, encoder_inputs_BS, encoder_segment_ids_BS)
    step = partial(forward_chunk, model, pads_B=pads_B, prefix_end=jnp.where(prefix, P, 0))
    logits_B1V, cache = step(cache, tokens_BP, index=0, last_only=True)
    stop_T, key = sampling["stop_tokens"], sampling["key"]
    V = logits_B1V.shape[-1]

    def cond(carry):
        return (carry["i"] < N) & ~jnp.all(carry["done"])

    def body(carry):
        i = carry["i"]
        token_B = sample_logits(
            carry["logits"],
            jax.random.fold_in(key, i),
            temperature=sampling["temperature"],
            top_k=sampling["top_k"],
            top_p=sampling["top_p"],
        )
        token_B = jnp.where(carry["done"], pad_id, token_B)
        out = {
            "i": i + 1,
            "tokens": carry["tokens"].at[:, i].set(token_B),
            "lengths": carry["lengths"] + (~carry["done"]).astype(jnp.int32),
            "done": carry["done"] | jnp.isin(token_B, stop_T),
        }
        if return_logits:
            out["step_logits"] = carry["step_logits"].at[:, i].set(carry["logits"])
        # (the last iteration's forward is not needed; skipping it would cost a lax.cond per step)
        logits_B1V, out["cache"] = step(carry["cache"], token_B[:, None], index=P + i)
        out["logits"] = logits_B1V[:, 0]
        return out

    carry = {
        "i": jnp.int32(0),
        "tokens": jnp.full((B, N), pad_id, jnp.int32),
        "lengths": jnp.zeros((B,), jnp.int32),
        "done": jnp.zeros((B,), bool),
        "cache": cache,
        "logits": logits_B1V[:, 0],
    }
    if return_logits:
        carry["step_logits"] = jnp.zeros((B, N, V), jnp.float32)
    carry = jax.lax.while_loop(cond, body, carry)
    return carry["tokens"], carry["lengths"], carry.get("step_logits")


def _sampling_arrays(cfg: SamplingConfig) -> dict:
    """Sampling settings as arrays, so changing them (or the seed) reuses the compiled loop. Stop tokens
    are padded with -1 to a multiple of 8 (recompiles only past 8, 16, ... stop tokens)."""
    n_stop = -(-len(cfg.stop_tokens) // 8) * 8
    stop = np.full((n_stop,), -1, np.int32)
    stop[: len(cfg.stop_tokens)] = cfg.stop_tokens
    return {
        "temperature": jnp.float32(cfg.temperature),
        "top_k": jnp.int32(cfg.top_k),
        "top_p": jnp.float32(cfg.top_p),
        "stop_tokens": jnp.asarray(stop),
        "key": jax.random.key(cfg.seed),
    }


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths -> ([B, P] left-padded int32, [B] number of pads)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise UserError("every prompt needs at least one token (decoders: start with the BOS token)")
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    for b, row in enumerate(rows):
        tokens[b, width - len(row) :] = row
    return tokens, np.asarray([width - len(r) for r in rows], np.int32)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows -> ([B, S] right-padded int32, [B, S] segment ids: 1 on tokens, 0 on padding)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise UserError("every encoder input needs at least one token")
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    for b, row in enumerate(rows):
        tokens[b, : len(row)] = row
        segments[b, : len(row)] = 1
    return tokens, segments


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig = SamplingConfig(),
    *,
    encoder_inputs: Sequence[Sequence[int]] | None = None,
    prefix: bool | None = None,
    pad_id: int = 0,
    return_logits: bool = False,
) -> GenerationResult:
    """Continue each prompt (decoder token ids, BOS included) with up to `cfg.max_new_tokens` tokens.

    Encoder-decoder models also take `encoder_inputs` (one row per prompt; the prompt is then usually
    just the decoder start token). `prefix` (default: the model is a prefix-LM decoder) makes the prompt
    a bidirectional prefix.
    """
    cfg = cfg.validate()
    mcfg = model.cfg
    if mcfg.variant == "encoder_only":
        raise UserError(
            f"model {mcfg.name!r} is encoder-only: it has no decoder to generate with; "
            "score it with `chinchax eval` (masked scoring) instead"
        )
    if (encoder_inputs is None) != (mcfg.variant != "encoder_decoder"):
        raise UserError(
            "encoder_inputs are required for an encoder_decoder model and only for one "
            f"(model.variant={mcfg.variant!r})"
        )
    tokens_BP, pads_B = left_pad(prompts, pad_id)
    longest = int((tokens_BP.shape[1] - pads_B).max()) + cfg.max_new_tokens
    if mcfg.position == "learned" and longest > mcfg.max_len:
        raise UserError(
            f"prompt plus max_new_tokens reaches {longest} positions but the model's learned position table "
            f"has model.max_len={mcfg.max_len}; shorten the prompt or lower max_new_tokens"
        )
    encoder_BS = segments_BS = None
    if encoder_inputs is not None:
        if len(encoder_inputs) != len(prompts):
            raise UserError(f"{len(encoder_inputs)} encoder inputs for {len(prompts)} prompts; give one per prompt")
        encoder_BS, segments_BS = right_pad(encoder_inputs, pad_id)
        if mcfg.position == "learned" and encoder_BS.shape[1] > mcfg.max_len:
            raise UserError(
                f"an encoder input of {encoder_BS.shape[1]} tokens is longer than the model's learned position "
                f"table (model.max_len={mcfg.max_len}); shorten it"
            )
    prefix = mcfg.attention == "prefix" if prefix is None else prefix
    graphdef, state = nnx.split(model)
    tokens, lengths, logits = _generate(
        graphdef,
        state,
        jnp.asarray(tokens_BP),
        jnp.asarray(pads_B),
        None if encoder_BS is None else jnp.asarray(encoder_BS),
        None if segments_BS is None else jnp.asarray(segments_BS),
        _sampling_arrays(cfg),
        jnp.asarray(bool(prefix)),
        max_new_tokens=cfg.max_new_tokens,
        pad_id=pad_id,
        return_logits=return_logits,
    )
    return GenerationResult(
        tokens=np.asarray(tokens), lengths=np.asarray(lengths), step_logits=None if logits is None else np.asarray(logits)
    )
