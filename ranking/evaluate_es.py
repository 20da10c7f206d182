"""Rank the test users of an Elasticsearch evaluation world (``ranking.world``) with the serving path.

Each user's candidates come from ``retrieve_candidates`` against the world's
indices as of the user's request time, the same call the candidate
evaluation and the API make, and the scorers read the profile that call
returns. Popularity features, the popularity baseline and the collaborative
baseline all come from the world's own videos index, so no held-out watch
reaches them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

import numpy as np
from elasticsearch import helpers

from app.candidates.channels import CandidateRequest
from app.candidates.retrieve import retrieve_candidates
from app.es_client import make_async_client, make_client
from ranking.feature_table import parse_timestamp, read_popularity
from ranking.metrics import TOP_K_METRICS
from ranking.scorer import BatchScorer

logger = logging.getLogger(__name__)

TOP_N = 100
CONCURRENT_REQUESTS = 4


def _video_factors(client: Any, index: str) -> tuple[list[str], np.ndarray]:
    ids, vectors = [], []
    for hit in helpers.scan(client, index=index, query={"query": {"exists": {"field": "cf_embedding"}}},
                            _source=["video_id", "cf_embedding"], size=2000):
        ids.append(str(hit["_source"]["video_id"]))
        vectors.append(hit["_source"]["cf_embedding"])
    return ids, np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)


def _top_unwatched(ids: list[str], scores: np.ndarray, watched: set[str], size: int) -> list[str]:
    ranked = []
    for index in np.argsort(-scores, kind="stable"):
        if ids[index] not in watched:
            ranked.append(ids[index])
            if len(ranked) == size:
                break
    return ranked


def rank_users_es(world: Any, scorers: dict[str, BatchScorer], cap: int,
                  max_users: int | None = None) -> dict[str, list[dict[str, float]]]:
    """Per system, one metrics row per test user of ``world`` (a ``ranking.world.World``)."""
    client = make_client(world.settings, request_timeout_s=120)
    try:
        popularity = read_popularity(client, world.settings.alias("videos"))
        factor_ids, factors = _video_factors(client, world.settings.alias("videos"))
    finally:
        client.close()
    for scorer in scorers.values():
        # A video without a count in the world was not watched there, whatever the table had before.
        scorer.refresh_popularity({v: popularity.get(v, 0.0) for v in scorer.encoder.table.video_ids})
    popular_ids = list(popularity)
    popular_scores = np.array([popularity[v] for v in popular_ids])
    users = sorted(world.test, key=lambda user: (len(user), user))[:max_users]
    return asyncio.run(_rank(world, scorers, cap, users, popular_ids, popular_scores, factor_ids, factors))


async def _rank(world, scorers, cap, users, popular_ids, popular_scores, factor_ids, factors):
    client = make_async_client(world.settings, request_timeout_s=60)
    semaphore = asyncio.Semaphore(CONCURRENT_REQUESTS)

    async def retrieve(user_id: str):
        async with semaphore:
            request = CandidateRequest(k=cap // 2, now=world.request_time[user_id])
            return await retrieve_candidates(client, world.settings, user_id, request)

    try:
        results = await asyncio.gather(*(retrieve(user) for user in users))
    finally:
        await client.close()

    rows: dict[str, list[dict[str, float]]] = {}
    for user_id, result in zip(users, results):
        relevant = set(world.test[user_id])
        profile = result.profile
        candidates = result.candidates[:cap]
        ids = [c.video_id for c in candidates]
        watched = set(profile.get("watched_ids") or [])
        request_time = datetime.fromtimestamp(parse_timestamp(world.request_time[user_id]), tz=timezone.utc)
        rankings = {"fused": ids, "popularity": _top_unwatched(popular_ids, popular_scores, watched, TOP_N)}
        for kind, system in (("mlp", "candidates+mlp"), ("lr", "candidates+lr")):
            scores = scorers[kind].score(profile, candidates, request_time)
            rankings[system] = [ids[i] for i in np.argsort(-scores, kind="stable")]
        user_factor = profile.get("cf_embedding")
        if user_factor is not None and len(factor_ids):
            rankings["collaborative"] = _top_unwatched(factor_ids, factors @ np.asarray(user_factor, dtype=np.float32),
                                                       watched, TOP_N)
        else:
            rankings["collaborative"] = []
        for system, ranked in rankings.items():
            rows.setdefault(system, []).append({name: metric(ranked, relevant) for name, metric in TOP_K_METRICS.items()})
    logger.info("ranked users=%d in world prefix=%s", len(users), world.settings.index_prefix)
    return rows
