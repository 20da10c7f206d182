"""Merge channel results: union, per-candidate channel hits, reciprocal rank fusion, cap.

Reciprocal rank fusion (RRF) is computed here because the server-side
``rrf`` retriever needs a paid license: a candidate's fused score is
``sum over channels of weight / (rrf_k + rank)`` with 1-based ranks.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from app.candidates.types import CHANNELS, Candidate, ChannelHit
from app.settings import Settings


def merge_cap(k: int, settings: Settings) -> int:
    """Return N for a request of ``k`` results: the configured cap, raised to 2k, at most candidates_cap_max."""
    return min(max(settings.candidates_cap, 2 * k), settings.candidates_cap_max)


def fuse(ranked_lists: Mapping[str, Sequence[tuple[str, float]]], rrf_k: int,
         excluded: Iterable[str] = (), weights: Mapping[str, float] | None = None) -> list[Candidate]:
    """Union the channels' (video id, score) lists, best first, into candidates ordered by fused score.

    Ids in ``excluded`` are dropped before ranks are assigned, so a channel's
    ranks count only eligible videos. A repeated id within one channel keeps
    its first (best) position. Ties in fused score break on the video id, so
    the order is deterministic.
    """
    excluded_set = set(excluded)
    candidates: dict[str, Candidate] = {}
    order = {channel: position for position, channel in enumerate(CHANNELS)}
    for channel in sorted(ranked_lists, key=lambda name: order.get(name, len(order))):
        weight = 1.0 if weights is None else weights.get(channel, 1.0)
        rank = 0
        seen: set[str] = set()
        for video_id, score in ranked_lists[channel]:
            if video_id in excluded_set or video_id in seen:
                continue
            seen.add(video_id)
            rank += 1
            candidate = candidates.get(video_id)
            if candidate is None:
                candidate = candidates[video_id] = Candidate(video_id)
            candidate.sources.append(ChannelHit(channel, rank, float(score)))
            candidate.fused_score += weight / (rrf_k + rank)
    return sorted(candidates.values(), key=lambda candidate: (-candidate.fused_score, candidate.video_id))


def merge(ranked_lists: Mapping[str, Sequence[tuple[str, float]]], settings: Settings, k: int,
          excluded: Iterable[str] = ()) -> list[Candidate]:
    """Fuse the channels and keep the top ``merge_cap(k)`` candidates."""
    return fuse(ranked_lists, settings.candidates_rrf_k, excluded)[: merge_cap(k, settings)]
