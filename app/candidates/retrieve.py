"""Candidate retrieval: one profile read, then every channel in one ``_msearch``.

Stages of ``retrieve_candidates``:
1. GET the user's profile; a user id never seen is a cold-start user with an empty profile.
2. Build each channel's body (``app.candidates.channels``) and run them all in one ``_msearch``.
3. Drop excluded ids that were too many for the query filter (the channels over-fetched by that
   many), fuse the channels with reciprocal rank fusion and cap at N.
4. While fewer than ``k`` candidates remain, ask popular-fresh for more eligible videos, excluding
   those already found, until it has none left.

Exclusion strategy: the newest ``candidates_exclude_in_query_max`` excluded ids go inside each
channel's query filter (a ``terms`` must_not); only ids beyond that are removed here. On 100,000
synthetic 384-dim videos (bench/exclusion.py, docs/candidates.md), filtered kNN returned the same
results as over-fetch plus removal in the application, at 0.6x (10 ids), 0.3x (1,000) and 0.7x
(10,000) of its median latency.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError

from app.candidates import channels as channel_builders
from app.candidates.channels import CandidateRequest
from app.candidates.merge import fuse, merge_cap
from app.candidates.types import CHANNELS, Candidate
from app.settings import Settings

logger = logging.getLogger(__name__)

# Profile fields candidate generation does not read; left out of its profile GET. The ranker does read
# ``recent_watches`` (its history ids), so the recommendation and search paths read the whole profile.
PROFILE_EXCLUDES = ["recent_watches"]

# Only what parse_hits reads, and each search's error: Elasticsearch then encodes, and the API decodes,
# about half the bytes of the whole response.
MSEARCH_FILTER_PATH = ["responses.hits.hits._id", "responses.hits.hits._score", "responses.hits.hits.fields",
                       "responses.error", "responses.status"]

# Rounds of popular-fresh top-up after the merge, each excluding every id already found.
MAX_FILL_ROUNDS = 3


@dataclass
class CandidateSet:
    """Result of one candidate request.

    ``channel_hits`` maps each channel that ran to its (video id, score) list,
    best first, before exclusion in the application. ``degraded`` is true when
    a channel failed and the result comes from the others.
    """

    request_id: str
    user_id: str
    cold_start: bool
    profile: dict[str, Any]
    candidates: list[Candidate]
    channel_hits: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    degraded: bool = False
    failed_channels: list[str] = field(default_factory=list)
    took_ms: float = 0.0


async def fetch_profile(client: AsyncElasticsearch, settings: Settings, user_id: str) -> dict[str, Any] | None:
    """Return the user's profile source, or None for a user id with no profile."""
    try:
        response = await client.get(index=settings.alias("users"), id=user_id, source_excludes=PROFILE_EXCLUDES)
    except NotFoundError:
        return None
    return dict(response["_source"])


async def read_whole_profile(client: AsyncElasticsearch, settings: Settings, user_id: str) -> dict[str, Any] | None:
    """Return the user's whole profile document, or None for a user id with no profile.

    The ranking features read ``recent_watches``, which ``fetch_profile``
    leaves out, so the recommendation and reranked search paths use this.
    """
    try:
        response = await client.get(index=settings.alias("users"), id=user_id)
    except NotFoundError:
        return None
    return dict(response["_source"])


def parse_hits(response: dict[str, Any]) -> list[tuple[str, float]]:
    """Return (video id, score) pairs of one search response (``_id`` or the ``video_id`` doc value).

    A response cut by a ``filter_path`` has no ``hits`` key when it found nothing.
    """
    hits = response.get("hits", {}).get("hits", ())
    return [(channel_builders.hit_id(hit), float(hit["_score"] or 0.0)) for hit in hits]


async def run_msearch(client: AsyncElasticsearch, settings: Settings, queries: list[tuple[str, dict]],
                      request_id: str) -> tuple[dict[str, list[tuple[str, float]]], list[str]]:
    """Run the channel bodies in one ``_msearch``; return hits per channel and the channels that failed."""
    if not queries:
        return {}, []
    searches: list[dict[str, Any]] = []
    for _, body in queries:
        searches.extend(({}, body))
    response = await client.msearch(index=settings.alias("videos"), searches=searches,
                                    filter_path=MSEARCH_FILTER_PATH)

    hits: dict[str, list[tuple[str, float]]] = {}
    failed: list[str] = []
    for (channel, _), item in zip(queries, response["responses"]):
        if "error" in item:
            failed.append(channel)
            logger.warning("channel %s failed for request %s: %s", channel, request_id, item["error"])
            continue
        hits[channel] = parse_hits(item)
    return hits, failed


async def retrieve_candidates(client: AsyncElasticsearch, settings: Settings, user_id: str,
                              request: CandidateRequest | None = None, request_id: str | None = None,
                              channels: tuple[str, ...] = CHANNELS) -> CandidateSet:
    """Return at least ``min(k, eligible videos)`` and at most N fused candidates for ``user_id``."""
    request = request or CandidateRequest()
    request_id = request_id or uuid.uuid4().hex
    started = time.perf_counter()

    profile = await fetch_profile(client, settings, user_id)
    cold_start = not profile or not profile.get("watched_ids")
    profile = profile or {}

    queries = channel_builders.build_channel_queries(profile, request, settings, channels)
    hits, failed = await run_msearch(client, settings, queries, request_id)

    excluded = channel_builders.excluded_ids(profile, request)
    cap = merge_cap(request.k, settings)
    candidates = fuse(hits, settings.candidates_rrf_k, excluded)[:cap]

    wanted = min(request.k, cap)
    for _ in range(MAX_FILL_ROUNDS):
        if len(candidates) >= wanted or "popular_fresh" not in channels:
            break
        found = [candidate.video_id for candidate in candidates]
        more = await fill_popular(client, settings, profile, request, found, wanted - len(candidates),
                                  request_id)
        if not more:
            break
        hits.setdefault("popular_fresh", []).extend(more)
        candidates = fuse(hits, settings.candidates_rrf_k, excluded)[:cap]

    took_ms = (time.perf_counter() - started) * 1000
    logger.debug("candidates request_id=%s user_id=%s n=%d took_ms=%.1f", request_id, user_id,
                 len(candidates), took_ms)
    return CandidateSet(request_id=request_id, user_id=user_id, cold_start=cold_start, profile=profile,
                        candidates=candidates, channel_hits=hits, degraded=bool(failed),
                        failed_channels=failed, took_ms=took_ms)


async def fill_popular(client: AsyncElasticsearch, settings: Settings, profile: dict[str, Any],
                       request: CandidateRequest, found: list[str], missing: int,
                       request_id: str) -> list[tuple[str, float]]:
    """Return up to ``missing`` more eligible popular-fresh videos that are not in ``found``."""
    _, in_application = channel_builders.split_exclusions(profile, request, settings)
    body = channel_builders.popular_fresh(profile, request, settings, extra_excluded=found,
                                          size=missing + len(in_application))
    response = await client.search(index=settings.alias("videos"), body=body)
    logger.debug("popular-fresh top-up request_id=%s missing=%d", request_id, missing)
    skip = set(in_application)
    return [hit for hit in parse_hits(dict(response)) if hit[0] not in skip]
