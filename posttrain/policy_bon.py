"""Best-of-n sampling against a proxy reward model (Nakano et al. 2021; Gao et al. 2022, section 2.2).

For every prompt, N samples are drawn from the policy once and scored by the proxy and the gold standard.
The gold and proxy score of best-of-n for every n <= N come from the unbiased estimator Gao et al. use: with
the N samples sorted by proxy score, the sample of rank i (1 = lowest) is the best of a uniformly random
n-subset with probability C(i-1, n-1) / C(N, n). Its KL from the policy is log n - (n-1)/n
(`align_losses.best_of_n_kl`), and d = sqrt(KL).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import gammaln

from chinchax.errors import UserError
from chinchax.posttrain import align_losses, policy


def best_of_n_weights(N: int, n: int) -> np.ndarray:
    """[N] probabilities that the sample of proxy rank i (ascending) is the best of a random n-subset."""
    if not 1 <= n <= N:
        raise UserError(f"best-of-n needs 1 <= n <= N samples per prompt; got n={n}, N={N}")
    i = np.arange(1, N + 1)
    log_w = np.full(N, -np.inf)
    ok = i >= n
    log_c = lambda a, b: gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)  # noqa: E731
    log_w[ok] = log_c(i[ok] - 1, n - 1) - log_c(N, n)
    return np.exp(log_w)


def best_of_n_curve(proxy_PN: np.ndarray, gold_PN: np.ndarray, ns: Sequence[int]) -> list[dict]:
    """Rows {n, kl, d, proxy, gold, gold_se} from N scored samples of each of P prompts."""
    P, N = proxy_PN.shape
    order_PN = np.argsort(proxy_PN, axis=1, kind="stable")
    proxy_sorted = np.take_along_axis(proxy_PN, order_PN, axis=1)
    gold_sorted = np.take_along_axis(gold_PN, order_PN, axis=1)
    rows = []
    for n in ns:
        w_N = best_of_n_weights(N, n)
        gold_P = gold_sorted @ w_N
        kl = align_losses.best_of_n_kl(n)
        rows.append({
            "n": int(n), "kl": kl, "d": math.sqrt(kl),
            "proxy": float((proxy_sorted @ w_N).mean()), "gold": float(gold_P.mean()),
            "gold_se": float(gold_P.std(ddof=1) / math.sqrt(P)) if P > 1 else float("nan"),
        })
    return rows


def sample_and_score(
    model, tokenizer, prompts: Sequence[str], *, n_samples: int, proxy, gold: Callable, max_new_tokens: int,
    temperature: float = 1.0, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """(proxy [P, N], gold [P, N], completions [N][P]): N samples of every prompt, each scored."""
    from chinchax.posttrain import reward

    policy.check_same_vocabulary(tokenizer, proxy.tokenizer, what="proxy reward model")
    proxy_NP, gold_NP, texts_NP = [], [], []
    for k in range(n_samples):
        texts, _, scored = policy.generate_rows(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed * 100003 + k
        )
        proxy_NP.append(reward.score_encoded(proxy.model, scored, batch_size=len(prompts)))
        gold_NP.append(gold(prompts, texts))
        texts_NP.append(texts)
    return np.asarray(proxy_NP).T, np.asarray(gold_NP).T, texts_NP


def best_of_n(model, tokenizer, prompts, *, ns: Sequence[int], proxy, gold, max_new_tokens: int,
              temperature: float = 1.0, seed: int = 0) -> list[dict]:
    if not ns or min(ns) < 1:
        raise UserError(f"best-of-n values {list(ns)} must be integers >= 1")
    proxy_PN, gold_PN, _ = sample_and_score(
        model, tokenizer, prompts, n_samples=max(ns), proxy=proxy, gold=gold, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed,
    )
    return best_of_n_curve(proxy_PN, gold_PN, ns)
