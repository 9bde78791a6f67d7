"""A model with a soft prompt (Lester et al. 2021): P vectors in front of the input embeddings, the model
itself unchanged.

Decoders get the prompt in front of their input; encoder-decoders in front of the encoder's input (the
paper's T5 setting). The forward pass is the model's own pieces (`embed`, the stacks, `logits`); the
prompt's logits are dropped. Prompt tuning (posttrain/prompt_tuning.py) trains the prompt; loading a
prompt-tuned run (evaluation/run_loading.py) gives back `SoftPrompted`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _extend(x_BL, P: int, fill):
    return None if x_BL is None else jnp.concatenate([jnp.broadcast_to(fill, (x_BL.shape[0], P)).astype(x_BL.dtype), x_BL], 1)


def _prompt_inputs(model, prompt_PD, tokens_BL, positions_BL, segment_ids_BL, prefix_mask_BL=None, token_types_BL=None):
    """Embeddings, positions, segment ids and prefix mask with the P prompt positions in front."""
    B, L = tokens_BL.shape
    P = prompt_PD.shape[0]
    x_BLD = model.embed(tokens_BL, token_types_BL)
    x_BPD = jnp.broadcast_to(prompt_PD.astype(x_BLD.dtype), (B, P, prompt_PD.shape[1]))
    x_BLD = jnp.concatenate([x_BPD, x_BLD], axis=1)
    if positions_BL is None:
        positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    positions_BL = jnp.concatenate([jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P)), positions_BL + P], 1)
    # the prompt belongs to the row's first segment (one example per row: data.packing=none)
    segments = None if segment_ids_BL is None else _extend(segment_ids_BL, P, segment_ids_BL[:, :1])
    prefix = None if prefix_mask_BL is None else _extend(prefix_mask_BL, P, True)
    return x_BLD, positions_BL, segments, prefix


class PromptedModel:
    """`model` with a soft prompt: called like the Transformer, returns logits of the real positions only.
    A plain object, so that a traced step can wrap the model with the prompt it trains."""

    def __init__(self, model, prompt_PD: jax.Array):
        self.model, self.prompt_PD = model, prompt_PD

    def train(self):
        self.model.train()

    def eval(self):
        self.model.eval()

    def __call__(self, inputs, *, segment_ids=None, positions=None, prefix_mask=None, token_types=None,
                 encoder_inputs=None, encoder_segment_ids=None, encoder_positions=None):
        m, P = self.model, self.prompt_PD.shape[0]
        if m.cfg.variant == "encoder_decoder":
            x, pos, seg, _ = _prompt_inputs(m, self.prompt_PD, encoder_inputs, encoder_positions, encoder_segment_ids)
            encoder_BSD = m.encoder(x, positions_BL=pos, segment_ids_BL=seg)
            hidden = m.decoder(
                m.embed(inputs, token_types),
                positions_BL=positions if positions is not None else
                jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape),
                segment_ids_BL=segment_ids,
                encoder_BSD=encoder_BSD,
                encoder_segment_ids_BS=seg,
            )
            return m.logits(hidden)
        x, pos, seg, prefix = _prompt_inputs(m, self.prompt_PD, inputs, positions, segment_ids, prefix_mask, token_types)
        hidden = m.decoder(x, positions_BL=pos, segment_ids_BL=seg, prefix_mask_BL=prefix)
        return m.logits(hidden)[:, P:]


class SoftPrompted(nnx.Module):
    """A model with a trained soft prompt, as an nnx module (so a scorer can split and jit it)."""

    def __init__(self, model, prompt_PD):
        self.model = model
        self.cfg = model.cfg
        self.prompt_PD = nnx.Variable(jnp.asarray(prompt_PD))

    def __call__(self, inputs, **kwargs):
        return PromptedModel(self.model, self.prompt_PD[...])(inputs, **kwargs)
