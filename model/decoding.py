"""Generation for decoder-only and encoder-decoder transformers: a sampling loop around the model's KV cache.

    result = generate(model, [[bos, 5, 6], [bos, 7]], SamplingConfig(max_new_tokens=16, top_p=0.9))
    result.tokens   # [B, N] int32, pad_id after a row stopped;  result.lengths  # [B] tokens emitted

How it works
- The forward pass is the model's own (`Transformer.__call__` with `cache=`, see transformer.py): the
  cache holds keys (RoPE applied) and values of every self-attention layer, `k`, `v` [layers, B, S, G, K]
  with logical axes CACHE_AXES, S = P + max_new_tokens, and an encoder-decoder's cross-attention keys and
  values of the encoder output, computed once at prefill.
- Prompts of different lengths are LEFT-padded to a common width P, so every row writes the same cache slot
  at every step; left padding is segment 0 (masked out like padding in training) and each row's positions
  start at 0 on its first real token (`positions = slot - pad`). A row's result is therefore the same as
  decoding it alone.
- The prompt runs once (prefill, logits of its last position only), then one token per step inside a
  `lax.while_loop`, all under one `jax.jit`. A prefix-LM decoder sees its prompt bidirectionally (it was
  trained with the input as a bidirectional prefix) and the rest causally.
- Sampling: greedy (temperature 0), temperature, top-k, top-p (nucleus); filters apply in the order
  temperature -> top-k -> top-p (as HF transformers does); seeded with a JAX key folded per step. Sampling
  settings, seed and stop tokens are traced arrays: changing them never recompiles (shapes do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax.errors import UserError
from chinchax.model.transformer import CACHE_AXES

__all__ = ["CACHE_AXES", "GenerationResult", "SamplingConfig", "generate", "init_cache", "left_pad", "right_pad"]


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


def init_cache(model, batch: int, length: int) -> dict:
    """The model's empty KV cache (`Transformer.init_cache`): `k`, `v` [layers, B, S, G, K] and per-slot state."""
    return model.init_cache(batch, length)


def _chunk_inputs(model, tokens_BL, *, index, pads_B, prefix_end) -> dict:
    """The model's batch keys for L new tokens at cache slots index..index+L-1 of left-padded rows: left
    padding is segment 0 (no real token sees it), positions start at 0 on each row's first real token, and
    slots in [pads_B, prefix_end) form the bidirectional prefix of a prefix-LM decoder."""
    slots_1L = (index + jnp.arange(tokens_BL.shape[1]))[None, :]
    real_BL = slots_1L >= pads_B[:, None]
    inputs = {
        "segment_ids": real_BL.astype(jnp.int32),
        "positions": jnp.maximum(slots_1L - pads_B[:, None], 0).astype(jnp.int32),
    }
    if model.cfg.attention == "prefix":
        inputs["prefix_mask"] = real_BL & (slots_1L < prefix_end)
    return inputs


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
    chunk = partial(_chunk_inputs, model, pads_B=pads_B, prefix_end=jnp.where(prefix, P, 0))
    # Prefill: the prompt (and the encoder, whose keys and values the cache keeps); logits of its last slot only.
    hidden_BPD, cache = model.hidden_states(
        tokens_BP,
        **chunk(tokens_BP, index=0),
        encoder_inputs=encoder_inputs_BS,
        encoder_segment_ids=encoder_segment_ids_BS,
        cache=init_cache(model, B, P + N),
        cache_index=0,
    )
    logits_B1V = model.logits(hidden_BPD[:, -1:])
    stop_T, key = sampling["stop_tokens"], sampling["key"]
    V = logits_B1V.shape[-1]

    def cond(model_carry):
        carry = model_carry[1]
        return (carry["i"] < N) & ~jnp.all(carry["done"])

    # nnx.while_loop carries the model through the loop: the layer scan (an nnx transform) inside the body
    # refuses a module closed over from the enclosing trace.
    def body(model_carry):
        model, carry = model_carry
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
        token_B1 = token_B[:, None]
        logits_B1V, out["cache"] = model(token_B1, **chunk(token_B1, index=P + i), cache=carry["cache"], cache_index=P + i)
        out["logits"] = logits_B1V[:, 0]
        return model, out

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
    _, carry = nnx.while_loop(cond, body, (model, carry))
    return carry["tokens"], carry["lengths"], carry.get("step_logits")


def _sampling_arrays(cfg: SamplingConfig) -> dict:
    """Sampling settings as arrays, so changing them (or the seed) reuses the compiled loop. Stop tokens
    are padded with -1 to a multiple of 8, at least 8, so none and up to 8 share a shape (recompiles only
    past 8, 16, ... stop tokens)."""
    n_stop = max(1, -(-len(cfg.stop_tokens) // 8)) * 8
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
    if prefix and mcfg.attention != "prefix":
        raise UserError(
            f"prefix=True reads the prompt bidirectionally, which only a prefix-LM decoder was trained for "
            f"(model.attention={mcfg.attention!r}); leave prefix unset or use a model with model.attention=prefix"
        )
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
