"""vidrec's own records, produced by every loader and the event API, and their event ids.

Timestamps inside vidrec are integers in epoch milliseconds (UTC). Documents
store them as ISO 8601 strings in UTC with milliseconds
(``2000-07-30T18:45:03.000Z``), which sort as text in time order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

WATCH = "watch"
NOT_INTERESTED = "not_interested"
SEARCH = "search"
IMPRESSION = "impression"
EVENT_TYPES = (WATCH, IMPRESSION, SEARCH, NOT_INTERESTED)

# Smallest and largest accepted event time: 1990-01-01 and 2100-01-01 UTC. A value
# outside is almost always seconds sent as milliseconds or the reverse.
MIN_TIMESTAMP_MS = 631_152_000_000
MAX_TIMESTAMP_MS = 4_102_444_800_000


def format_ts(timestamp_ms: int) -> str:
    """Format epoch milliseconds as ISO 8601 UTC with milliseconds and a ``Z`` suffix."""
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{timestamp_ms % 1000:03d}Z"


def parse_ts(value: Any, event_time: bool = True) -> int:
    """Parse a time into epoch milliseconds.

    Accepts an integer (epoch milliseconds) or an ISO 8601 string with a UTC offset
    (``Z`` or ``+02:00``). Raises ValueError naming the value for anything else,
    including ISO strings without an offset, whose time zone would be a guess.
    ``event_time`` also rejects times outside 1990..2100; publication dates of old
    films pass ``False``.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected epoch milliseconds or ISO 8601 with an offset, got {value!r}")
    if isinstance(value, int):
        timestamp_ms = value
    elif isinstance(value, float) and value.is_integer():
        timestamp_ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise ValueError(f"expected ISO 8601 with an offset such as 2024-05-01T12:00:00Z, got {value!r}") from None
        if moment.tzinfo is None:
            raise ValueError(f"ISO 8601 time {value!r} has no UTC offset: add Z or an offset such as +02:00")
        timestamp_ms = int(round(moment.timestamp() * 1000))
    else:
        raise ValueError(f"expected epoch milliseconds or ISO 8601 with an offset, got {value!r}")
    if event_time and not MIN_TIMESTAMP_MS <= timestamp_ms <= MAX_TIMESTAMP_MS:
        raise ValueError(
            f"time {value!r} is outside 1990-01-01..2100-01-01; epoch values are milliseconds, not seconds"
        )
    return timestamp_ms


def event_id(event_type: str, user_id: str, video_id: str, timestamp_ms: int, text: str | None = None) -> str:
    """Return the deterministic id of an event: sha1 of ``type|user|video|timestamp`` (plus ``|text``).

    Reloading a file or retrying a post gives the same id, so the event is stored once.
    """
    parts = [event_type, user_id, video_id, str(timestamp_ms)]
    if text is not None:
        parts.append(text)
    return hashlib.sha1("|".join(parts).encode("utf-8")).hexdigest()


def impression_id(request_id: str, video_id: str) -> str:
    """Return the id of an impression, derived from the request and the video only.

    The server's own impression log and a client's report of the same impression get one id.
    """
    return hashlib.sha1(f"{IMPRESSION}|{request_id}|{video_id}".encode("utf-8")).hexdigest()


@dataclass
class Video:
    """A catalog entry; ``to_source`` gives the `videos` document without the vector fields."""

    video_id: str
    title: str
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    channel_id: str | None = None
    channel_title: str | None = None
    language: str | None = None
    source: str | None = None
    external_ids: dict[str, str] = field(default_factory=dict)
    published_at: str | None = None
    year: int | None = None
    duration_s: float | None = None
    view_count: int | None = None
    like_count: int | None = None
    comment_count: int | None = None
    available: bool = True
    regions_allowed: list[str] = field(default_factory=list)
    min_age: int | None = None

    def to_source(self) -> dict[str, Any]:
        document: dict[str, Any] = {"video_id": self.video_id, "title": self.title, "available": self.available}
        optional = {
            "description": self.description, "channel_id": self.channel_id, "channel_title": self.channel_title,
            "language": self.language, "source": self.source, "published_at": self.published_at,
            "year": self.year, "duration_s": self.duration_s, "view_count": self.view_count,
            "like_count": self.like_count, "comment_count": self.comment_count, "min_age": self.min_age,
        }
        document.update({key: value for key, value in optional.items() if value is not None})
        for key in ("tags", "category", "regions_allowed"):
            if getattr(self, key):
                document[key] = list(getattr(self, key))
        if self.external_ids:
            document["external_ids"] = dict(self.external_ids)
        return document


