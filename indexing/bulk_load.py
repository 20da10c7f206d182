"""Bulk writes with the official client's ``streaming_bulk`` helper.

Requests are cut by bytes (``bulk_chunk_bytes``) and documents
(``bulk_chunk_docs``). A document rejected with HTTP 429 is retried up to
``bulk_max_retries`` times, waiting ``min(bulk_max_backoff_s, 1 s * 2**retry)``
before retry ``retry`` (0-based); any other failure is collected with its id,
status and reason and reported, and the rest of the load goes on. Every write
sets ``require_alias=true``, so writing to an alias that does not exist is an
error instead of a new stray index of that name.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from elasticsearch import Elasticsearch
from elasticsearch.helpers import streaming_bulk
from tqdm import tqdm

from app.settings import Settings
from indexing.indices import concrete_indices

logger = logging.getLogger(__name__)

MAX_REPORTED_FAILURES = 1000


@dataclass(frozen=True)
class BulkFailure:
    """One document the server did not store."""

    id: str | None
    index: str | None
    status: int | None
    reason: str


@dataclass
class BulkResult:
    """Counts of one bulk write: created, updated, duplicates (``create`` of an existing id), failed."""

    created: int = 0
    updated: int = 0
    duplicates: int = 0
    failed: int = 0
    failures: list[BulkFailure] = field(default_factory=list)
    created_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return self.created + self.updated

    def merge(self, other: "BulkResult") -> None:
        self.created += other.created
        self.updated += other.updated
        self.duplicates += other.duplicates
        self.failed += other.failed
        self.failures.extend(other.failures[: max(0, MAX_REPORTED_FAILURES - len(self.failures))])
        self.created_ids.extend(other.created_ids)
        self.seconds += other.seconds


def _failure_reason(info: dict[str, Any]) -> str:
    error = info.get("error") or info.get("exception") or "unknown error"
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
    return str(error)


def bulk_write(client: Elasticsearch, actions: Iterable[dict[str, Any]], settings: Settings,
               description: str = "bulk", total: int | None = None, show_progress: bool = True,
               keep_created_ids: bool = False, require_alias: bool = True) -> BulkResult:
    """Write ``actions`` (``streaming_bulk`` action dicts) and return the counts and failures.

    A ``create`` rejected with 409 counts as a duplicate: the document with that id
    already exists, which is how a reloaded file or a retried post is stored once.
    ``keep_created_ids`` collects the ids that were newly created. ``require_alias=False``
    is only for writes to a concrete index, such as a reindex into the next version.
    """
    result = BulkResult()
    started = time.perf_counter()
    stream = streaming_bulk(
        client, actions,
        chunk_size=settings.bulk_chunk_docs, max_chunk_bytes=settings.bulk_chunk_bytes,
        raise_on_error=False, raise_on_exception=False,
        max_retries=settings.bulk_max_retries, initial_backoff=1.0, max_backoff=settings.bulk_max_backoff_s,
        yield_ok=True, require_alias=require_alias,
    )
    with tqdm(total=total, desc=description, unit="doc", disable=not show_progress) as progress:
        for ok, item in stream:
            operation, info = next(iter(item.items()))
            status = info.get("status")
            if ok and status == 201:
                result.created += 1
                if keep_created_ids:
                    result.created_ids.append(str(info.get("_id")))
            elif ok:
                result.updated += 1
            elif operation == "create" and status == 409:
                result.duplicates += 1
            else:
                result.failed += 1
                if len(result.failures) < MAX_REPORTED_FAILURES:
                    result.failures.append(
                        BulkFailure(info.get("_id"), info.get("_index"), status, _failure_reason(info))
                    )
            progress.update(1)
    result.seconds = time.perf_counter() - started
    if result.failures:
        first = result.failures[0]
        logger.warning("%s: %d documents failed; first: id=%s index=%s status=%s reason=%s", description,
                       result.failed, first.id, first.index, first.status, first.reason)
    return result


@contextmanager
def refresh_disabled(client: Elasticsearch, aliases: Iterable[str]) -> Iterator[None]:
    """Set ``refresh_interval: -1`` on the indices behind ``aliases`` for the block, then restore and refresh.

    The previous value is restored even when the block raises. An unset value is
    restored as unset (null), which means the server default of 1 s.
    """
    indices = sorted({index for alias in aliases for index in concrete_indices(client, alias)})
    previous: dict[str, Any] = {}
    for index in indices:
        body = client.indices.get_settings(index=index, name="index.refresh_interval").body
        previous[index] = body.get(index, {}).get("settings", {}).get("index", {}).get("refresh_interval")
        client.indices.put_settings(index=index, settings={"index": {"refresh_interval": "-1"}})
    try:
        yield
    finally:
        for index in indices:
            client.indices.put_settings(index=index, settings={"index": {"refresh_interval": previous[index]}})
        if indices:
            client.indices.refresh(index=",".join(indices))


def count(client: Elasticsearch, alias: str, query: dict[str, Any] | None = None) -> int:
    """Return the number of documents behind ``alias`` (matching ``query`` when given)."""
    return int(client.count(index=alias, query=query).body["count"]) if query else int(
        client.count(index=alias).body["count"])
