"""`POST /v1/events`: a batch of watch, impression, search and not-interested events.

Each event is validated and stored on its own. The response lists one result per
event, in order: ``created``, ``duplicate`` (an event with the same id is already
stored, so nothing changed) or ``rejected`` with the error. When every event is
valid the status is 200; when any event is invalid it is 422, the body adds the
standard ``detail`` list (``loc`` = ``["body", "events", index, field]``), and the
valid events of the batch are stored all the same.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.security import require_write_key
from indexing.events import EventError, parse_event, store_events

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["events"], dependencies=[Depends(require_write_key)])

MAX_EVENTS = 1000
_encoder_lock = asyncio.Lock()


class EventBatch(BaseModel):
    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_EVENTS,
                                         description=f"1 to {MAX_EVENTS} events; fields in docs/ingestion.md")


async def load_encoder(request: Request):
    """Return the app's embedder (shared with search), loading it on first use; None when it cannot load."""
    state = request.app.state
    if hasattr(state, "query_encoder"):
        return state.query_encoder
    async with _encoder_lock:
        if not hasattr(state, "query_encoder"):
            from indexing.embed import Embedder

            try:
                state.query_encoder = await asyncio.to_thread(Embedder, state.settings, show_progress=False)
            except Exception as error:  # search events are then stored without a vector
                logger.error("embedding model failed to load, search events are stored without vectors: %s", error)
                state.query_encoder = None
    return state.query_encoder


@router.post("/events")
async def post_events(batch: EventBatch, request: Request) -> JSONResponse:
    """Store a batch of events and update the users' profiles for the newly created ones."""
    settings = request.app.state.settings
    results: list[dict[str, Any]] = [{} for _ in batch.events]
    detail: list[dict[str, Any]] = []
    records, rows = [], []
    for row, raw in enumerate(batch.events):
        try:
            record = parse_event(raw, source="api")
        except EventError as error:
            results[row] = {"index": row, "event_id": None, "status": "rejected", "error": str(error)}
            detail.extend({"loc": ["body", "events", row, *item["loc"]], "msg": item["msg"], "type": item["type"]}
                          for item in error.errors)
            continue
        records.append(record)
        rows.append(row)

    encoder = await load_encoder(request) if any(getattr(r, "text", None) for r in records) else None
    outcomes = await store_events(request.app.state.es, settings, records,
                                  encode=encoder.encode if encoder is not None else None)
    for row, outcome in zip(rows, outcomes):
        results[row] = {"index": row, "event_id": outcome.event_id, "status": outcome.status}
        if outcome.error:
            results[row]["error"] = outcome.error
    if detail:
        logger.warning("events batch: %d of %d events rejected; first: %s", len(batch.events) - len(records),
                       len(batch.events), detail[0])
        return JSONResponse(status_code=422, content={"detail": detail, "results": results})
    return JSONResponse(status_code=200, content={"results": results})
