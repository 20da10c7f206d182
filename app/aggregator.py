"""The aggregator: scores a request's candidates on ranking workers, or in-process without workers.

A request's N candidates are split into B = min(W, ceil(N / VIDREC_WORKER_MIN_BATCH))
contiguous batches, W being the number of configured workers. Each batch goes
to a worker chosen by ``VIDREC_WORKER_POLICY``:

- ``round_robin``: the next worker in turn;
- ``least_loaded``: the worker with the fewest requests this process has in
  flight to it, ties broken by the lower moving average of its response time;
- ``hash``: every batch of the request goes to the worker that a stable hash
  of the request parameter ``VIDREC_WORKER_HASH_KEY`` (user id by default)
  maps to, so one user's requests reach one worker's caches.

A batch that fails, or has no answer after ``VIDREC_WORKER_TIMEOUT_MS``, is
sent once more to another worker while the first call keeps running; the
first answer wins. When some batch has no scores by ``VIDREC_RANKING_DEADLINE_MS``
the whole request keeps the fused candidate order and is marked degraded.
A worker that failed is skipped for ``DOWN_COOLDOWN_S`` unless all are down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import httpx
import numpy as np

from app import wire
from app.candidates.types import Candidate
from app.settings import Settings

logger = logging.getLogger(__name__)

DOWN_COOLDOWN_S = 2.0
EWMA_ALPHA = 0.2
STATUS_POLL_S = 5.0


@dataclass
class WorkerState:
    """State of one worker as seen from this process: its own calls and the worker's /status."""

    url: str
    outstanding: int = 0
    ewma_ms: float = 0.0
    model_version: str | None = None
    calls: int = 0
    failures: int = 0
    down_until: float = 0.0
    status_ok: bool | None = None  # whether the last /status poll succeeded; None before the first


@dataclass
class RankResult:
    """Scores for a request's candidates, in candidate order, or None when the fused order must stand."""

    scores: np.ndarray | None
    model_version: str | None
    degraded: bool
    workers: list[str] = field(default_factory=list)  # URL of the worker that scored each batch
    retries: int = 0
    dispatch_ms: float = 0.0  # ranking stage time minus the workers' own scoring time
    scoring_ms: float = 0.0  # the slowest batch's time inside its worker


