"""Where a policy stands: gold score, proxy score and KL from the initial policy, on fresh samples.

KL(pi || pi_init) is estimated per sampled completion as the sum over its tokens of log pi - log pi_init (k1;
unbiased, since the completions are drawn from pi), averaged over prompts; Gao et al.'s distance is
d = sqrt(KL). Best-of-n has its KL in closed form (`align_losses.best_of_n_kl`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from chinchax.posttrain import policy


def sequence_kl(model, ref_model, rows: dict) -> np.ndarray:
    """Per-row sum over the completion of log pi - log pi_ref (k1), [B]."""
    logp, mask = policy.model_token_logps(model, rows)
    ref, _ = policy.model_token_logps(ref_model, rows)
    return np.asarray(((logp - ref) * mask).sum(axis=1), np.float64)


def measure(
    model,
    ref_model,
    tokenizer,
    prompts: Sequence[str],
    *,
    gold: Callable[[Sequence[str], Sequence[str]], np.ndarray],
    proxy=None,  # a reward.LoadedReward, or None
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    from chinchax.posttrain import reward

    texts, rows, scored = policy.generate_rows(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )
    kl = sequence_kl(model, ref_model, rows)
    gold_B = gold(prompts, texts)
    out = {
        "gold": float(gold_B.mean()),
        "gold_se": float(gold_B.std(ddof=1) / math.sqrt(len(gold_B))) if len(gold_B) > 1 else float("nan"),
        "kl": float(kl.mean()),
        "kl_se": float(kl.std(ddof=1) / math.sqrt(len(kl))) if len(kl) > 1 else float("nan"),
        "mean_length": float(rows["completion"].sum(axis=1).mean()),
    }
    out["d"] = math.sqrt(max(out["kl"], 0.0))
    if proxy is not None:
        policy.check_same_vocabulary(tokenizer, proxy.tokenizer, what="proxy reward model")
        out["proxy"] = float(reward.score_encoded(proxy.model, scored, batch_size=len(prompts)).mean())
    return out
