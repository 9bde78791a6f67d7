"""Prompt tuning (Lester et al. 2021): P trainable vectors in front of the input embeddings, the model frozen.

The soft prompt is initialised from P rows of the vocabulary embedding table (the paper's "sampled
vocabulary" initialisation; it samples among the 5,000 most frequent tokens, which a run dir does not
record, so all rows are candidates here). The forward pass with the prompt is the model's
(`chinchax.model.soft_prompt.PromptedModel`).
"""

from __future__ import annotations

import numpy as np

from chinchax.errors import UserError


def check_model(cfg) -> None:
    if cfg.variant == "encoder_only":
        raise UserError(
            "finetune.method=prompt_tuning needs a decoder or an encoder-decoder (the prompt conditions "
            "generation); this base is encoder_only: use finetune.method=lora or full"
        )


def init_prompt(embedding_VD: np.ndarray, spec) -> np.ndarray:
    rows = np.random.default_rng(spec.seed).choice(embedding_VD.shape[0], spec.length, replace=False)
    return np.asarray(embedding_VD[rows], np.float32)