class Aggregator:
    """Fan scoring out to ranking workers; score in-process when ``VIDREC_WORKER_URLS`` is empty."""

    def __init__(self, settings: Settings, local_scorer: Any = None) -> None:
        self.settings = settings
        self.workers = [WorkerState(url) for url in settings.worker_urls]
        self.local_scorer = local_scorer
        self._turn = 0
        self._client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task | None = None
        self._versions_logged: frozenset[str] = frozenset()
        self._warned_no_scorer = False

    @property
    def in_process(self) -> bool:
        return not self.workers

    async def start(self) -> None:
        """Open the HTTP client and begin polling worker status (model versions)."""
        if self.workers:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(5.0),
                limits=httpx.Limits(max_connections=64 * len(self.workers), max_keepalive_connections=64),
            )
            versions = await self.poll_status()
            self._poller = asyncio.create_task(self._poll_forever())
            answering = sum(version is not None for version in versions.values())
            logger.info("aggregator ready: %d workers (%d responding to /status), policy %s", len(self.workers),
                        answering, self.settings.worker_policy)
        else:
            logger.info("aggregator ready: in-process scoring")

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
        if self._client:
            await self._client.aclose()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(STATUS_POLL_S)
            await self.poll_status()

    async def poll_status(self) -> dict[str, str | None]:
        """Read every worker's /status; record its model version and log when versions differ.

        Returns each worker's URL with the version it serves, None for a worker whose /status failed.
        A worker whose /status starts or stops failing is logged once per change, not at every poll: one that
        is still loading its model at the API's start is logged at INFO, one that stops later at WARNING.
        """
        async def one(worker: WorkerState) -> str | None:
            assert self._client is not None
            try:
                response = await self._client.get(f"{worker.url}/status", timeout=1.0)
                response.raise_for_status()
                version = response.json().get("model_version")
            except (httpx.HTTPError, ValueError) as error:
                if worker.status_ok is None:
                    logger.info("worker %s is not responding to /status yet (%r); polling every %.0f s",
                                worker.url, error, STATUS_POLL_S)
                elif worker.status_ok:
                    logger.warning("worker %s /status failed: %r; polling every %.0f s", worker.url, error,
                                   STATUS_POLL_S)
                worker.status_ok = False
                return None
            if worker.status_ok is False:
                logger.info("worker %s responds to /status again", worker.url)
            worker.status_ok = True
            self._note_version(worker, version)
            return version

        versions = await asyncio.gather(*(one(worker) for worker in self.workers))
        return {worker.url: version for worker, version in zip(self.workers, versions)}

    def _note_version(self, worker: WorkerState, version: str | None) -> None:
        if version is None or version == worker.model_version:
            return
        if worker.model_version is not None:
            logger.info("worker %s changed model old_version=%s new_version=%s",
                        worker.url, worker.model_version, version)
        worker.model_version = version
        versions = frozenset(w.model_version for w in self.workers if w.model_version)
        if len(versions) > 1 and versions != self._versions_logged:
            logger.warning("ranking workers serve different model versions: %s",
                           ", ".join(f"{w.url}={w.model_version}" for w in self.workers))
        self._versions_logged = versions if len(versions) > 1 else frozenset()

    # Worker choice.

    def _available(self, exclude: set[int]) -> list[int]:
        now = time.monotonic()
        candidates = [i for i in range(len(self.workers)) if i not in exclude]
        up = [i for i in candidates if self.workers[i].down_until <= now]
        return up or candidates

    def choose(self, hash_key: str | None, exclude: set[int] = frozenset()) -> int | None:  # type: ignore[assignment]
        """Return the index of the worker for the next batch, or None when every worker is excluded."""
        available = self._available(set(exclude))
        if not available:
            return None
        policy = self.settings.worker_policy
        if policy == "hash" and hash_key is not None:
            home = zlib.crc32(hash_key.encode()) % len(self.workers)
            # The home worker, else the next ones around the ring.
            for step in range(len(self.workers)):
                index = (home + step) % len(self.workers)
                if index in available:
                    return index
        if policy == "least_loaded":
            self._turn += 1
            return min(available, key=lambda i: (self.workers[i].outstanding, self.workers[i].ewma_ms,
                                                 (i - self._turn) % len(self.workers)))
        self._turn += 1
        return available[self._turn % len(available)]

    # Scoring.

    async def rank(self, request_id: str, user_id: str, profile: dict[str, Any],
                   candidates: Sequence[Candidate], request_time: datetime,
                   hash_key: str | None = None) -> RankResult:
        """Score ``candidates``; a worker's failure or timeout gives a degraded result, not an exception."""
        if not candidates:
            return RankResult(np.zeros(0, dtype=np.float32), self._any_version(), degraded=False)
        started = time.perf_counter()
        deadline = started + self.settings.ranking_deadline_ms / 1000
        if self.in_process:
            result = await self._rank_in_process(request_id, profile, candidates, request_time, deadline)
        else:
            result = await self._rank_on_workers(request_id, user_id, profile, candidates, request_time,
                                                 deadline, hash_key if hash_key is not None else user_id)
        result.dispatch_ms = max(0.0, (time.perf_counter() - started) * 1000 - result.scoring_ms)
        if result.scores is not None:
            result.scores = np.nan_to_num(result.scores.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return result

    def _any_version(self) -> str | None:
        if self.in_process:
            return getattr(self.local_scorer, "model_version", None)
        return next((w.model_version for w in self.workers if w.model_version), None)

    async def _rank_in_process(self, request_id: str, profile: dict[str, Any], candidates: Sequence[Candidate],
                               request_time: datetime, deadline: float) -> RankResult:
        scorer = self.local_scorer
        if scorer is None:
            if not self._warned_no_scorer:
                logger.warning("no ranking model is loaded and VIDREC_WORKER_URLS is empty: responses keep the "
                               "fused candidate order; train one with `vidrec train ranker`")
                self._warned_no_scorer = True
            return RankResult(None, None, degraded=True)
        started = time.perf_counter()
        try:
            scores = await asyncio.wait_for(
                asyncio.to_thread(scorer.score, profile, list(candidates), request_time),
                timeout=max(0.001, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            logger.warning("in-process scoring missed the deadline of %.0f ms for request_id=%s",
                           self.settings.ranking_deadline_ms, request_id)
            return RankResult(None, scorer.model_version, degraded=True)
        except Exception:
            logger.exception("in-process scoring failed for request_id=%s", request_id)
            return RankResult(None, scorer.model_version, degraded=True)
        return RankResult(np.asarray(scores, dtype=np.float32), scorer.model_version, degraded=False,
                          workers=["in-process"], scoring_ms=(time.perf_counter() - started) * 1000)

    async def _rank_on_workers(self, request_id: str, user_id: str, profile: dict[str, Any],
                               candidates: Sequence[Candidate], request_time: datetime, deadline: float,
                               hash_key: str) -> RankResult:
        n = len(candidates)
        n_batches = max(1, min(len(self.workers), math.ceil(n / self.settings.worker_min_batch)))
        bounds = np.linspace(0, n, n_batches + 1).astype(int)
        batches = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        outcomes = await asyncio.gather(*(
            self._score_batch(wire.ScoreRequest(request_id, user_id, profile, list(candidates[lo:hi]), request_time),
                              hi - lo, deadline, hash_key)
            for lo, hi in batches))

        retries = sum(outcome.retries for outcome in outcomes)
        if any(outcome.response is None for outcome in outcomes):
            missing = sum(1 for outcome in outcomes if outcome.response is None)
            logger.warning("request_id=%s user_id=%s: %d of %d batches had no scores within %.0f ms; "
                           "answering in fused order", request_id, user_id, missing, len(outcomes),
                           self.settings.ranking_deadline_ms)
            return RankResult(None, self._any_version(), degraded=True,
                              workers=[o.worker_url or "" for o in outcomes], retries=retries)

        scores = np.concatenate([outcome.response.scores for outcome in outcomes])  # type: ignore[union-attr]
        versions = sorted({outcome.response.model_version for outcome in outcomes})  # type: ignore[union-attr]
        if len(versions) > 1:
            logger.warning("request_id=%s was scored by different model versions %s", request_id, versions)
        return RankResult(scores, "+".join(versions), degraded=False,
                          workers=[o.worker_url or "" for o in outcomes], retries=retries,
                          scoring_ms=max(o.response.elapsed_ms for o in outcomes))  # type: ignore[union-attr]

    async def _score_batch(self, request: wire.ScoreRequest, n: int, deadline: float,
                           hash_key: str) -> "_BatchOutcome":
        body = wire.encode_request(request)
        first = self.choose(hash_key)
        tried = {first}
        attempts = {asyncio.create_task(self._call(first, body, n, request.request_id)): first}
        retries = 0
        try:
            while attempts:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                # Until a retry is out, wait only for the per-worker timeout, then hedge on another worker.
                wait_s = remaining if retries else min(remaining, self.settings.worker_timeout_ms / 1000)
                done, _ = await asyncio.wait(attempts, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    index = attempts.pop(task)
                    response = task.result()
                    if response is not None:
                        return _BatchOutcome(response, self.workers[index].url, retries)
                if retries == 0:
                    second = self.choose(hash_key, exclude=tried)
                    retries = 1
                    if second is not None:
                        tried.add(second)
                        logger.info("request_id=%s: retrying a batch on %s after %s %s", request.request_id,
                                    self.workers[second].url, self.workers[first].url,  # type: ignore[index]
                                    "failed" if done else "timed out")
                        attempts[asyncio.create_task(self._call(second, body, n, request.request_id))] = second
            return _BatchOutcome(None, None, retries)
        finally:
            for task in attempts:
                task.cancel()

    async def _call(self, index: int, body: bytes, n: int, request_id: str) -> wire.ScoreResponse | None:
        """POST one batch to a worker; return None (logged) when the call or the decoding fails."""
        assert self._client is not None
        worker = self.workers[index]
        worker.outstanding += 1
        worker.calls += 1
        started = time.perf_counter()
        try:
            response = await self._client.post(f"{worker.url}/score", content=body,
                                               headers={"content-type": wire.CONTENT_TYPE})
            response.raise_for_status()
            decoded = wire.decode_response(response.content, n)
        except asyncio.CancelledError:
            # A slower duplicate of an answered batch: count its time so the moving average sees the slowness.
            self._observe(worker, (time.perf_counter() - started) * 1000)
            raise
        except (httpx.HTTPError, wire.WireError) as error:
            worker.failures += 1
            worker.down_until = time.monotonic() + DOWN_COOLDOWN_S
            logger.warning("worker %s failed for request_id=%s: %r", worker.url, request_id, error)
            return None
        finally:
            worker.outstanding -= 1
        self._observe(worker, (time.perf_counter() - started) * 1000)
        self._note_version(worker, decoded.model_version)
        return decoded

    @staticmethod
    def _observe(worker: WorkerState, elapsed_ms: float) -> None:
        worker.ewma_ms = elapsed_ms if worker.ewma_ms == 0 else (
            (1 - EWMA_ALPHA) * worker.ewma_ms + EWMA_ALPHA * elapsed_ms)


@dataclass
class _BatchOutcome:
    response: wire.ScoreResponse | None
    worker_url: str | None
    retries: int
