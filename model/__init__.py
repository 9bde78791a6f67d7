"""The transformer family (Flax NNX). Imports nothing of chinchax but its own config.

Heavy names (Transformer, counting) load on first use, so `chinchax --help` and config code stay fast.
Array names carry their shapes (`x_BLD`, `logits_BLV`): the letters are defined at the top of attention.py.
"""

from chinchax.model.config import ModelConfig

_LAZY = {
    "Transformer": "chinchax.model.transformer",
    "MODEL_INPUT_KEYS": "chinchax.model.transformer",
    "EMBEDDING_PARAM_NAMES": "chinchax.model.transformer",
    "CACHE_AXES": "chinchax.model.transformer",
    "token_cross_entropy": "chinchax.model.losses",
    "count_params": "chinchax.model.counting",
    "flops_per_token": "chinchax.model.counting",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chinchax.model' has no attribute {name!r}")


__all__ = [
    "CACHE_AXES",
    "EMBEDDING_PARAM_NAMES",
    "MODEL_INPUT_KEYS",
    "ModelConfig",
    "Transformer",
    "count_params",
    "flops_per_token",
    "token_cross_entropy",
]
