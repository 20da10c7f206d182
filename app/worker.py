"""`vidrec worker`: a ranking worker process that scores candidate batches for the aggregator.

The worker loads the scorer (the model and the video feature table) once,
pins torch and BLAS to ``VIDREC_WORKER_THREADS`` threads (one by default), and serves:

- ``POST /score``: a msgpack body (``app.wire``) in, float32 scores out;
- ``GET /status``: the model version it serves and its load (requests in progress);
- ``POST /reload``: loads a model version (JSON ``{"version": ...}``, default
  ``VIDREC_RANKER_VERSION``) beside the current one and swaps it in, so
  the current model keeps scoring during the load. Needs the write key.

``/score`` has no key: bind workers to loopback or a private network only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from app import wire
from app.heap import freeze_long_lived, thaw
from app.security import require_write_key
from app.settings import Settings
from ranking.scorer_protocol import Scorer

logger = logging.getLogger(__name__)

MODEL_RETRY_S = 30.0


class ScorerLoadError(RuntimeError):
    """The configured scorer could not be loaded; the message names the loader and the version."""


class ReloadInProgress(RuntimeError):
    """A model load is already running on this worker."""


def load_configured_scorer(settings: Settings, version: str | None = None) -> Scorer:
    """Load a scorer with the loader named by ``VIDREC_SCORER_LOADER`` (``module:function``)."""
    version = version or settings.ranker_version
    module_name, _, function_name = settings.scorer_loader.partition(":")
    if not module_name or not function_name:
        raise ScorerLoadError(f"VIDREC_SCORER_LOADER={settings.scorer_loader!r} is invalid: "
                              "expected module:function, for example ranking.scorer:load_scorer")
    try:
        loader = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ScorerLoadError(f"scorer loader {settings.scorer_loader} is not importable: {error}") from error
    try:
        return loader(settings, version)
    except Exception as error:  # the loader's own errors vary (missing files, bad artifacts)
        raise ScorerLoadError(f"loading ranking model version {version!r} from {settings.model_dir} "
                              f"with {settings.scorer_loader} failed: {error}") from error


def warm_up(scorer: Scorer) -> None:
    """Score one cold-start batch of unknown ids, so the first real request does not pay for lazy
    initialisation (torch kernels, memory maps)."""
    from datetime import datetime, timezone

    from app.candidates.types import Candidate

    scorer.score({}, [Candidate(video_id=f"warm-up-{i}") for i in range(64)], datetime.now(timezone.utc))


def load_warm_scorer(settings: Settings, version: str | None = None) -> Scorer:
    """Load a scorer with ``load_configured_scorer`` and warm it up before it serves."""
    scorer = load_configured_scorer(settings, version)
    warm_up(scorer)
    return scorer


def pin_threads(threads: int) -> None:
    """Limit BLAS and torch to ``threads`` threads (torch: one inter-op thread), so workers share cores.

    The environment variables take effect for libraries imported afterwards;
    torch is pinned here only if the scorer imported it.
    """
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)
    if "torch" not in sys.modules:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        # Allowed only before the first parallel torch operation in the process.
        pass


def model_dir_signature(model_dir: Path) -> tuple[tuple[str, float], ...]:
    """Return the names and modification times of the entries of ``model_dir`` (empty when it is missing)."""
    try:
        return tuple(sorted((entry.name, entry.stat().st_mtime) for entry in model_dir.iterdir()))
    except FileNotFoundError:
        return ()


def create_worker_app(settings: Settings, worker_id: str | None = None, delay_ms: float = 0.0,
                      watch_s: float = 0.0) -> FastAPI:
    """Build the worker's FastAPI app.

    ``delay_ms`` adds a sleep to each batch (load tests of the policies). With ``watch_s`` > 0 the worker
    checks ``VIDREC_MODEL_DIR`` that often and, when its entries changed, loads ``VIDREC_RANKER_VERSION``
    again and swaps it in if the version differs from the one served.
    """
    worker_id = worker_id or f"worker-{os.getpid()}"
    executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="score")
    state: dict[str, Any] = {"scorer": None, "outstanding": 0, "served": 0, "failed": 0,
                             "reloading": False, "last_reload_error": None}

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        pin_threads(settings.worker_threads)
        await load_or_wait()
        retry = None if state["scorer"] else asyncio.create_task(retry_load())
        watcher = asyncio.create_task(watch_model_dir()) if watch_s > 0 else None
        yield
        for task in (retry, watcher):
            if task:
                task.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        thaw()
        logger.info("worker %s stopped after %d batches", worker_id, state["served"])

    async def load_or_wait() -> None:
        started = time.perf_counter()
        try:
            state["scorer"] = await asyncio.get_running_loop().run_in_executor(
                executor, load_warm_scorer, settings, None)
        except ScorerLoadError as error:
            # The worker stays up without a model, and /score returns 503 until a load succeeds.
            logger.error("worker %s has no model yet, retrying every %.0f s or on POST /reload: %s",
                         worker_id, MODEL_RETRY_S, error)
            return
        pin_threads(settings.worker_threads)
        freeze_long_lived(f"loading model_version={state['scorer'].model_version}")
        logger.info("worker %s serving model_version=%s threads=%d delay_ms=%.0f (loaded in %.1f s)",
                    worker_id, state["scorer"].model_version, settings.worker_threads, delay_ms,
                    time.perf_counter() - started)

    async def retry_load() -> None:
        while state["scorer"] is None:
            await asyncio.sleep(MODEL_RETRY_S)
            if state["scorer"] is None and not state["reloading"]:
                await load_or_wait()

    async def swap_in(version: str | None, loaded: Scorer | None = None) -> tuple[str | None, Scorer]:
        """Load ``version`` (or warm up ``loaded``) beside the current scorer, then swap.

        Returns (previous version, new scorer). Raises ScorerLoadError (the current scorer stays) or
        ReloadInProgress.
        """
        if state["reloading"]:
            raise ReloadInProgress(f"worker {worker_id} is already loading a model")
        state["reloading"] = True
        previous = state["scorer"].model_version if state["scorer"] else None
        loop = asyncio.get_running_loop()
        try:
            if loaded is None:
                scorer = await loop.run_in_executor(None, load_warm_scorer, settings, version)
            else:
                await loop.run_in_executor(None, warm_up, loaded)
                scorer = loaded
        except ScorerLoadError as error:
            state["last_reload_error"] = str(error)
            logger.error("worker %s kept model_version=%s: %s", worker_id, previous, error)
            raise
        finally:
            state["reloading"] = False
        state["scorer"] = scorer
        state["last_reload_error"] = None
        logger.info("worker %s swapped model old_version=%s new_version=%s", worker_id, previous,
                    scorer.model_version)
        freeze_long_lived(f"swapping in model_version={scorer.model_version}")
        return previous, scorer

    async def watch_model_dir() -> None:
        seen = model_dir_signature(settings.model_dir)
        while True:
            await asyncio.sleep(watch_s)
            current = model_dir_signature(settings.model_dir)
            if current == seen or state["reloading"]:
                continue
            seen = current
            try:
                candidate = await asyncio.get_running_loop().run_in_executor(
                    None, load_configured_scorer, settings, None)
            except ScorerLoadError as error:
                logger.warning("worker %s: %s changed but no model loads from it: %s", worker_id,
                               settings.model_dir, error)
                continue
            served = state["scorer"].model_version if state["scorer"] else None
            if candidate.model_version != served:
                try:
                    await swap_in(None, loaded=candidate)
                except (ScorerLoadError, ReloadInProgress):
                    pass  # logged by swap_in; the next change tries again

    app = FastAPI(title="vidrec ranking worker", lifespan=lifespan)
    app.state.settings = settings
    app.state.worker = state

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/status")
    async def status() -> dict[str, Any]:
        """Model version, requests in progress, and counters."""
        scorer = state["scorer"]
        return {"worker_id": worker_id, "pid": os.getpid(),
                "model_version": scorer.model_version if scorer else None,
                "outstanding": state["outstanding"], "served": state["served"], "failed": state["failed"],
                "threads": settings.worker_threads, "reloading": state["reloading"],
                "last_reload_error": state["last_reload_error"]}

    @app.post("/score")
    async def score(request: Request) -> Response:
        """Score one batch; the body and the answer are msgpack (``app.wire``)."""
        state["outstanding"] += 1
        started = time.perf_counter()
        try:
            body = await request.body()
            try:
                batch = wire.decode_request(body)
            except wire.WireError as error:
                raise HTTPException(status_code=422, detail=f"invalid scoring request: {error}") from None
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            scorer = state["scorer"]  # one scorer for the whole batch, even if a reload swaps it meanwhile
            if scorer is None:
                raise HTTPException(status_code=503, detail=f"worker {worker_id} has no model loaded "
                                                            f"(request {batch.request_id})")
            try:
                scores = await asyncio.get_running_loop().run_in_executor(
                    executor, scorer.score, batch.profile, batch.candidates, batch.request_time)
            except Exception:
                state["failed"] += 1
                logger.exception("worker %s failed to score request_id=%s user_id=%s (%d candidates)",
                                 worker_id, batch.request_id, batch.user_id, len(batch.candidates))
                raise HTTPException(status_code=500, detail=f"scoring failed for request {batch.request_id}")
            state["served"] += 1
            elapsed_ms = (time.perf_counter() - started) * 1000
            payload = wire.encode_response(wire.ScoreResponse(
                scores=scores, model_version=scorer.model_version, worker_id=worker_id, elapsed_ms=elapsed_ms))
            return Response(content=payload, media_type=wire.CONTENT_TYPE)
        finally:
            state["outstanding"] -= 1

    @app.post("/reload", dependencies=[Depends(require_write_key)])
    async def reload(request: Request) -> JSONResponse:
        """Load a model version beside the current one, then swap; the current one serves meanwhile."""
        body = await request.body()
        version = None
        if body:
            try:
                import json

                version = json.loads(body).get("version")
            except (ValueError, AttributeError):
                raise HTTPException(status_code=422, detail='expected a JSON body {"version": "<model version>"}')
        try:
            previous, scorer = await swap_in(version)
        except ReloadInProgress as error:
            raise HTTPException(status_code=409, detail=str(error)) from None
        except ScorerLoadError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        return JSONResponse({"worker_id": worker_id, "previous_version": previous,
                             "model_version": scorer.model_version})

    return app


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run a ranking worker (scores candidate batches over HTTP)")
    worker.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    worker.add_argument("--port", type=int, default=8100, help="port to bind (default 8100)")
    worker.add_argument("--threads", type=int, default=None,
                        help="torch threads (default VIDREC_WORKER_THREADS, which defaults to 1)")
    worker.add_argument("--worker-id", default=None, help="name reported on /status (default worker-<pid>)")
    worker.add_argument("--delay-ms", type=float, default=0.0,
                        help="sleep added to every batch in milliseconds, to test how policies treat a slow worker")
    worker.add_argument("--watch-s", type=float, default=0.0,
                        help="check VIDREC_MODEL_DIR every this many seconds and swap in a changed model "
                             "without a restart (default 0: only on POST /reload)")
    worker.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    if args.threads is not None:
        settings = settings.model_copy(update={"worker_threads": args.threads})
    worker_id = args.worker_id or f"worker-{args.port}-{uuid.uuid4().hex[:4]}"
    app = create_worker_app(settings, worker_id=worker_id, delay_ms=args.delay_ms, watch_s=args.watch_s)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
