import math

import numpy as np
import pytest

from ranking.metrics import (
    auc, average_precision_at, bootstrap_ci, log_loss, ndcg_at, recall_at, reliability_bins,
)


def test_auc_known_values():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_log_loss_known_value():
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.2])) == pytest.approx(-math.log(0.8))


def test_top_k_metrics_known_values():
    ranked = ["a", "b", "c", "d"]
    relevant = {"b", "d", "z"}
    assert recall_at(ranked, relevant, 2) == pytest.approx(1 / 3)
    assert ndcg_at(ranked, relevant, 10) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4)))
    assert average_precision_at(ranked, relevant, 100) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert recall_at(ranked, set(), 10) == 0.0


def test_bootstrap_ci_brackets_mean():
    values = np.random.default_rng(0).random(500)
    mean, low, high = bootstrap_ci(values, samples=300)
    assert low < mean < high
    assert high - low < 0.1


def test_reliability_bins_counts():
    bins = reliability_bins(np.array([0, 1, 1, 0]), np.array([0.05, 0.07, 0.95, 0.91]), bins=10)
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[0]["observed_rate"] == 0.5


def test_top_unwatched_skips_watched():
    from ranking.evaluate_es import _top_unwatched

    ids = ["a", "b", "c", "d"]
    assert _top_unwatched(ids, np.array([0.1, 0.9, 0.5, 0.7]), {"b"}, 2) == ["d", "c"]
    assert _top_unwatched(ids, np.array([0.1, 0.9, 0.5, 0.7]), set(ids), 2) == []
