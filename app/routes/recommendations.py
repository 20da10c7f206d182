"""GET /v1/users/{user_id}/recommendations: the top k videos for a user, reranked by the ranking model."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from app.recommend import FallbackUnavailable, RecommendOptions
from app.security import require_read_key

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["recommendations"], dependencies=[Depends(require_read_key)])

MAX_K = 500
MAX_EXCLUDE = 1000
MAX_FILTER_CHARS = 128


class SourcePublic(BaseModel):
    channel: str
    rank: int
    score: float


class RecommendationItem(BaseModel):
    video_id: str
    rank: int
    score: float
    title: str
    sources: list[SourcePublic] | None = None
    fused_score: float | None = None


class RecommendationsPublic(BaseModel):
    request_id: str
    user_id: str
    model_version: str | None
    cold_start: bool
    degraded: bool
    items: list[RecommendationItem]


def _unprocessable(parameter: str, value: Any, expected: str) -> HTTPException:
    return HTTPException(status_code=422, detail=[{
        "type": "value_error", "loc": ["query", parameter], "input": value,
        "msg": f"{parameter}={value!r} is invalid: expected {expected}",
    }])


def _parse_k(raw: str) -> int:
    # Parsed here rather than by FastAPI so every message names the accepted range, non-numeric input included.
    expected = f"an integer from 1 to {MAX_K}"
    try:
        k = int(raw)
    except ValueError:
        raise _unprocessable("k", raw, expected) from None
    if not 1 <= k <= MAX_K:
        raise _unprocessable("k", raw, expected)
    return k


def _parse_exclude(values: list[str]) -> tuple[str, ...]:
    # Accept both repeated parameters (exclude=a&exclude=b) and comma-separated lists.
    ids = tuple(part.strip() for value in values for part in value.split(",") if part.strip())
    if len(ids) > MAX_EXCLUDE:
        raise _unprocessable("exclude", f"{len(ids)} ids", f"at most {MAX_EXCLUDE} video ids")
    return ids


@router.get("/users/{user_id}/recommendations", response_model=RecommendationsPublic,
            response_model_exclude_none=True)
async def get_recommendations(
    request: Request,
    user_id: str,
    k: str = Query("100", description=f"number of videos to return, 1 to {MAX_K}"),
    language: str | None = Query(None, max_length=MAX_FILTER_CHARS, description="only videos in this language"),
    category: str | None = Query(None, max_length=MAX_FILTER_CHARS, description="only videos of this category"),
    region: str | None = Query(None, max_length=MAX_FILTER_CHARS,
                               description="only videos allowed in this region (default: the user's region)"),
    exclude: list[str] = Query([], description="video ids never to return (repeat or comma-separate)"),
    explain: bool = Query(False, description="add each item's channels (rank, score) and fused score"),
) -> Response:
    """Return up to k videos for the user, best first; unknown users get a cold-start answer."""
    options = RecommendOptions(k=_parse_k(k), language=language or None, category=category or None,
                               region=region or None, exclude=_parse_exclude(exclude), explain=explain)
    request_id = uuid.uuid4().hex
    try:
        result = await request.app.state.recommender.recommend(user_id, options, request_id)
    except FallbackUnavailable as error:
        logger.error("request_id=%s user_id=%s: %s", request_id, user_id, error)
        raise HTTPException(status_code=503, detail=str(error)) from None
    # Stage timings in the standard Server-Timing header, for clients and load tests.
    timing = ", ".join(f"{stage};dur={ms:.2f}" for stage, ms in result.timings_ms.items())
    # The body already has the response model's shape; returning it as a Response skips a second
    # validation of every item, which cost milliseconds per request at k=100, and orjson encodes it
    # several times faster than json. Scores are finite (the recommender replaces NaN), so orjson's
    # NaN-as-null never applies.
    return Response(orjson.dumps(result.body), media_type="application/json", headers={"Server-Timing": timing})
