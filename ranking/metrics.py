"""Ranking and classification metrics with bootstrap confidence intervals.

Top-k metrics take, per user, a ranked list of video ids and the set of
relevant (held-out watched) ids.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula, ties given their mean rank; NaN with one class."""
    labels = np.asarray(labels) > 0
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = np.asarray(scores)[order]
    # Mean rank for each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ndcg_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Binary-relevance NDCG@k."""
    gains = sum(1.0 / math.log2(i + 2) for i, video in enumerate(ranked[:k]) if video in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return gains / ideal if ideal else 0.0


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def average_precision_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """AP@k normalized by min(|relevant|, k)."""
    hits, total = 0, 0.0
    for i, video in enumerate(ranked[:k]):
        if video in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(len(relevant), k) if relevant else 0.0


TOP_K_METRICS: dict[str, Callable[[Sequence[str], set[str]], float]] = {
    "ndcg@10": lambda ranked, relevant: ndcg_at(ranked, relevant, 10),
    "recall@10": lambda ranked, relevant: recall_at(ranked, relevant, 10),
    "recall@100": lambda ranked, relevant: recall_at(ranked, relevant, 100),
    "map@100": lambda ranked, relevant: average_precision_at(ranked, relevant, 100),
}


def bootstrap_ci(values: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Return (mean, 2.5th, 97.5th percentile) of the mean over ``samples`` resamples of users."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted probability and observed rate per equal-width probability bin (empty bins left out)."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(probabilities, edges) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(mask.sum()),
                        "mean_predicted": float(probabilities[mask].mean()),
                        "observed_rate": float(np.asarray(labels)[mask].mean())})
    return out
