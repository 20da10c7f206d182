"""YouTube trending CSV loader (catalog only).

Columns: video_id, trending_date, title, channel_title, category_id, publish_time,
tags (``"a"|"b"``, or ``[none]``), views, likes, dislikes, comment_count,
thumbnail_link, comments_disabled, ratings_disabled, video_error_or_removed,
description (newlines written as the two characters ``\\n``). Files are UTF-8 with
CRLF line ends. A video trends on several days and in several countries, so each
video id keeps its row with the most views. ``video_error_or_removed`` True makes
the video unavailable.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from elasticsearch import Elasticsearch

from app.settings import Settings
from indexing.catalog import IngestReport, load_videos, loading, prepare_indices, record_counts
from indexing.embed import Embedder
from indexing.records import RowError, Video, format_ts, parse_ts

logger = logging.getLogger(__name__)

SOURCE = "youtube"
COLUMNS = ["video_id", "trending_date", "title", "channel_title", "category_id", "publish_time", "tags", "views",
           "likes", "dislikes", "comment_count", "thumbnail_link", "comments_disabled", "ratings_disabled",
           "video_error_or_removed", "description"]
# YouTube Data API video category ids (videoCategories.list) used in the trending data.
CATEGORIES = {
    "1": "Film & Animation", "2": "Autos & Vehicles", "10": "Music", "15": "Pets & Animals", "17": "Sports",
    "18": "Short Movies", "19": "Travel & Events", "20": "Gaming", "21": "Videoblogging", "22": "People & Blogs",
    "23": "Comedy", "24": "Entertainment", "25": "News & Politics", "26": "Howto & Style", "27": "Education",
    "28": "Science & Technology", "29": "Nonprofits & Activism", "30": "Movies", "43": "Shows", "44": "Trailers",
}
# NOTE: the files carry no language; it is guessed from the country prefix of the file name.
COUNTRY_LANGUAGE = {"US": "en", "GB": "en", "CA": "en", "FR": "fr", "DE": "de"}


def parse_tags(value: str) -> list[str]:
    """Split ``"a"|"b"`` into ["a", "b"]; ``[none]`` and empty give []."""
    if value.strip() in {"", "[none]"}:
        return []
    return [tag.strip().strip('"').strip() for tag in value.split("|") if tag.strip().strip('"').strip()]


def _flag(value: str, column: str) -> bool:
    if value not in {"True", "False"}:
        raise ValueError(f"{column} must be True or False, got {value!r}")
    return value == "True"


def row_to_video(row: dict[str, str], language: str | None) -> Video:
    """Build a Video from one CSV row; raise ValueError naming the bad column."""
    video_id = row["video_id"].strip()
    if not video_id or not row["title"].strip():
        raise ValueError("video_id and title must not be empty")
    counts = {}
    for column in ("views", "likes", "comment_count"):
        try:
            counts[column] = int(row[column])
        except ValueError:
            raise ValueError(f"{column} must be an integer, got {row[column]!r}") from None
    published_ms = parse_ts(row["publish_time"].strip(), event_time=False)
    removed = _flag(row["video_error_or_removed"].strip(), "video_error_or_removed")
    category = CATEGORIES.get(row["category_id"].strip(), f"category {row['category_id'].strip()}")
    published_at = format_ts(published_ms)
    return Video(
        video_id=video_id, title=row["title"].strip(), description=row["description"].replace("\\n", "\n").strip() or None,
        tags=parse_tags(row["tags"]), category=[category], channel_id=row["channel_title"].strip() or None,
        channel_title=row["channel_title"].strip() or None, language=language, source=SOURCE,
        external_ids={"youtube_id": video_id}, published_at=published_at, year=int(published_at[:4]),
        view_count=counts["views"], like_count=counts["likes"], comment_count=counts["comment_count"],
        available=not removed,
    )


def read_youtube_csv(path: Path, errors: list[RowError]) -> list[Video]:
    """Return one Video per video id in ``path``: the row with the most views."""
    language = COUNTRY_LANGUAGE.get(path.name[:2].upper())
    best: dict[str, Video] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [name.lstrip("\ufeff") for name in header] != COLUMNS:
            errors.append(RowError(path.name, 1, f"expected header {','.join(COLUMNS)}"))
            return []
        last_line = reader.line_num
        for row in reader:
            line, last_line = last_line + 1, reader.line_num
            if not row:
                continue
            if len(row) != len(COLUMNS):
                errors.append(RowError(path.name, line, f"expected {len(COLUMNS)} fields, got {len(row)}"))
                continue
            try:
                video = row_to_video(dict(zip(COLUMNS, row)), language)
            except ValueError as error:
                errors.append(RowError(path.name, line, str(error)))
                continue
            kept = best.get(video.video_id)
            if kept is None or (video.view_count or 0) >= (kept.view_count or 0):
                best[video.video_id] = video
    return list(best.values())


def ingest_youtube(client: Elasticsearch, settings: Settings, path: Path | str, embedder: Embedder | None = None,
                   show_progress: bool = True) -> IngestReport:
    """Load a trending CSV, or every ``*videos.csv`` in a folder, into the videos index."""
    path = Path(path)
    files = sorted(path.glob("*videos.csv")) if path.is_dir() else [path]
    if not files or not all(file.is_file() for file in files):
        raise ValueError(f"{path} is neither a YouTube trending CSV file nor a folder holding *videos.csv files")
    started = time.perf_counter()
    embedder = embedder or Embedder(settings, batch_size=settings.embedding_batch_size, show_progress=show_progress)
    hits_before, misses_before = embedder.cache_stats.hits, embedder.cache_stats.misses
    report = IngestReport(source=f"youtube:{path}")
    prepare_indices(client, settings)

    videos: dict[str, Video] = {}
    for file in files:
        for video in read_youtube_csv(file, report.row_errors):
            kept = videos.get(video.video_id)
            if kept is None or (video.view_count or 0) >= (kept.view_count or 0):
                videos[video.video_id] = video
    with loading(client, settings):
        load_videos(client, settings, list(videos.values()), embedder, report, show_progress=show_progress)

    record_counts(client, settings, report)
    report.cache_hits = embedder.cache_stats.hits - hits_before
    report.cache_misses = embedder.cache_stats.misses - misses_before
    report.elapsed_seconds = time.perf_counter() - started
    return report
