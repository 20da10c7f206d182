"""`GET /v1/search`: personalized video search (BM25 and kNN fused), reranked by the ranking model."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from app.candidates.channels import MAX_QUERY_CHARS
from app.candidates.search import QueryEncoder, check_query, search_videos
from app.search_rerank import rerank_search
from app.heap import freeze_long_lived
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
                freeze_long_lived("loading the query embedding model")
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
    explain: bool = Query(False, description="add each item's sources (list, rank and score), fused score and "
                                             "model score"),
    rerank: bool = Query(True, description="rerank the fused hits with the ranking model; false returns the "
                                           "fused order"),
) -> dict[str, Any]:
    """Search videos by text, fusing BM25 and the query embedding's kNN, personalized when user_id is given.

    The ranking model reranks the top VIDREC_SEARCH_RERANK_WINDOW fused hits
    (at least k) with weight VIDREC_SEARCH_RERANK_WEIGHT (see app.search_rerank).
    Item ``score`` is the blended score when the model reranked the hits, else
    the fused score. When scoring fails the fused order is kept, marked degraded.
    """
    try:
        check_query(q)
    except ValueError as error:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "q"), "msg": str(error),
                                       "input": q}]) from None

    settings = request.app.state.settings
    weight = settings.search_rerank_weight if rerank else 0.0
    # Reranked searches share the recommendations' in-flight limit, because both wait on the same scorer.
    # Past the limit the search keeps the fused order, marked degraded.
    recommender = getattr(request.app.state, "recommender", None)
    limit = settings.max_inflight_recommendations
    shed = bool(weight > 0 and recommender is not None and limit and recommender.inflight >= limit)
    if shed:
        weight = 0.0
        recommender.shed_count += 1
    encoder = await query_encoder(request)
    result = await search_videos(request.app.state.es, settings, encoder, q, k=k, user_id=user_id,
                                 whole_profile=weight > 0)
    if recommender is not None:
        recommender.inflight += 1
    try:
        # The lifespan start creates the aggregator. Without it the fused order is kept, marked degraded.
        reranked = await rerank_search(result.fused, k, result.profile,
                                       getattr(request.app.state, "aggregator", None), weight,
                                       settings.search_rerank_window, settings.candidates_rrf_k,
                                       result.request_id, user_id, request_time=settings.now())
    finally:
        if recommender is not None:
            recommender.inflight -= 1
    if shed:
        logger.debug("search request_id=%s user_id=%s shed: the fused order is kept", result.request_id, user_id)

    items = []
    for rank, hit in enumerate(reranked.hits, start=1):
        candidate = hit.candidate
        item: dict[str, Any] = {"video_id": candidate.video_id, "rank": rank, "score": _finite(hit.score),
                                "title": result.titles.get(candidate.video_id, "")}
        if explain:
            item["sources"] = [{"channel": source.channel, "rank": source.rank, "score": _finite(source.score)}
                               for source in candidate.sources]
            item["fused_score"] = _finite(candidate.fused_score)
            item["model_score"] = hit.model_score
        items.append(item)
    logger.debug("search request_id=%s user_id=%s k=%d took_ms=%.1f ranking_ms=%.1f", result.request_id, user_id,
                 k, result.took_ms, reranked.ranking_ms)
    return {"request_id": result.request_id, "user_id": user_id, "model_version": reranked.model_version,
            "cold_start": result.cold_start, "degraded": result.degraded or reranked.degraded or shed,
            "items": items}


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0
