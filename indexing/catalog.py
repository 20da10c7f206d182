"""Loading steps shared by every file loader: videos with vectors, events, popularity, the report.

A load runs in this order: watch and not-interested events, search queries
(embedded), impressions, then video popularity statistics aggregated from the
stored watches, then videos (embedded, written with their statistics, so each
vector is written once), then user profiles in one pass over the stored events. Events are written with ``op_type: create`` and their
deterministic id, so a reload stores nothing twice.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
from elasticsearch import Elasticsearch

from app.settings import Settings
from indexing.bulk_load import BulkResult, bulk_write, count, refresh_disabled
from indexing.embed import Embedder, query_text, text_hash, video_text
from indexing.indices import create_all
from indexing.records import ImpressionEvent, RowError, SearchEvent, Video, WatchEvent, format_ts

logger = logging.getLogger(__name__)

EVENT_INDICES = ("watch-events", "search-queries", "impressions")
QUERY_BATCH = 2000


@dataclass
class IngestReport:
    """Outcome of one load: counts per index, rejected rows, timings and the embedding cache use.

    ``loaded`` counts documents written, ``skipped`` events already stored (same id),
    ``rejected`` input rows that could not be read plus documents the server refused.
    """

    source: str
    loaded: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    row_errors: list[RowError] = field(default_factory=list)
    bulk_failures: list[Any] = field(default_factory=list)
    index_counts: dict[str, int] = field(default_factory=dict)
    embed_seconds: float = 0.0
    bulk_seconds: float = 0.0
    profile_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    users_built: int = 0

    @property
    def rejected(self) -> int:
        return len(self.row_errors) + len(self.bulk_failures)

    @property
    def total_loaded(self) -> int:
        return sum(self.loaded.values())

    @property
    def docs_per_second(self) -> float:
        return self.total_loaded / self.elapsed_seconds if self.elapsed_seconds else 0.0

    def add_bulk(self, name: str, result: BulkResult) -> None:
        self.loaded[name] = self.loaded.get(name, 0) + result.written
        self.skipped[name] = self.skipped.get(name, 0) + result.duplicates
        self.bulk_failures.extend(result.failures)
        self.bulk_seconds += result.seconds


def now_iso() -> str:
    return format_ts(int(time.time() * 1000))


def prepare_indices(client: Elasticsearch, settings: Settings) -> None:
    """Create every missing index and alias."""
    create_all(client, settings)


# Fields a catalog load never compares or overwrites: vectors and the matrix-factorization
# model's output, which another job writes.
UNCOMPARED_FIELDS = {"updated_at", "text_embedding", "cf_embedding", "cf_model_version"}


def _existing_sources(client: Elasticsearch, alias: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 2000):
        response = client.mget(index=alias, ids=ids[start:start + 2000],
                               source_excludes=["text_embedding", "cf_embedding"])
        for doc in response.body["docs"]:
            if doc.get("found"):
                found[doc["_id"]] = doc["_source"]
    return found


def load_videos(client: Elasticsearch, settings: Settings, videos: list[Video], embedder: Embedder,
                report: IngestReport, stats: dict[str, dict[str, Any]] | None = None,
                show_progress: bool = True) -> dict[str, np.ndarray]:
    """Embed and write ``videos`` with their popularity ``stats``; return the vector of every video.

    A video whose stored document equals the new one (vectors and ``updated_at`` aside)
    and was embedded by the same model is neither embedded nor written again, because
    every write of a vector costs an HNSW insert. Unchanged videos still get their vector
    from the embedding cache for the return value. Changed videos are written as partial
    updates with upsert, so fields written by other jobs (``cf_embedding``) are kept.
    """
    alias = settings.alias("videos")
    stats = stats or {}
    existing = _existing_sources(client, alias, [video.video_id for video in videos])
    texts = [video_text(video.title, video.tags, video.description, settings.embedding_max_chars)
             for video in videos]
    started = time.perf_counter()
    vectors = embedder.encode(texts, description="embedding videos")
    report.embed_seconds += time.perf_counter() - started

    changed: list[tuple[Video, dict[str, Any], np.ndarray]] = []
    for video, text, vector in zip(videos, texts, vectors):
        document = video.to_source()
        document.update(stats.get(video.video_id, {}))
        document.update({"text_hash": text_hash(embedder.model_name, text), "embedding_model": embedder.model_name})
        stored = existing.get(video.video_id)
        if stored is not None:
            comparable = {key: value for key, value in stored.items() if key not in UNCOMPARED_FIELDS}
            if comparable == document:
                continue
        changed.append((video, document, vector))
    report.skipped["videos"] = report.skipped.get("videos", 0) + len(videos) - len(changed)
    updated_at = now_iso()

    def actions() -> Iterator[dict[str, Any]]:
        for video, document, vector in changed:
            document.update({"text_embedding": vector.tolist(), "updated_at": updated_at})
            yield {"_op_type": "update", "_index": alias, "_id": video.video_id, "doc": document,
                   "doc_as_upsert": True}

    result = bulk_write(client, actions(), settings, description="videos", total=len(changed),
                        show_progress=show_progress)
    report.add_bulk("videos", result)
    logger.info("videos: %d written, %d unchanged, bulk %.1f s", result.written, len(videos) - len(changed),
                result.seconds)
    return {video.video_id: vector for video, vector in zip(videos, vectors)}


def watch_actions(events: Iterable[WatchEvent], settings: Settings) -> Iterator[dict[str, Any]]:
    alias = settings.alias("watch-events")
    ingested_at = now_iso()
    for event in events:
        yield {"_op_type": "create", "_index": alias, "_id": event.event_id, "_source": event.to_source(ingested_at)}


def impression_actions(events: Iterable[ImpressionEvent], settings: Settings) -> Iterator[dict[str, Any]]:
    alias = settings.alias("impressions")
    ingested_at = now_iso()
    for event in events:
        yield {"_op_type": "create", "_index": alias, "_id": event.event_id, "_source": event.to_source(ingested_at)}


def search_actions(events: Iterable[SearchEvent], embedder: Embedder, settings: Settings,
                   report: IngestReport) -> Iterator[dict[str, Any]]:
    """Yield create actions for search events, embedding their texts in batches of ``QUERY_BATCH``."""
    alias = settings.alias("search-queries")
    ingested_at = now_iso()
    batch: list[SearchEvent] = []

    def flush() -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        vectors = embedder.encode([query_text(event.text, settings.embedding_max_chars) for event in batch],
                                  description="embedding queries")
        report.embed_seconds += time.perf_counter() - started
        for event, vector in zip(batch, vectors):
            source = event.to_source(ingested_at, vector.tolist(), embedder.model_name)
            yield {"_op_type": "create", "_index": alias, "_id": event.event_id, "_source": source}

    for event in events:
        batch.append(event)
        if len(batch) >= QUERY_BATCH:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def aggregate_video_stats(client: Elasticsearch, settings: Settings) -> dict[str, dict[str, Any]]:
    """Return watch_count, rating_count, rating_mean and popularity per watched video.

    popularity = ln(1 + watch_count). The numbers come from the stored watch events
    with a composite aggregation, so a reload gives the same values.
    """
    stats: dict[str, dict[str, Any]] = {}
    after = None
    while True:
        composite: dict[str, Any] = {"size": 10_000, "sources": [{"video": {"terms": {"field": "video_id"}}}]}
        if after:
            composite["after"] = after
        response = client.search(
            index=settings.alias("watch-events"), size=0, query={"term": {"event_type": "watch"}},
            aggregations={"videos": {"composite": composite,
                                     "aggregations": {"rating": {"stats": {"field": "rating"}}}}},
        )
        aggregation = response.body["aggregations"]["videos"]
        for bucket in aggregation["buckets"]:
            rating = bucket["rating"]
            entry: dict[str, Any] = {"watch_count": bucket["doc_count"], "rating_count": rating["count"],
                                     "popularity": math.log1p(bucket["doc_count"])}
            if rating["count"]:
                entry["rating_mean"] = rating["avg"]
            stats[bucket["key"]["video"]] = entry
        after = aggregation.get("after_key")
        if not aggregation["buckets"] or not after:
            return stats


def update_video_stats(client: Elasticsearch, settings: Settings, stats: dict[str, dict[str, Any]],
                       show_progress: bool = True) -> BulkResult:
    """Write ``stats`` onto existing videos as partial updates (the server has no scripting)."""
    actions = ({"_op_type": "update", "_index": settings.alias("videos"), "_id": video_id, "doc": entry}
               for video_id, entry in stats.items())
    return bulk_write(client, actions, settings, description="video statistics", total=len(stats),
                      show_progress=show_progress)


def record_counts(client: Elasticsearch, settings: Settings, report: IngestReport) -> None:
    """Store the document count of every alias in the report, after a refresh."""
    for name in ("videos", "users", *EVENT_INDICES):
        alias = settings.alias(name)
        client.indices.refresh(index=alias)
        report.index_counts[name] = count(client, alias)


def loading(client: Elasticsearch, settings: Settings):
    """Context manager that turns refresh off on every alias for a load."""
    return refresh_disabled(client, [settings.alias(name) for name in ("videos", "users", *EVENT_INDICES)])


def check_counts(report: IngestReport, before: dict[str, int]) -> list[str]:
    """Compare each event index's count with its count before the load plus what was created.

    Returns one message per mismatch and logs each as a warning.
    """
    problems = []
    for name in EVENT_INDICES:
        expected = before.get(name, 0) + report.loaded.get(name, 0)
        found = report.index_counts.get(name, 0)
        if found != expected:
            problems.append(f"{name}: expected {expected} documents after the load, found {found}")
            logger.warning("count check failed for %s: expected %d found %d", name, expected, found)
    return problems
