"""Impression logging off the request path: a bounded in-memory buffer written to Elasticsearch in batches.

``log`` only appends to the buffer, so a response never waits for
Elasticsearch. A background task writes up to ``VIDREC_IMPRESSIONS_BATCH_SIZE``
impressions per bulk request every ``VIDREC_IMPRESSIONS_FLUSH_INTERVAL_S``.
Each impression's ``_id`` derives from (request id, video id) and is written
with ``op_type=create``, so a retried batch stores each impression once.

When a bulk request fails (node down, timeout, 429), its impressions go back
to the front of the buffer and the next attempt waits ``min(30, 0.5 * 2**n)``
seconds after the n-th consecutive failure. When the buffer holds
``VIDREC_IMPRESSIONS_BUFFER_SIZE`` impressions, new ones are dropped, counted
in ``dropped`` and logged (at most once per ``DROP_LOG_INTERVAL_S``).
Impressions still buffered when the process stops are flushed once more, and
a count of any left is logged.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
from datetime import datetime, timezone
from typing import Any, Iterable

from elasticsearch import AsyncElasticsearch, ApiError, TransportError

from app.settings import Settings

logger = logging.getLogger(__name__)

DROP_LOG_INTERVAL_S = 10.0
MAX_BACKOFF_S = 30.0
SOURCE = "server"


def impression_id(request_id: str, video_id: str) -> str:
    """Return the event id of one shown item; the same (request, video) pair always gets the same id."""
    return hashlib.sha1(f"impression:{request_id}:{video_id}".encode()).hexdigest()


class ImpressionLogger:
    """Buffer impressions and write them in the background; see the module docstring for guarantees."""

    def __init__(self, client: AsyncElasticsearch, settings: Settings) -> None:
        self.client = client
        self.index = settings.alias("impressions")
        self.batch_size = settings.impressions_batch_size
        self.capacity = settings.impressions_buffer_size
        self.interval_s = settings.impressions_flush_interval_s
        self.buffer: collections.deque[dict[str, Any]] = collections.deque()
        self.written = 0
        self.duplicates = 0
        self.dropped = 0
        self.rejected = 0
        self.failures = 0
        self._last_drop_log = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._lock = asyncio.Lock()

    def log(self, request_id: str, user_id: str, model_version: str | None,
            items: Iterable[tuple[str, float, list[str]]]) -> int:
        """Buffer one response's shown items as (video id, score, channels), position = order; never blocks.

        Returns the number buffered; the rest were dropped because the buffer is full.
        """
        now = datetime.now(timezone.utc).isoformat()
        accepted = 0
        for position, (video_id, score, channels) in enumerate(items, start=1):
            if len(self.buffer) >= self.capacity:
                self._drop(request_id)
                continue
            self.buffer.append({
                "_id": impression_id(request_id, video_id),
                "event_id": impression_id(request_id, video_id),
                "@timestamp": now, "ingested_at": now, "source": SOURCE,
                "user_id": user_id, "video_id": video_id, "request_id": request_id,
                "position": position, "score": float(score), "model_version": model_version or "none",
                "channels": channels,
            })
            accepted += 1
        if len(self.buffer) >= self.batch_size:
            self._wake.set()
        return accepted

    def _drop(self, request_id: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            logger.warning("impression buffer full (%d): dropped impressions of request_id=%s, %d dropped "
                           "since start; Elasticsearch index %s is not keeping up", self.capacity, request_id,
                           self.dropped, self.index)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the background task and try once more to write what is buffered.

        The task is asked to stop (flag and wake-up) rather than cancelled: on Python 3.11, cancelling
        a task inside ``asyncio.wait_for(event.wait(), ...)`` at the moment the timeout fires could leave
        it cancelling forever, which hung the API's shutdown. A task still running after ``timeout_s``
        (a flush waiting on a slow node) is cancelled.
        """
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=timeout_s)
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout=timeout_s)
        except (asyncio.TimeoutError, TransportError, ApiError) as error:
            logger.warning("impression logger closed with %d impressions unwritten to %s: %r",
                           len(self.buffer), self.index, error)

    async def _run(self) -> None:
        consecutive_failures = 0
        while True:
            delay = self.interval_s if consecutive_failures == 0 else min(
                MAX_BACKOFF_S, 0.5 * 2 ** consecutive_failures)
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return  # close() writes what is left
            try:
                await self.flush()
                consecutive_failures = 0
            except (TransportError, ApiError) as error:
                consecutive_failures += 1
                self.failures += 1
                logger.warning("writing impressions to %s failed (attempt %d, %d buffered); retrying in %.1f s: %r",
                               self.index, consecutive_failures, len(self.buffer),
                               min(MAX_BACKOFF_S, 0.5 * 2 ** consecutive_failures), error)

    async def flush(self) -> int:
        """Write everything buffered now; return the number written. Raises on a failed bulk request,
        after putting its impressions back at the front of the buffer."""
        written = 0
        async with self._lock:
            while self.buffer:
                batch = [self.buffer.popleft() for _ in range(min(self.batch_size, len(self.buffer)))]
                try:
                    created, retry = await self._write(batch)
                except BaseException:
                    self.buffer.extendleft(reversed(batch))
                    raise
                written += created
                if retry:
                    self.buffer.extendleft(reversed(retry))
                    raise TransportError(f"{len(retry)} impressions got 429 or 5xx from {self.index}")
        return written

    async def _write(self, batch: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        """Bulk-create ``batch``; return (created, impressions to retry after a 429 or 5xx)."""
        operations: list[dict[str, Any]] = []
        for doc in batch:
            body = {key: value for key, value in doc.items() if key != "_id"}
            operations.extend(({"create": {"_index": self.index, "_id": doc["_id"]}}, body))
        # Each item's status and error are all this reads; the rest of a 1,000-item response is about 150 KB.
        response = await self.client.bulk(operations=operations, refresh=False,
                                          filter_path=["items.*.status", "items.*.error"])
        retry: list[dict[str, Any]] = []
        created = 0
        for doc, item in zip(batch, response["items"]):
            result = item["create"]
            status = result.get("status", 0)
            if status in (200, 201):
                created += 1
            elif status == 409:
                self.duplicates += 1
            elif status == 429 or status >= 500:
                retry.append(doc)
            else:
                self.rejected += 1
                logger.error("impression %s of request_id=%s rejected by %s: %s", doc["_id"], doc["request_id"],
                             self.index, result.get("error"))
        self.written += created
        return created, retry
