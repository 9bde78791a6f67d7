"""Training compute as the scaling laws count it, C = 6·N·D: the one place the 6 is written.

A parameter costs 6 FLOPs per token trained on: 2 in the forward pass (a multiply and an add) and 4 in the
backward pass (gradients with respect to the activations and to the weight; Kaplan et al. 2020 section 2.1,
Chinchilla appendix F). Attention's own work (the L x L scores) is left out, so C depends on N and D alone.
Which N is the caller's convention: all parameters (Chinchilla, `n_convention: total`) or the non-embedding
ones (Kaplan). The detailed matmul count that MFU divides by is model/counting.py's `flops_per_token`.

Plain arithmetic on numbers, numpy arrays or pandas columns (it imports nothing), at the bottom of the
package: the parameter counter, the sweep planner, the fits, the plots and the reports all import it.
"""

from __future__ import annotations

import math

FLOPS_PER_PARAM_TOKEN = 6.0


def training_flops(n_params, n_tokens):
    """C = 6·N·D: the compute of training N parameters on D tokens."""
    return FLOPS_PER_PARAM_TOKEN * n_params * n_tokens


def tokens_for_budget(flops, n_params):
    """D = C / (6·N): the tokens N parameters train on within `flops`."""
    return flops / (FLOPS_PER_PARAM_TOKEN * n_params)


def params_at_ratio(flops, tokens_per_param=1.0):
    """N = sqrt(C / (6·r)): the size that trains on r tokens per parameter (D = r·N) within `flops`
    (Chinchilla's compute-optimal r is about 20; r = 1 is where N = D)."""
    n_squared = flops / (FLOPS_PER_PARAM_TOKEN * tokens_per_param)
    # a numpy array's ** 0.5 is np.sqrt; no numpy import here keeps `chinchax --help` fast
    return math.sqrt(n_squared) if isinstance(n_squared, int | float) else n_squared**0.5
