"""User serving profiles: merging events into a profile, and rebuilding profiles from the event indices.

A profile (the `users` document, id = user id) contains:

- ``watched_ids``: watched video ids, most recent first, at most ``profile_max_watched_ids``;
- ``recent_watches``: the last ``profile_recent_watches`` watches, most recent first, each with
  ``video_id``, ``ts``, ``completion``, ``rating``, ``event_id``;
- ``history_vector``: the mean of the recent watches' ``text_embedding``, each weighted
  ``0.5 ** (age / half_life)`` where age is measured from the newest watch, L2-normalized;
- ``recent_queries``: the last ``profile_recent_queries`` queries (``text``, ``ts``, ``vector``,
  ``event_id``), most recent first, and ``query_vector``, their normalized mean;
- ``impressions``: per video ``count`` and ``last_shown``, the ``profile_max_impressions`` most
  recently shown; ``not_interested``: video ids, most recent first;
- ``watch_count``, ``last_event_at``, ``updated_at`` and the demographics when known.

Times are ISO 8601 UTC strings as written by :func:`indexing.records.format_ts`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
from elasticsearch import Elasticsearch

from app.settings import Settings
from indexing.bulk_load import BulkResult, bulk_write
from indexing.embed import l2_normalize
from indexing.records import NOT_INTERESTED, WATCH, UserRecord, format_ts, parse_ts

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
USERS_PER_CHUNK = 200
PAGE_SIZE = 5000

# Fields computed from events; a rebuild replaces them and keeps every other field
# (demographics, cf_embedding).
EVENT_FIELDS = ("watched_ids", "watch_count", "recent_watches", "history_vector", "recent_queries",
                "query_vector", "impressions", "not_interested", "last_event_at")


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _merge_by_event_id(existing: list[dict], new: list[dict], limit: int) -> list[dict]:
    merged = {item["event_id"]: item for item in existing}
    for item in new:
        merged.setdefault(item["event_id"], item)
    return sorted(merged.values(), key=lambda item: item["ts"], reverse=True)[:limit]


def history_vector(recent_watches: list[dict], video_vectors: dict[str, np.ndarray],
                   half_life_days: float) -> list[float] | None:
    """Return the recency-weighted, L2-normalized mean vector of ``recent_watches``, or None.

    Watches of videos without a vector in ``video_vectors`` are skipped.
    """
    rows = [(parse_ts(watch["ts"], event_time=False), video_vectors[watch["video_id"]])
            for watch in recent_watches if watch["video_id"] in video_vectors]
    if not rows:
        return None
    newest = max(timestamp for timestamp, _ in rows)
    half_life_ms = half_life_days * DAY_MS
    weights = np.array([0.5 ** ((newest - timestamp) / half_life_ms) for timestamp, _ in rows])
    mean = (weights[:, None] * np.stack([vector for _, vector in rows])).sum(axis=0) / weights.sum()
    normalized = l2_normalize(mean.astype(np.float32))
    return normalized.tolist() if np.linalg.norm(normalized) > 0 else None


def mean_query_vector(recent_queries: list[dict]) -> list[float] | None:
    vectors = [np.asarray(query["vector"], dtype=np.float32) for query in recent_queries if query.get("vector")]
    if not vectors:
        return None
    normalized = l2_normalize(np.mean(vectors, axis=0))
    return normalized.tolist() if np.linalg.norm(normalized) > 0 else None


def apply_events(profile: dict[str, Any], settings: Settings, watches: list[dict] = (),
                 queries: list[dict] = (), impressions: list[dict] = (),
                 video_vectors: dict[str, np.ndarray] | None = None, now_ms: int | None = None) -> dict[str, Any]:
    """Return ``profile`` with new events merged in, in time order whatever their arrival order.

    ``watches``: dicts with ``event_type`` (watch or not_interested), ``video_id``, ``ts``,
    ``event_id`` and optional ``completion`` and ``rating``. ``queries``: ``text``, ``ts``,
    ``vector``, ``event_id``. ``impressions``: ``video_id``, ``ts``. Callers must pass only
    events that were newly stored: the recent lists ignore a known ``event_id``, but
    ``watch_count`` and impression counts would count a repeated event again.
    ``video_vectors`` must hold the text embedding of every video in the merged recent watches.
    """
    updated = dict(profile)
    video_vectors = video_vectors or {}
    new_watches = [watch for watch in watches if watch.get("event_type", WATCH) == WATCH]
    new_marks = [watch for watch in watches if watch.get("event_type") == NOT_INTERESTED]
    event_times = [item["ts"] for item in [*watches, *queries, *impressions]]

    if new_watches:
        entries = [{key: watch[key] for key in ("video_id", "ts", "completion", "rating", "event_id")
                    if watch.get(key) is not None} for watch in new_watches]
        recent = _merge_by_event_id(updated.get("recent_watches") or [], entries,
                                    settings.profile_recent_watches)
        updated["recent_watches"] = recent
        recent_ids = _dedupe(watch["video_id"] for watch in recent)
        older_new = _dedupe(entry["video_id"] for entry in sorted(entries, key=lambda e: e["ts"], reverse=True))
        # NOTE: past the recent-watches window the profile keeps no times, so a watch older than
        # that window is placed right after it, before ids that arrived earlier.
        watched = _dedupe([*recent_ids, *older_new, *(updated.get("watched_ids") or [])])
        updated["watched_ids"] = watched[: settings.profile_max_watched_ids]
        updated["watch_count"] = int(updated.get("watch_count") or 0) + len(new_watches)
        vector = history_vector(recent, video_vectors, settings.profile_half_life_days)
        if vector is not None:
            updated["history_vector"] = vector

    if new_marks:
        marks = sorted(new_marks, key=lambda mark: mark["ts"], reverse=True)
        combined = _dedupe([*(mark["video_id"] for mark in marks), *(updated.get("not_interested") or [])])
        updated["not_interested"] = combined[: settings.profile_max_watched_ids]

    if queries:
        entries = [{"text": query["text"], "ts": query["ts"], "event_id": query["event_id"],
                    **({"vector": list(query["vector"])} if query.get("vector") is not None else {})}
                   for query in queries]
        recent_queries = _merge_by_event_id(updated.get("recent_queries") or [], entries,
                                            settings.profile_recent_queries)
        updated["recent_queries"] = recent_queries
        vector = mean_query_vector(recent_queries)
        if vector is not None:
            updated["query_vector"] = vector

    if impressions:
        shown = {item["video_id"]: dict(item) for item in updated.get("impressions") or []}
        for impression in impressions:
            entry = shown.setdefault(impression["video_id"],
                                     {"video_id": impression["video_id"], "count": 0, "last_shown": impression["ts"]})
            entry["count"] += 1
            entry["last_shown"] = max(entry["last_shown"], impression["ts"])
        ordered = sorted(shown.values(), key=lambda item: item["last_shown"], reverse=True)
        updated["impressions"] = ordered[: settings.profile_max_impressions]

    if event_times:
        latest = max(event_times)
        previous = updated.get("last_event_at")
        updated["last_event_at"] = max(previous, latest) if previous else latest
    updated["updated_at"] = format_ts(now_ms if now_ms is not None else int(time.time() * 1000))
    return updated


# Rebuilding profiles from the event indices (bulk loads).


@dataclass
class ProfileBuildReport:
    users: int = 0
    seconds: float = 0.0
    result: BulkResult | None = None


def fetch_video_vectors(client: Elasticsearch, settings: Settings, video_ids: Iterable[str]) -> dict[str, np.ndarray]:
    """Return ``text_embedding`` per video id for the ids that have one."""
    ids = _dedupe(video_ids)
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        response = client.search(index=settings.alias("videos"), query={"ids": {"values": chunk}},
                                 size=len(chunk), source_includes=["text_embedding"],
                                 source_exclude_vectors=False)
        for hit in response.body["hits"]["hits"]:
            vector = hit["_source"].get("text_embedding")
            if vector:
                vectors[hit["_id"]] = np.asarray(vector, dtype=np.float32)
    return vectors


def _scan_sorted(client: Elasticsearch, index: str, user_ids: list[str], **search: Any) -> Iterator[dict]:
    """Yield the events of ``user_ids`` from ``index``, by user, newest first (search_after paging)."""
    search_after = None
    while True:
        response = client.search(
            index=index, query={"terms": {"user_id": user_ids}}, size=PAGE_SIZE,
            sort=[{"user_id": "asc"}, {"@timestamp": "desc"}, {"event_id": "asc"}],
            search_after=search_after, track_total_hits=False, **search,
        )
        hits = response.body["hits"]["hits"]
        yield from (hit["_source"] for hit in hits)
        if len(hits) < PAGE_SIZE:
            return
        search_after = hits[-1]["sort"]


def all_user_ids(client: Elasticsearch, settings: Settings) -> list[str]:
    """Return every user id found in the event indices, with a composite aggregation."""
    users: set[str] = set()
    for name in ("watch-events", "search-queries", "impressions"):
        after = None
        while True:
            composite: dict[str, Any] = {"size": 10_000, "sources": [{"user": {"terms": {"field": "user_id"}}}]}
            if after:
                composite["after"] = after
            response = client.search(index=settings.alias(name), size=0,
                                     aggregations={"users": {"composite": composite}})
            aggregation = response.body["aggregations"]["users"]
            users.update(bucket["key"]["user"] for bucket in aggregation["buckets"])
            after = aggregation.get("after_key")
            if not aggregation["buckets"] or not after:
                break
    return sorted(users)


def rebuild_profiles(client: Elasticsearch, settings: Settings, user_ids: Iterable[str] | None = None,
                     demographics: dict[str, UserRecord] | None = None,
                     video_vectors: dict[str, np.ndarray] | None = None,
                     show_progress: bool = True) -> ProfileBuildReport:
    """Rebuild the profiles of ``user_ids`` (all users with events when None) in one pass over their events.

    Event-derived fields are recomputed from the event indices, so a rebuild after a
    reload gives the same profile. Other fields of an existing profile are kept and
    ``demographics`` are merged in. ``video_vectors`` may hold known text embeddings;
    missing ones are fetched from the videos index.
    NOTE: a rebuild can overwrite an API event applied to the profile while it runs.
    The event itself stays in its index, so the next rebuild includes it.
    """
    started = time.perf_counter()
    demographics = demographics or {}
    users = sorted(set(user_ids) if user_ids is not None else set(all_user_ids(client, settings)) | set(demographics))
    known_vectors = dict(video_vectors or {})
    report = ProfileBuildReport(users=len(users), result=BulkResult())
    now_ms = int(time.time() * 1000)

    def documents() -> Iterator[dict[str, Any]]:
        for start in range(0, len(users), USERS_PER_CHUNK):
            chunk = users[start:start + USERS_PER_CHUNK]
            yield from _chunk_profiles(client, settings, chunk, demographics, known_vectors, now_ms)

    result = bulk_write(client, documents(), settings, description="profiles", total=len(users),
                        show_progress=show_progress)
    report.result = result
    report.seconds = time.perf_counter() - started
    return report


def _chunk_profiles(client: Elasticsearch, settings: Settings, chunk: list[str],
                    demographics: dict[str, UserRecord], known_vectors: dict[str, np.ndarray],
                    now_ms: int) -> Iterator[dict[str, Any]]:
    watches: dict[str, list[dict]] = {user: [] for user in chunk}
    for event in _scan_sorted(client, settings.alias("watch-events"), chunk):
        watches[event["user_id"]].append({
            "event_type": event.get("event_type", WATCH), "video_id": event["video_id"], "ts": event["@timestamp"],
            "event_id": event["event_id"], "completion": event.get("completion"), "rating": event.get("rating"),
        })
    queries: dict[str, list[dict]] = {user: [] for user in chunk}
    for event in _scan_sorted(client, settings.alias("search-queries"), chunk, source_exclude_vectors=False):
        if len(queries[event["user_id"]]) < settings.profile_recent_queries:
            queries[event["user_id"]].append({"text": event["query"], "ts": event["@timestamp"],
                                              "event_id": event["event_id"], "vector": event.get("query_vector")})
    impressions: dict[str, list[dict]] = {user: [] for user in chunk}
    for event in _scan_sorted(client, settings.alias("impressions"), chunk):
        impressions[event["user_id"]].append({"video_id": event["video_id"], "ts": event["@timestamp"]})

    needed = set()
    for user in chunk:
        needed.update(watch["video_id"] for watch in watches[user][: settings.profile_recent_watches * 2])
    missing = [video_id for video_id in needed if video_id not in known_vectors]
    if missing:
        known_vectors.update(fetch_video_vectors(client, settings, missing))

    existing = client.mget(index=settings.alias("users"), ids=chunk).body["docs"]
    for user, found in zip(chunk, existing):
        base = {key: value for key, value in (found.get("_source") or {}).items() if key not in EVENT_FIELDS}
        base["user_id"] = user
        if user in demographics:
            base.update(demographics[user].to_fields())
        profile = apply_events(base, settings, watches=watches[user], queries=queries[user],
                               impressions=impressions[user], video_vectors=known_vectors, now_ms=now_ms)
        yield {"_op_type": "index", "_index": settings.alias("users"), "_id": user, "_source": profile}