@dataclass
class WatchEvent:
    """A watch or a not-interested mark, stored in `watch-events` with its ``event_type``."""

    user_id: str
    video_id: str
    timestamp_ms: int
    event_type: str = WATCH
    rating: float | None = None
    completion: float | None = None
    watch_seconds: float | None = None
    request_id: str | None = None
    position: int | None = None
    source: str | None = None

    @property
    def event_id(self) -> str:
        return event_id(self.event_type, self.user_id, self.video_id, self.timestamp_ms)

    def to_source(self, ingested_at: str) -> dict[str, Any]:
        document: dict[str, Any] = {
            "event_id": self.event_id, "@timestamp": format_ts(self.timestamp_ms), "user_id": self.user_id,
            "video_id": self.video_id, "event_type": self.event_type, "ingested_at": ingested_at,
        }
        optional = {"rating": self.rating, "completion": self.completion, "watch_seconds": self.watch_seconds,
                    "request_id": self.request_id, "position": self.position, "source": self.source}
        document.update({key: value for key, value in optional.items() if value is not None})
        return document


@dataclass
class SearchEvent:
    """A search query with its text; the vector is added at ingestion time.

    ``video_id`` is the video a MovieLens tag was applied to. It only enters the event
    id, because one user can apply the same tag to several movies in the same second.
    """

    user_id: str
    text: str
    timestamp_ms: int
    source: str | None = None
    video_id: str = ""

    @property
    def event_id(self) -> str:
        return event_id(SEARCH, self.user_id, self.video_id, self.timestamp_ms, self.text)

    def to_source(self, ingested_at: str, vector: list[float] | None, model_name: str | None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "event_id": self.event_id, "@timestamp": format_ts(self.timestamp_ms), "user_id": self.user_id,
            "query": self.text, "ingested_at": ingested_at,
        }
        if vector is not None:
            document["query_vector"] = vector
            document["embedding_model"] = model_name
        if self.source is not None:
            document["source"] = self.source
        return document


@dataclass
class ImpressionEvent:
    """One video shown to a user in the response to one request."""

    request_id: str
    user_id: str
    video_id: str
    timestamp_ms: int
    position: int | None = None
    score: float | None = None
    model_version: str | None = None
    channels: list[str] = field(default_factory=list)
    source: str | None = None

    @property
    def event_id(self) -> str:
        return impression_id(self.request_id, self.video_id)

    def to_source(self, ingested_at: str) -> dict[str, Any]:
        document: dict[str, Any] = {
            "event_id": self.event_id, "@timestamp": format_ts(self.timestamp_ms), "user_id": self.user_id,
            "video_id": self.video_id, "request_id": self.request_id, "ingested_at": ingested_at,
        }
        optional = {"position": self.position, "score": self.score, "model_version": self.model_version,
                    "source": self.source}
        document.update({key: value for key, value in optional.items() if value is not None})
        if self.channels:
            document["channels"] = list(self.channels)
        return document


@dataclass
class UserRecord:
    """Demographics of a user, merged into the profile document."""

    user_id: str
    age: int | None = None
    gender: str | None = None
    occupation: str | None = None
    zip_code: str | None = None
    location: dict[str, float] | None = None
    region: str | None = None
    country: str | None = None
    geohash: str | None = None

    def to_fields(self) -> dict[str, Any]:
        values = {"age": self.age, "gender": self.gender, "occupation": self.occupation,
                  "zip_code": self.zip_code, "location": self.location, "region": self.region,
                  "country": self.country, "geohash": self.geohash}
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class RowError:
    """A rejected input row: the file, its 1-based line number and the reason."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"
