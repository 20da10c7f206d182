"""Event ingestion shared by the event API and the JSON Lines loader.

An event is one of ``watch``, ``impression``, ``search`` and ``not_interested``
(the JSON fields are in docs/ingestion.md). :func:`parse_event` validates one
event dict into a record. :func:`store_events` writes a batch with
``op_type: create`` under each event's deterministic id, then applies the newly
created events, and only those, to the users' profiles with read-modify-write:
GET the profile with its ``_seq_no`` and ``_primary_term``, merge, and write
back with ``if_seq_no``/``if_primary_term``, retrying on a version conflict.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from elasticsearch import AsyncElasticsearch, ConflictError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.settings import Settings
from indexing.embed import query_text
from indexing.profiles import apply_events
from indexing.records import (NOT_INTERESTED, WATCH, ImpressionEvent, SearchEvent, Video, WatchEvent,
                              format_ts, parse_ts)

logger = logging.getLogger(__name__)

ID_PATTERN = r"^[^\s]{1,256}$"
MAX_QUERY_CHARS = 2000


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_id: str = Field(pattern=ID_PATTERN, description="user id, 1 to 256 characters without spaces")
    timestamp: int | str = Field(description="epoch milliseconds, or ISO 8601 with an offset")

    @field_validator("user_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("timestamp")
    @classmethod
    def _check_timestamp(cls, value: int | str) -> int | str:
        parse_ts(value)
        return value

    @property
    def timestamp_ms(self) -> int:
        return parse_ts(self.timestamp)


class _VideoEvent(_EventBase):
    video_id: str = Field(pattern=ID_PATTERN, description="video id, 1 to 256 characters without spaces")

    @field_validator("video_id", mode="before")
    @classmethod
    def _video_id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class WatchIn(_VideoEvent):
    type: Literal["watch"]
    watch_seconds: float | None = Field(None, ge=0, le=86_400 * 7)
    completion: float | None = Field(None, ge=0, le=1)
    rating: float | None = Field(None, ge=0, le=10)
    request_id: str | None = Field(None, pattern=ID_PATTERN)
    position: int | None = Field(None, ge=0, le=10_000)

    @model_validator(mode="after")
    def _needs_engagement(self) -> "WatchIn":
        if self.watch_seconds is None and self.completion is None:
            raise ValueError("a watch needs watch_seconds or completion (0..1)")
        return self


class NotInterestedIn(_VideoEvent):
    type: Literal["not_interested"]


class ImpressionIn(_VideoEvent):
    type: Literal["impression"]
    request_id: str = Field(pattern=ID_PATTERN)
    position: int = Field(ge=0, le=10_000)
    score: float | None = None
    model_version: str | None = Field(None, max_length=256)
    channels: list[str] = Field(default_factory=list, max_length=16)


class SearchIn(_EventBase):
    type: Literal["search"]
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)


class VideoIn(BaseModel):
    """A catalog entry. ``published_at`` is ISO 8601 with an offset or epoch milliseconds."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field(min_length=1, max_length=1000)
    description: str | None = Field(None, max_length=20_000)
    tags: list[str] = Field(default_factory=list, max_length=200)
    category: list[str] = Field(default_factory=list, max_length=20)
    channel_id: str | None = Field(None, max_length=256)
    channel_title: str | None = Field(None, max_length=1000)
    language: str | None = Field(None, max_length=35)
    published_at: int | str | None = None
    duration_s: float | None = Field(None, ge=0)
    view_count: int | None = Field(None, ge=0)
    like_count: int | None = Field(None, ge=0)
    comment_count: int | None = Field(None, ge=0)
    available: bool = True
    regions_allowed: list[str] = Field(default_factory=list, max_length=300)
    min_age: int | None = Field(None, ge=0, le=21)

    @field_validator("published_at")
    @classmethod
    def _check_time(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            parse_ts(value, event_time=False)
        return value


def video_from_input(video_id: str, body: VideoIn, source: str | None) -> Video:
    """Turn a validated catalog entry into a Video record."""
    published_ms = parse_ts(body.published_at, event_time=False) if body.published_at is not None else None
    published_at = format_ts(published_ms) if published_ms is not None else None
    return Video(video_id=video_id, title=body.title, description=body.description, tags=body.tags,
                 category=body.category, channel_id=body.channel_id, channel_title=body.channel_title,
                 language=body.language, source=source, published_at=published_at,
                 year=int(published_at[:4]) if published_at else None, duration_s=body.duration_s,
                 view_count=body.view_count, like_count=body.like_count, comment_count=body.comment_count,
                 available=body.available, regions_allowed=body.regions_allowed, min_age=body.min_age)


EVENT_MODELS = {"watch": WatchIn, "not_interested": NotInterestedIn, "impression": ImpressionIn, "search": SearchIn}
Record = WatchEvent | SearchEvent | ImpressionEvent


class EventError(ValueError):
    """An invalid event; ``errors`` lists each field (``loc``) with its message, as FastAPI does."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors))


def parse_event(raw: Any, source: str | None = None) -> Record:
    """Validate one event dict and return its record; raise EventError naming each bad field."""
    if not isinstance(raw, dict):
        raise EventError([{"loc": [], "msg": f"expected an object, got {type(raw).__name__}", "type": "type_error"}])
    model = EVENT_MODELS.get(raw.get("type"))
    if model is None:
        raise EventError([{"loc": ["type"], "msg": f"expected one of {', '.join(EVENT_MODELS)}, "
                                                  f"got {raw.get('type')!r}", "type": "literal_error"}])
    try:
        event = model.model_validate(raw)
    except ValidationError as error:
        raise EventError([{"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
                          for item in error.errors()]) from None
    if isinstance(event, WatchIn):
        return WatchEvent(user_id=event.user_id, video_id=event.video_id, timestamp_ms=event.timestamp_ms,
                          event_type=WATCH, rating=event.rating, completion=event.completion,
                          watch_seconds=event.watch_seconds, request_id=event.request_id,
                          position=event.position, source=source)
    if isinstance(event, NotInterestedIn):
        return WatchEvent(user_id=event.user_id, video_id=event.video_id, timestamp_ms=event.timestamp_ms,
                          event_type=NOT_INTERESTED, source=source)
    if isinstance(event, ImpressionIn):
        return ImpressionEvent(request_id=event.request_id, user_id=event.user_id, video_id=event.video_id,
                               timestamp_ms=event.timestamp_ms, position=event.position, score=event.score,
                               model_version=event.model_version, channels=event.channels, source=source)
    return SearchEvent(user_id=event.user_id, text=event.query, timestamp_ms=event.timestamp_ms, source=source)


def index_name(record: Record) -> str:
    if isinstance(record, SearchEvent):
        return "search-queries"
    if isinstance(record, ImpressionEvent):
        return "impressions"
    return "watch-events"


@dataclass
class StoreOutcome:
    """Per event: ``created``, ``duplicate`` or ``rejected`` with the reason."""

    event_id: str
    status: str
    error: str | None = None


async def store_events(client: AsyncElasticsearch, settings: Settings, records: list[Record],
                       encode=None) -> list[StoreOutcome]:
    """Write ``records`` and update the profiles of the users whose events were newly created.

    ``encode`` embeds query texts (a callable from a list of texts to an (n, dims)
    array); without it search events are stored without a vector.
    Returns one outcome per record, in order.
    """
    if not records:
        return []
    ingested_at = format_ts(int(time.time() * 1000))
    vectors: dict[int, list[float]] = {}
    searches = [(row, record) for row, record in enumerate(records) if isinstance(record, SearchEvent)]
    if searches and encode is not None:
        texts = [query_text(record.text, settings.embedding_max_chars) for _, record in searches]
        encoded = await asyncio.to_thread(encode, texts)
        vectors = {row: vector.tolist() for (row, _), vector in zip(searches, encoded)}
    model_name = getattr(getattr(encode, "__self__", None), "model_name", None)

    operations: list[dict[str, Any]] = []
    for row, record in enumerate(records):
        operations.append({"create": {"_index": settings.alias(index_name(record)), "_id": record.event_id}})
        if isinstance(record, SearchEvent):
            operations.append(record.to_source(ingested_at, vectors.get(row), model_name))
        else:
            operations.append(record.to_source(ingested_at))
    response = await client.bulk(operations=operations, require_alias=True)

    outcomes: list[StoreOutcome] = []
    created_rows: set[int] = set()
    for row, (record, item) in enumerate(zip(records, response.body["items"])):
        info = item["create"]
        if info.get("status") == 201:
            outcomes.append(StoreOutcome(record.event_id, "created"))
            created_rows.add(row)
        elif info.get("status") == 409:
            outcomes.append(StoreOutcome(record.event_id, "duplicate"))
        else:
            reason = info.get("error", {})
            reason_text = f"{reason.get('type')}: {reason.get('reason')}" if isinstance(reason, dict) else str(reason)
            logger.error("event %s for user %s was not stored: status=%s %s", record.event_id, record.user_id,
                         info.get("status"), reason_text)
            outcomes.append(StoreOutcome(record.event_id, "rejected", f"not stored: {reason_text}"))

    by_user: dict[str, list[tuple[Record, list[float] | None]]] = defaultdict(list)
    for row, record in enumerate(records):
        if row in created_rows:
            by_user[record.user_id].append((record, vectors.get(row)))
    await asyncio.gather(*(update_profile(client, settings, user_id, events)
                           for user_id, events in by_user.items()))
    return outcomes


def _profile_inputs(events: list[tuple[Record, list[float] | None]]) -> tuple[list[dict], list[dict], list[dict]]:
    watches, queries, impressions = [], [], []
    for record, vector in events:
        ts = format_ts(record.timestamp_ms)
        if isinstance(record, WatchEvent):
            watches.append({"event_type": record.event_type, "video_id": record.video_id, "ts": ts,
                            "event_id": record.event_id, "completion": record.completion, "rating": record.rating})
        elif isinstance(record, SearchEvent):
            queries.append({"text": record.text, "ts": ts, "event_id": record.event_id, "vector": vector})
        else:
            impressions.append({"video_id": record.video_id, "ts": ts})
    return watches, queries, impressions


async def fetch_video_vectors(client: AsyncElasticsearch, settings: Settings, video_ids: list[str]) -> dict[str, np.ndarray]:
    if not video_ids:
        return {}
    # A multi-get is real time, so it returns a video stored a moment ago, before the next refresh,
    # where a search would not. Naming the vector field in the includes returns the vector.
    response = await client.mget(index=settings.alias("videos"), ids=video_ids, source_includes=["text_embedding"])
    return {doc["_id"]: np.asarray(doc["_source"]["text_embedding"], dtype=np.float32)
            for doc in response.body["docs"] if doc.get("found") and doc["_source"].get("text_embedding")}


async def update_profile(client: AsyncElasticsearch, settings: Settings, user_id: str,
                         events: list[tuple[Record, list[float] | None]]) -> bool:
    """Merge ``events`` into the profile of ``user_id`` with optimistic concurrency; return success.

    On a version conflict the profile is read again and the merge redone, up to
    ``profile_update_retries`` times with a random wait of up to 50 ms * attempt.
    """
    watches, queries, impressions = _profile_inputs(events)
    alias = settings.alias("users")
    for attempt in range(1, settings.profile_update_retries + 1):
        try:
            found = await client.get(index=alias, id=user_id)
            profile, concurrency = found.body["_source"], {"if_seq_no": found.body["_seq_no"],
                                                          "if_primary_term": found.body["_primary_term"]}
        except NotFoundError:
            profile, concurrency = {"user_id": user_id}, {"op_type": "create"}
        recent_ids = [watch["video_id"] for watch in (profile.get("recent_watches") or [])]
        vectors = await fetch_video_vectors(client, settings, list(dict.fromkeys(
            [watch["video_id"] for watch in watches if watch["event_type"] == WATCH] + recent_ids)))
        updated = apply_events(profile, settings, watches=watches, queries=queries, impressions=impressions,
                               video_vectors=vectors)
        try:
            await client.index(index=alias, id=user_id, document=updated, require_alias=True, **concurrency)
            return True
        except ConflictError:
            logger.debug("profile of user %s changed concurrently, retry %d", user_id, attempt)
            await asyncio.sleep(random.uniform(0, 0.05 * attempt))
    logger.error("profile of user %s not updated after %d conflicts; its %d new events are stored and the next "
                 "profile rebuild applies them", user_id, settings.profile_update_retries, len(events))
    return False
