"""Metric arithmetic: means with standard errors, ROUGE (rouge-score) and BLEU (sacrebleu)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Sample mean and its standard error, std (ddof=1) / sqrt(n), as lm-evaluation-harness reports it.
    For accuracies (0/1 values) this is sqrt(p (1 - p) / (n - 1))."""
    x = np.asarray(values, np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """ROUGE-1/2/L F-measure (x100) per example, the best over its references, then mean and stderr."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per_type: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for prediction, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi(list(refs), prediction)
        for t in ROUGE_TYPES:
            per_type[t].append(100.0 * scores[t].fmeasure)
    out = {}
    for t in ROUGE_TYPES:
        out[t], out[f"{t}_stderr"] = mean_and_stderr(per_type[t])
    return out


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], n_bootstrap: int = 1000) -> dict:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exponential smoothing off). Examples with fewer
    references than the most have their first one repeated (duplicates change neither the clipped
    n-gram counts nor the closest reference length). Its standard error is sacrebleu's bootstrap (resampled
    sentences, SACREBLEU_SEED, default 12345): the 95% interval's half-width / 1.96."""
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    result = BLEU().corpus_score(list(predictions), streams)
    out = {"bleu": float(result.score), "bleu_brevity_penalty": float(result.bp)}
    if n_bootstrap and len(predictions) > 1:
        boot = BLEU().corpus_score(list(predictions), streams, n_bootstrap=n_bootstrap)
        out["bleu_stderr"] = float(boot._ci) / 1.96  # sacrebleu keeps the interval only in this attribute
    return out
