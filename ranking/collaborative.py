"""Collaborative-filtering factors from the watch matrix, written to the videos and users indices.

``train_cf`` reads the watch events in a time window into a user x video matrix
(U users, I videos, each cell a watch count) and factorizes it with the
``implicit`` package (ALS or BPR). It writes the F-dimensional factors with
partial bulk updates, item factors to ``videos.cf_embedding`` and user factors to
``users.cf_embedding``, each with ``cf_model_version``. A user's score for a video
is the inner product of their factors, which is why ``cf_embedding`` uses the
``max_inner_product`` similarity. A manifest JSON with the version, the training
window and the counts goes to ``<model_dir>/cf/<version>.json``.

Videos and users without watches in the window get no factor and keep the
other channels. Factors of an older model stay on the documents that the new
model does not cover; the collaborative channel compares only factors of one
model version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import scipy.sparse as sp
from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan

from app.settings import Settings
from indexing.bulk_load import BulkResult, bulk_write
from indexing.records import WATCH, format_ts

logger = logging.getLogger(__name__)

Algorithm = Literal["als", "bpr"]


class CFModelError(ValueError):
    """A factor model cannot be trained or stored; the message names the reason and the fix."""


@dataclass(frozen=True)
class WatchMatrix:
    """Watch counts as a CSR matrix of shape (U users, I videos) with the ids of its rows and columns."""

    matrix: sp.csr_matrix
    user_ids: list[str]
    video_ids: list[str]
    first_ts: str | None
    last_ts: str | None
    events: int


@dataclass
class CFReport:
    """Outcome of one training: the model version, window, sizes and the bulk-write counts."""

    model_version: str
    algorithm: str
    factors: int
    window_start: str | None
    window_end: str | None
    first_event: str | None
    last_event: str | None
    events: int
    users: int
    videos: int
    seconds: float
    videos_written: int = 0
    users_written: int = 0
    failures: list[str] = field(default_factory=list)


def read_watch_matrix(client: Elasticsearch, settings: Settings, since: str | None = None,
                      until: str | None = None) -> WatchMatrix:
    """Read the watch events with ``since <= @timestamp < until`` into a watch-count matrix.

    Not-interested marks and other event types are left out. Times are ISO 8601 or
    Elasticsearch date math.
    """
    filters: list[dict[str, Any]] = [{"term": {"event_type": WATCH}}]
    window: dict[str, str] = {}
    if since:
        window["gte"] = since
    if until:
        window["lt"] = until
    if window:
        filters.append({"range": {"@timestamp": window}})

    user_index: dict[str, int] = {}
    video_index: dict[str, int] = {}
    rows: list[int] = []
    columns: list[int] = []
    first_ts: str | None = None
    last_ts: str | None = None
    for hit in scan(client, index=settings.alias("watch-events"), query={"query": {"bool": {"filter": filters}}},
                    _source=["user_id", "video_id", "@timestamp"], size=5000):
        source = hit["_source"]
        rows.append(user_index.setdefault(source["user_id"], len(user_index)))
        columns.append(video_index.setdefault(source["video_id"], len(video_index)))
        ts = source["@timestamp"]
        first_ts = ts if first_ts is None or ts < first_ts else first_ts
        last_ts = ts if last_ts is None or ts > last_ts else last_ts

    data = np.ones(len(rows), dtype=np.float32)
    matrix = sp.csr_matrix((data, (rows, columns)), shape=(len(user_index), len(video_index)), dtype=np.float32)
    matrix.sum_duplicates()
    return WatchMatrix(matrix, list(user_index), list(video_index), first_ts, last_ts, len(rows))


def factorize(matrix: sp.csr_matrix, algorithm: Algorithm, factors: int, iterations: int,
              regularization: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (user factors (U, F), item factors (I, F)) as float32; F = ``factors``.

    BPR's last column is an item bias with a constant 1 on the user side, so BPR
    learns ``factors - 1`` latent factors. Raises CFModelError for NaN or
    infinite factors.
    """
    from threadpoolctl import threadpool_limits

    if algorithm not in ("als", "bpr"):
        raise CFModelError(f"unknown algorithm {algorithm!r}; expected 'als' or 'bpr'")
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    # implicit parallelizes itself, and a BLAS thread pool on top slows ALS down.
    with threadpool_limits(1, "blas"):
        if algorithm == "als":
            model = AlternatingLeastSquares(factors=factors, regularization=regularization, iterations=iterations,
                                            random_state=seed)
        else:
            model = BayesianPersonalizedRanking(factors=factors - 1, regularization=regularization,
                                                iterations=iterations, random_state=seed)
        model.fit(matrix, show_progress=False)
    user_factors = np.asarray(model.user_factors, dtype=np.float32)
    item_factors = np.asarray(model.item_factors, dtype=np.float32)
    check_factors(user_factors, item_factors, factors)
    return user_factors, item_factors


