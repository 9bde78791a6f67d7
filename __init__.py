"""chinchax: language-model scaling studies in JAX/Flax.

The repository root is this package: `chinchax.model`, `chinchax.data`, `chinchax.train`,
`chinchax.evaluation`, `chinchax.scaling` and `chinchax.experiments` are its folders.
"""

__version__ = "0.1.0"
