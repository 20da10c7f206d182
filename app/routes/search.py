"""`GET /v1/search`: personalized video search (BM25 and kNN fused)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from app.candidates.channels import MAX_QUERY_CHARS
from app.candidates.search import QueryEncoder, check_query, search_videos
from app.security import require_read_key

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_read_key)])

MAX_K = 100


async def query_encoder(request: Request) -> QueryEncoder | None:
    """Return the app's query encoder, loading the embedding model on first use; None when it cannot load."""
    state = request.app.state
    if hasattr(state, "query_encoder"):
        return state.query_encoder
    # One lock per app, made on first use inside its event loop; concurrent first requests load the model once.
    if not hasattr(state, "query_encoder_lock"):
        state.query_encoder_lock = asyncio.Lock()
    async with state.query_encoder_lock:
        if not hasattr(state, "query_encoder"):
            from indexing.embed import Embedder

            try:
                state.query_encoder = await asyncio.to_thread(Embedder, state.settings, show_progress=False)
            except Exception as error:  # search still returns BM25 results, marked degraded
                logger.error("query embedding model failed to load, search returns BM25 results only: %s", error)
                state.query_encoder = None
    return state.query_encoder


@router.get("/search")
async def search(
    request: Request,
    q: str = Query(..., max_length=MAX_QUERY_CHARS, description=f"query text, 1 to {MAX_QUERY_CHARS} characters"),
    user_id: str | None = Query(None, max_length=256, description="personalize for this user; unknown ids are cold-start"),
    k: int = Query(10, ge=1, le=MAX_K, description=f"number of results, 1 to {MAX_K}"),
    explain: bool = Query(False, description="add each item's sources: list, rank and score"),
) -> dict[str, Any]:
    """Search videos by text, fusing BM25 and the query embedding's kNN, personalized when user_id is given."""
    try:
        check_query(q)
    except ValueError as error:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "q"), "msg": str(error),
                                       "input": q}]) from None

    settings = request.app.state.settings
    encoder = await query_encoder(request)
    result = await search_videos(request.app.state.es, settings, encoder, q, k=k, user_id=user_id)

    items = []
    for rank, candidate in enumerate(result.items, start=1):
        item: dict[str, Any] = {"video_id": candidate.video_id, "rank": rank, "score": candidate.fused_score,
                                "title": result.titles.get(candidate.video_id, "")}
        if explain:
            item["sources"] = [{"channel": hit.channel, "rank": hit.rank, "score": hit.score}
                               for hit in candidate.sources]
        items.append(item)
    logger.debug("search request_id=%s user_id=%s k=%d took_ms=%.1f", result.request_id, user_id, k, result.took_ms)
    return {"request_id": result.request_id, "user_id": user_id, "model_version": None,
            "cold_start": result.cold_start, "degraded": result.degraded, "items": items}