def check_factors(user_factors: np.ndarray, item_factors: np.ndarray, factors: int) -> None:
    """Raise CFModelError unless both factor matrices are finite with ``factors`` columns."""
    for name, values in (("user", user_factors), ("item", item_factors)):
        if values.ndim != 2 or values.shape[1] != factors:
            raise CFModelError(f"{name} factors have shape {values.shape}, expected (n, {factors}) "
                               f"to match VIDREC_CF_DIMS")
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise CFModelError(f"{name} factors contain {bad} NaN or infinite values; the model is rejected. "
                               "Lower the learning rate or raise the regularization and train again")


def model_version(algorithm: str, matrix: WatchMatrix, now: datetime | None = None) -> str:
    """Return ``<algorithm>-<UTC time>-<8 hex digits of the matrix's shape and events>``."""
    now = now or datetime.now(timezone.utc)
    digest = hashlib.sha1(f"{matrix.matrix.shape}|{matrix.events}|{matrix.first_ts}|{matrix.last_ts}".encode())
    return f"{algorithm}-{now.strftime('%Y%m%dT%H%M%S')}-{digest.hexdigest()[:8]}"


def _updates(alias: str, ids: list[str], vectors: np.ndarray, version: str) -> Iterator[dict[str, Any]]:
    for entity_id, vector in zip(ids, vectors):
        yield {"_op_type": "update", "_index": alias, "_id": entity_id,
               "doc": {"cf_embedding": vector.tolist(), "cf_model_version": version}}


def train_cf(client: Elasticsearch, settings: Settings, algorithm: Algorithm = "als", since: str | None = None,
             until: str | None = None, iterations: int = 15, regularization: float = 0.05, seed: int = 13,
             show_progress: bool = True) -> CFReport:
    """Train factors on the watches in [since, until) and write them to the videos and users indices.

    Raises CFModelError when the window has no watches or the factors are not finite.
    A video or user that has no document gets no factor; each such id is listed in
    the report's ``failures``.
    """
    started = time.perf_counter()
    watches = read_watch_matrix(client, settings, since, until)
    if watches.events == 0:
        raise CFModelError(f"no watch events in {settings.alias('watch-events')} between {since or 'the start'} "
                           f"and {until or 'now'}; load events first")
    logger.info("training %s: %d users x %d videos, %d watch events", algorithm, len(watches.user_ids),
                len(watches.video_ids), watches.events)
    user_factors, item_factors = factorize(watches.matrix, algorithm, settings.cf_dims, iterations,
                                           regularization, seed)
    version = model_version(algorithm, watches)

    videos = bulk_write(client, _updates(settings.alias("videos"), watches.video_ids, item_factors, version),
                        settings, description="video factors", total=len(watches.video_ids),
                        show_progress=show_progress)
    users = bulk_write(client, _updates(settings.alias("users"), watches.user_ids, user_factors, version),
                       settings, description="user factors", total=len(watches.user_ids),
                       show_progress=show_progress)
    client.indices.refresh(index=[settings.alias("videos"), settings.alias("users")])

    report = CFReport(
        model_version=version, algorithm=algorithm, factors=settings.cf_dims, window_start=since,
        window_end=until, first_event=watches.first_ts, last_event=watches.last_ts, events=watches.events,
        users=len(watches.user_ids), videos=len(watches.video_ids), seconds=time.perf_counter() - started,
        videos_written=videos.written, users_written=users.written,
        failures=_failure_lines(videos) + _failure_lines(users),
    )
    write_manifest(settings, report)
    logger.info("cf model %s written: %d video and %d user factors, %d failures", version, videos.written,
                users.written, videos.failed + users.failed)
    return report


def _failure_lines(result: BulkResult) -> list[str]:
    return [f"{failure.index} id={failure.id} status={failure.status}: {failure.reason}" for failure in result.failures]


def write_manifest(settings: Settings, report: CFReport) -> Path:
    """Write the report as ``<model_dir>/cf/<version>.json`` and return its path."""
    folder = settings.model_dir / "cf"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report.model_version}.json"
    payload = asdict(report) | {"written_at": format_ts(int(time.time() * 1000))}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
