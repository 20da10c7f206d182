"""Rerank fused search hits with the ranking model that ranks recommendations.

The search lists are the recommendation channels applied to the request's
query, so the model reads them under those names: ``bm25`` as ``query_text``,
``knn`` as ``query_semantic`` and ``personal`` as ``history_content``.

The model scores the top ``max(k, window)`` fused hits. The final order blends
the two ranks rather than the scores, because the model's probabilities and the
reciprocal rank fusion (RRF) scores are on unrelated scales:

    final = (1 - w) / (rrf_k + fused_rank) + w / (rrf_k + model_rank)

with 1-based ranks. Ties break on the fused rank, then the video id. Hits past
the scored window get no model term, so they follow the scored ones in fused
order. Weight 0 skips the model call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

import numpy as np

from app.candidates.types import Candidate, ChannelHit

# Search list name -> the recommendation channel whose features the model reads for it.
SEARCH_LIST_CHANNELS = {"bm25": "query_text", "knn": "query_semantic", "personal": "history_content"}


class RankResultLike(Protocol):
    scores: np.ndarray | None
    model_version: str | None
    degraded: bool


class RankingService(Protocol):
    """The scoring interface of ``app.aggregator.Aggregator`` that reranking calls."""

    async def rank(self, request_id: str, user_id: str, profile: dict[str, Any], candidates: Sequence[Candidate],
                   request_time: datetime, hash_key: str | None = None) -> RankResultLike: ...


@dataclass(frozen=True)
class RankedHit:
    """One search hit in final order; ``candidate.sources`` keep the search list names."""

    candidate: Candidate
    score: float  # the blended score when the model reranked the hits, else the fused score
    model_score: float | None  # None when the model did not score this hit


@dataclass
class RerankResult:
    hits: list[RankedHit]
    model_version: str | None  # None when the order is the fused one
    degraded: bool
    ranking_ms: float = 0.0


def as_ranking_candidates(items: Sequence[Candidate]) -> list[Candidate]:
    """Return copies of the fused hits whose sources carry recommendation channel names.

    A list name outside SEARCH_LIST_CHANNELS keeps its name, and the feature
    encoder then ignores its rank and score (it logs the unknown channel once).
    """
    return [
        Candidate(video_id=item.video_id, fused_score=item.fused_score,
                  sources=[ChannelHit(SEARCH_LIST_CHANNELS.get(hit.channel, hit.channel), hit.rank, hit.score)
                           for hit in item.sources])
        for item in items
    ]


def model_ranks(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return 1-based ranks of ``scores``, highest first; NaN ranks last and ties keep the input order."""
    values = np.asarray(scores, dtype=np.float64)
    keys = np.where(np.isnan(values), -np.inf, values)
    # A stable sort on the negated keys keeps equal scores (NaN included) in input order.
    order = np.argsort(-keys, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def blend_order(video_ids: Sequence[str], model_scores: Sequence[float] | np.ndarray, weight: float,
                rrf_k: int) -> list[tuple[int, float]]:
    """Return (index into ``video_ids``, final score) pairs, best first.

    ``video_ids`` are in fused order, so index i has fused rank i + 1.
    ``model_scores`` covers the first ``len(model_scores)`` ids (the scored
    window); the ids after it get no model term. Raises ValueError for a weight
    outside [0, 1] or more scores than ids.
    """
    if not 0.0 <= weight <= 1.0 or math.isnan(weight):
        raise ValueError(f"weight={weight!r} is invalid: expected a number from 0 to 1")
    if len(model_scores) > len(video_ids):
        raise ValueError(f"{len(model_scores)} model scores for {len(video_ids)} hits: expected at most one per hit")
    ranks = model_ranks(model_scores)
    finals = []
    for index, video_id in enumerate(video_ids):
        fused_rank = index + 1
        final = (1.0 - weight) / (rrf_k + fused_rank)
        if index < len(ranks):
            final += weight / (rrf_k + int(ranks[index]))
        finals.append((final, fused_rank, video_id, index))
    finals.sort(key=lambda entry: (-entry[0], entry[1], entry[2]))
    return [(index, final) for final, _, _, index in finals]


def fused_hits(items: Sequence[Candidate], k: int) -> list[RankedHit]:
    """Return the top ``k`` fused hits as they are: fused score, no model score."""
    return [RankedHit(item, item.fused_score, None) for item in items[:k]]


def blend_hits(items: Sequence[Candidate], scores: Sequence[float] | np.ndarray, weight: float, rrf_k: int,
               k: int) -> list[RankedHit]:
    """Return the top ``k`` of ``items`` (fused order) by the rank blend with the model's ``scores``.

    ``scores`` covers the first ``len(scores)`` items. A non-finite model score
    ranks last and is reported as None.
    """
    order = blend_order([item.video_id for item in items], scores, weight, rrf_k)
    hits = []
    for index, final in order[:k]:
        model_score = float(scores[index]) if index < len(scores) else None
        if model_score is not None and not math.isfinite(model_score):
            model_score = None
        hits.append(RankedHit(items[index], final, model_score))
    return hits


def scoring_window(count: int, k: int, window: int) -> int:
    """Return how many of ``count`` fused hits the model scores for a request of ``k``."""
    return min(count, max(k, window))


async def score_hits(ranker: RankingService | None, items: Sequence[Candidate], profile: dict[str, Any],
                     request_id: str, user_id: str | None,
                     request_time: datetime | None = None) -> tuple[np.ndarray | None, str | None]:
    """Score ``items`` (fused hits, search list names) with the model; return (scores, model version).

    Scores are None when there is no ranker or the ranking result is degraded.
    The hash policy's key is the user id, or the request id for an anonymous
    search, because a search request has no region, language or category.
    """
    if ranker is None:
        return None, None
    result = await ranker.rank(request_id, user_id or "", profile, as_ranking_candidates(items),
                               request_time or datetime.now(timezone.utc), hash_key=user_id or request_id)
    if result.scores is None or result.degraded:
        return None, None
    return np.asarray(result.scores, dtype=np.float64), result.model_version


async def rerank_search(items: Sequence[Candidate], k: int, profile: dict[str, Any], ranker: RankingService | None,
                        weight: float, window: int, rrf_k: int, request_id: str, user_id: str | None = None,
                        request_time: datetime | None = None) -> RerankResult:
    """Rerank fused search hits (best first) and return the top ``k``.

    ``profile`` is the user's whole profile document ({} when anonymous).
    Weight 0 returns the fused order without calling the model. Without a
    ranker, or when its result is degraded, the fused order is kept and the
    result is marked degraded.
    """
    if weight == 0 or not items:
        return RerankResult(fused_hits(items, k), None, degraded=False)
    scored = items[: scoring_window(len(items), k, window)]
    started = time.perf_counter()
    scores, model_version = await score_hits(ranker, scored, profile, request_id, user_id, request_time)
    ranking_ms = (time.perf_counter() - started) * 1000
    if scores is None:
        return RerankResult(fused_hits(items, k), None, degraded=True, ranking_ms=ranking_ms)
    return RerankResult(blend_hits(items, scores, weight, rrf_k, k), model_version, degraded=False,
                        ranking_ms=ranking_ms)
