"""`PUT`, `GET` and `DELETE /v1/videos/{video_id}`: catalog entries one at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError
from fastapi import APIRouter, Depends, HTTPException, Path, Request

from app.routes.events import load_encoder
from app.security import require_read_key, require_write_key
from app.settings import Settings
from indexing.embed import text_hash, video_text
from indexing.events import VideoIn, video_from_input
from indexing.indices import VERSION_PATTERN
from indexing.records import format_ts

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"])

VIDEO_ID = Path(pattern=r"^[^\s/]{1,256}$", description="video id, 1 to 256 characters without spaces or /")


async def version_indices(client: AsyncElasticsearch, alias: str) -> list[str]:
    """Return every versioned index of ``alias`` (the current one and those kept for rollback)."""
    try:
        names = (await client.indices.get(index=f"{alias}-*", expand_wildcards="open")).body.keys()
    except NotFoundError:
        return []
    return sorted(name for name in names if VERSION_PATTERN.match(name) and name.rsplit("-", 1)[0] == alias)


def video_document(video_id: str, body: VideoIn, settings: Settings) -> tuple[dict[str, Any], str]:
    video = video_from_input(video_id, body, source="api")
    text = video_text(video.title, video.tags, video.description, settings.embedding_max_chars)
    return video.to_source(), text


@router.put("/videos/{video_id}", dependencies=[Depends(require_write_key)])
async def put_video(body: VideoIn, request: Request, video_id: str = VIDEO_ID) -> dict[str, Any]:
    """Create or update a catalog entry and embed its text; statistics and cf_embedding are kept."""
    settings = request.app.state.settings
    document, text = video_document(video_id, body, settings)
    encoder = await load_encoder(request)
    if encoder is None:
        raise HTTPException(status_code=503, detail=f"video {video_id} not stored: the embedding model failed "
                                                    "to load; see the server log")
    vector = (await asyncio.to_thread(encoder.encode, [text]))[0]
    document.update({"text_embedding": vector.tolist(), "text_hash": text_hash(encoder.model_name, text),
                     "embedding_model": encoder.model_name, "updated_at": format_ts(_now_ms())})
    response = await request.app.state.es.update(index=settings.alias("videos"), id=video_id, doc=document,
                                                 doc_as_upsert=True, require_alias=True)
    return {"video_id": video_id, "result": response.body["result"]}


@router.get("/videos/{video_id}", dependencies=[Depends(require_read_key)])
async def get_video(request: Request, video_id: str = VIDEO_ID) -> dict[str, Any]:
    """Return the stored catalog entry, without vectors."""
    settings = request.app.state.settings
    try:
        found = await request.app.state.es.get(index=settings.alias("videos"), id=video_id,
                                               source_excludes=["text_embedding", "cf_embedding"])
    except NotFoundError:
        raise HTTPException(status_code=404, detail=f"video {video_id} not found") from None
    return found.body["_source"]


@router.delete("/videos/{video_id}", dependencies=[Depends(require_write_key)])
async def delete_video(request: Request, video_id: str = VIDEO_ID) -> dict[str, Any]:
    """Mark a video unavailable in the current videos index and in the versions kept for rollback."""
    settings = request.app.state.settings
    client: AsyncElasticsearch = request.app.state.es
    marked = []
    change = {"available": False, "updated_at": format_ts(_now_ms())}
    for index in await version_indices(client, settings.alias("videos")):
        try:
            await client.update(index=index, id=video_id, doc=change, refresh="wait_for")
            marked.append(index)
        except NotFoundError:
            continue
    if not marked:
        raise HTTPException(status_code=404, detail=f"video {video_id} not found")
    logger.info("video %s marked unavailable in %s", video_id, ", ".join(marked))
    return {"video_id": video_id, "available": False, "indices": marked}


def _now_ms() -> int:
    return int(time.time() * 1000)
