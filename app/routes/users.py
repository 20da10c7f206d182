"""`GET` and `DELETE /v1/users/{user_id}`: inspect a profile, or remove a user and every event of theirs."""

from __future__ import annotations

import logging
from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError
from elasticsearch.helpers import async_bulk, async_scan
from fastapi import APIRouter, Depends, HTTPException, Path, Request

from app.routes.videos import version_indices
from app.security import require_read_key, require_write_key

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["users"])

USER_ID = Path(pattern=r"^[^\s/]{1,256}$", description="user id, 1 to 256 characters without spaces or /")
EVENT_INDICES = ("watch-events", "impressions", "search-queries")


@router.get("/users/{user_id}", dependencies=[Depends(require_read_key)])
async def get_user(request: Request, user_id: str = USER_ID) -> dict[str, Any]:
    """Return the user's serving profile, vectors included."""
    settings = request.app.state.settings
    try:
        found = await request.app.state.es.get(index=settings.alias("users"), id=user_id)
    except NotFoundError:
        raise HTTPException(status_code=404, detail=f"user {user_id} not found") from None
    return found.body["_source"]


async def delete_user_events(client: AsyncElasticsearch, index: str, user_id: str) -> int:
    """Delete every event of ``user_id`` in ``index`` by scanning ids and bulk-deleting them.

    The server has no ``_delete_by_query`` (it belongs to the reindex module), so this
    scans with a ``term`` query and deletes by id.
    """
    # A scan returns only refreshed documents. Without a refresh, events written in the last
    # refresh interval (1 s by default) would survive the user's deletion.
    await client.indices.refresh(index=index)
    actions = []
    async for hit in async_scan(client, index=index, query={"query": {"term": {"user_id": user_id}}},
                                _source=False, size=5000):
        actions.append({"_op_type": "delete", "_index": hit["_index"], "_id": hit["_id"]})
    if not actions:
        return 0
    deleted, errors = await async_bulk(client, actions, raise_on_error=False, refresh="wait_for")
    if errors:
        logger.error("user %s: %d events in %s not deleted; first: %s", user_id, len(errors), index, errors[0])
    return deleted


@router.delete("/users/{user_id}", dependencies=[Depends(require_write_key)])
async def delete_user(request: Request, user_id: str = USER_ID) -> dict[str, Any]:
    """Delete the user's profile and events from the current indices and the versions kept for rollback."""
    settings = request.app.state.settings
    client: AsyncElasticsearch = request.app.state.es
    profiles_deleted = 0
    for index in await version_indices(client, settings.alias("users")):
        try:
            await client.delete(index=index, id=user_id, refresh="wait_for")
            profiles_deleted += 1
        except NotFoundError:
            continue
    events_deleted: dict[str, int] = {}
    for name in EVENT_INDICES:
        total = 0
        for index in await version_indices(client, settings.alias(name)):
            total += await delete_user_events(client, index, user_id)
        events_deleted[name] = total
    if not profiles_deleted and not any(events_deleted.values()):
        raise HTTPException(status_code=404, detail=f"user {user_id} not found")
    logger.info("user %s deleted: %d profile copies, events %s", user_id, profiles_deleted, events_deleted)
    return {"user_id": user_id, "profile_deleted": profiles_deleted > 0, "events_deleted": events_deleted}
