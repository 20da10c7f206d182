"""The FastAPI application: health routes, body-size limit, and the `/v1` routers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.es_client import async_cluster_health, make_async_client
from app.heap import freeze_long_lived, thaw
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. Raises SettingsError when API keys are missing outside local development."""
    settings = settings or get_settings()
    settings.require_api_keys()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from app.recommend import start_recommender, stop_recommender

        app.state.es = make_async_client(settings)
        logger.info("API starting: es_url=%s index_prefix=%s", settings.es_url, settings.index_prefix)
        await start_recommender(app)
        freeze_long_lived("API startup")
        try:
            yield
        finally:
            await stop_recommender(app)
            await app.state.es.close()
            thaw()
            logger.info("API stopped")

    app = FastAPI(title="vidrec", version="0.1.0", lifespan=lifespan,
                  description="Video recommendations and search on Elasticsearch.")
    app.state.settings = settings

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):  # type: ignore[no-untyped-def]
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return JSONResponse(
                status_code=413,
                content={"detail": f"request body of {declared} bytes exceeds the limit of "
                                   f"{settings.max_body_bytes} bytes (VIDREC_MAX_BODY_BYTES)"},
            )
        return await call_next(request)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: Elasticsearch answers cluster health with yellow or green, or the popular fallback
        list is loaded, so recommendations can still be answered (degraded) while the node is down."""
        health = await async_cluster_health(request.app.state.es)
        es_status = health.get("status") if health else "unreachable"
        popular = request.app.state.popular
        dependencies = {"elasticsearch": es_status,
                        "popular_fallback": f"{len(popular.videos)} videos from {popular.loaded_from}"
                        if popular.loaded else "not loaded"}
        down = [] if es_status in {"yellow", "green"} else ["elasticsearch"]
        aggregator = request.app.state.aggregator
        if aggregator.workers:
            versions = await aggregator.poll_status()
            dependencies["workers"] = {url: version or "unreachable" for url, version in versions.items()}
            down += [f"worker {url}" for url, version in versions.items() if version is None]
        # Without workers, responses keep the fused order. Without Elasticsearch, they come from the popular list.
        ready = "elasticsearch" not in down or popular.loaded
        return JSONResponse(
            status_code=200 if ready else 503,
            content={"status": "ready" if ready else "not ready", "degraded": bool(down) and ready,
                     "down": down, "dependencies": dependencies},
        )

    for router in _routers():
        app.include_router(router)
    return app


def _routers() -> list:
    """Return the `/v1` routers that exist in this build."""
    import importlib

    routers = []
    for module_name in ("app.routes.events", "app.routes.videos", "app.routes.users",
                        "app.routes.search", "app.routes.recommendations"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        routers.append(module.router)
    return routers
