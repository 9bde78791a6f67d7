"""The transformer family (Flax NNX). Imports nothing of chinchax but its own config."""

from chinchax.model.config import ModelConfig
from chinchax.model.transformer import EMBEDDING_PARAM_NAMES, MODEL_INPUT_KEYS, Transformer

__all__ = ["EMBEDDING_PARAM_NAMES", "MODEL_INPUT_KEYS", "ModelConfig", "Transformer"]
