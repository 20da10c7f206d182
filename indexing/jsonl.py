"""JSON Lines loader for a platform's own videos, users and events (format in docs/ingestion.md).

Each line is one JSON object:

- ``{"kind": "video", "video_id": ..., "title": ..., ...}``: the fields of ``PUT /v1/videos/{id}``;
- ``{"kind": "user", "user_id": ..., "age": ..., "gender": ..., "occupation": ..., "zip_code": ...}``;
- an event exactly as in ``POST /v1/events`` (``"kind": "event"`` is optional).

The file is streamed once per record kind, never read whole. A bad line is
reported with its line number and reason while the good lines load.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from elasticsearch import Elasticsearch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.settings import Settings
from indexing.bulk_load import bulk_write
from indexing.catalog import (IngestReport, aggregate_video_stats, check_counts, impression_actions, load_videos,
                              loading, prepare_indices, record_counts, search_actions, update_video_stats,
                              watch_actions)
from indexing.demographics import resolve_zip
from indexing.embed import Embedder
from indexing.events import EventError, VideoIn, parse_event, video_from_input
from indexing.profiles import rebuild_profiles
from indexing.records import ImpressionEvent, RowError, SearchEvent, UserRecord, Video, WatchEvent

logger = logging.getLogger(__name__)

SOURCE = "jsonl"
MAX_LINE_BYTES = 1_000_000


class LocationIn(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class UserIn(BaseModel):
    """Demographics of one user; a US zip code without ``location`` is resolved offline."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_id: str = Field(pattern=r"^[^\s]{1,256}$")
    age: int | None = Field(None, ge=0, le=120)
    gender: str | None = Field(None, max_length=32)
    occupation: str | None = Field(None, max_length=256)
    zip_code: str | None = Field(None, max_length=32)
    location: LocationIn | None = None
    region: str | None = Field(None, max_length=64)
    country: str | None = Field(None, max_length=8)

    @field_validator("user_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def user_record(body: UserIn) -> UserRecord:
    record = UserRecord(user_id=body.user_id, age=body.age, gender=body.gender, occupation=body.occupation,
                        zip_code=body.zip_code, region=body.region, country=body.country,
                        location=body.location.model_dump() if body.location else None)
    place = resolve_zip(body.zip_code) if body.zip_code and body.location is None else None
    if place is not None:
        record.location, record.geohash = place.location, place.geohash
        record.region = record.region or place.region
        record.country = record.country or place.country
    return record


def _validation_message(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors())


def parse_line(text: str) -> Video | UserRecord | WatchEvent | SearchEvent | ImpressionEvent:
    """Parse one line into a record; raise ValueError with the reason."""
    if len(text.encode("utf-8")) > MAX_LINE_BYTES:
        raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    kind = raw.pop("kind", "event")
    if kind == "video":
        video_id = str(raw.pop("video_id", "") or "").strip()
        if not video_id or any(char.isspace() for char in video_id) or len(video_id) > 256:
            raise ValueError(f"video_id must be 1 to 256 characters without spaces, got {video_id!r}")
        try:
            return video_from_input(video_id, VideoIn.model_validate(raw), source=SOURCE)
        except ValidationError as error:
            raise ValueError(_validation_message(error)) from None
    if kind == "user":
        try:
            return user_record(UserIn.model_validate(raw))
        except ValidationError as error:
            raise ValueError(_validation_message(error)) from None
    if kind == "event":
        try:
            return parse_event(raw, source=SOURCE)
        except EventError as error:
            raise ValueError(str(error)) from None
    raise ValueError(f"kind must be video, user or event, got {kind!r}")


def read_records(path: Path, errors: list[RowError] | None) -> Iterator[Any]:
    """Yield the records of ``path`` line by line; bad lines go to ``errors`` when it is a list."""
    with path.open(encoding="utf-8", errors="strict", newline="") as handle:
        number = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as error:
                number += 1
                if errors is not None:
                    errors.append(RowError(path.name, number, f"invalid UTF-8: {error.reason}"))
                # NOTE: a decoding error stops the read, because the text stream cannot resume mid-line.
                return
            if not line:
                return
            number += 1
            if not line.strip():
                continue
            try:
                yield parse_line(line)
            except ValueError as error:
                if errors is not None:
                    errors.append(RowError(path.name, number, str(error)))


def ingest_jsonl(client: Elasticsearch, settings: Settings, path: Path | str, embedder: Embedder | None = None,
                 show_progress: bool = True) -> IngestReport:
    """Load a JSON Lines file: events first, then videos with their statistics, then profiles."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"JSON Lines path {path} is not a file")
    started = time.perf_counter()
    report = IngestReport(source=f"jsonl:{path}")
    videos: list[Video] = []
    users: dict[str, UserRecord] = {}
    seen_users: set[str] = set()
    watched_videos: set[str] = set()
    for record in read_records(path, report.row_errors):
        if isinstance(record, Video):
            videos.append(record)
        elif isinstance(record, UserRecord):
            users[record.user_id] = record
        else:
            seen_users.add(record.user_id)
            if isinstance(record, WatchEvent):
                watched_videos.add(record.video_id)
    has_searches = any(True for record in read_records(path, None) if isinstance(record, SearchEvent))
    embedder = embedder if embedder is not None or not (videos or has_searches) else Embedder(
        settings, batch_size=settings.embedding_batch_size, show_progress=show_progress)
    hits_before = embedder.cache_stats.hits if embedder else 0
    misses_before = embedder.cache_stats.misses if embedder else 0

    prepare_indices(client, settings)
    before = {name: int(client.count(index=settings.alias(name)).body["count"])
              for name in ("watch-events", "search-queries", "impressions")}

    def of_type(kind: type) -> Iterator[Any]:
        return (record for record in read_records(path, None) if isinstance(record, kind))

    with loading(client, settings):
        report.add_bulk("watch-events", bulk_write(client, watch_actions(of_type(WatchEvent), settings), settings,
                                                   description="watch events", show_progress=show_progress))
        report.add_bulk("impressions", bulk_write(client, impression_actions(of_type(ImpressionEvent), settings),
                                                  settings, description="impressions", show_progress=show_progress))
        if has_searches:
            embed_before = report.embed_seconds
            report.add_bulk("search-queries", bulk_write(
                client, search_actions(of_type(SearchEvent), embedder, settings, report), settings,
                description="search queries", show_progress=show_progress))
            report.bulk_seconds -= report.embed_seconds - embed_before

        client.indices.refresh(index=settings.alias("watch-events"))
        stats = aggregate_video_stats(client, settings)
        video_vectors = {}
        if videos:
            video_vectors = load_videos(client, settings, videos, embedder, report, stats=stats,
                                        show_progress=show_progress)
        in_file = {video.video_id for video in videos}
        others = {video_id: stats[video_id] for video_id in watched_videos - in_file if video_id in stats}
        if others:
            result = update_video_stats(client, settings, others, show_progress=show_progress)
            report.bulk_failures.extend(failure for failure in result.failures if failure.status != 404)

    client.indices.refresh(index=[settings.alias(name) for name in ("videos", "watch-events", "search-queries",
                                                                    "impressions")])
    profiles = rebuild_profiles(client, settings, user_ids=seen_users | set(users), demographics=users,
                                video_vectors=video_vectors, show_progress=show_progress)
    report.profile_seconds = profiles.seconds
    report.loaded["users"] = profiles.result.written if profiles.result else 0
    if profiles.result:
        report.bulk_failures.extend(profiles.result.failures)
    record_counts(client, settings, report)
    check_counts(report, before)
    if embedder is not None:
        report.cache_hits = embedder.cache_stats.hits - hits_before
        report.cache_misses = embedder.cache_stats.misses - misses_before
    report.elapsed_seconds = time.perf_counter() - started
    return report
