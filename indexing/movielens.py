"""MovieLens loaders: the CSV layout (ml-latest-small, ml-25m) and the older layouts with demographics.

Mapping to vidrec records:

- a movie is a video: genres become ``tags`` and ``category``, the year in the title
  gives ``year`` and ``published_at`` (January 1 of that year), IMDb and TMDb ids go into
  ``external_ids``, ``language`` is ``en`` and every movie is available;
- a rating is a ``watch`` event at its timestamp with the rating kept as an engagement value;
- a tag is a ``search`` event of that user at its timestamp, with the tag as query text;
- ml-100k and ml-1m users give age, gender, occupation and zip code, the zip code resolved
  offline to a location and region (:mod:`indexing.demographics`).

Event files are read row by row, never whole.
"""

from __future__ import annotations

import csv
import logging
import re
import time
from pathlib import Path
from typing import Iterator

from elasticsearch import Elasticsearch

from app.settings import Settings
from indexing.catalog import (IngestReport, aggregate_video_stats, check_counts, load_videos, loading,
                              prepare_indices, record_counts, search_actions, watch_actions)
from indexing.bulk_load import bulk_write
from indexing.embed import Embedder
from indexing.profiles import rebuild_profiles
from indexing.records import RowError, SearchEvent, UserRecord, Video, WatchEvent, parse_ts

logger = logging.getLogger(__name__)

SOURCE = "movielens"
YEAR_PATTERN = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{4})?\s*\)\s*$")
NO_GENRES = "(no genres listed)"


def title_year(title: str) -> int | None:
    """Return the year in parentheses at the end of a MovieLens title, or None."""
    match = YEAR_PATTERN.search(title)
    return int(match.group(1)) if match else None


def make_video(movie_id: str, title: str, genres: list[str], links: dict[str, dict[str, str]]) -> Video:
    genres = [genre for genre in genres if genre and genre != NO_GENRES]
    year = title_year(title)
    video = Video(video_id=movie_id, title=title.strip(), tags=genres, category=genres, language="en",
                  source=SOURCE, year=year, available=True,
                  published_at=f"{year:04d}-01-01T00:00:00.000Z" if year else None)
    video.external_ids = links.get(movie_id, {})
    return video


def read_csv_rows(path: Path, expected_header: list[str], errors: list[RowError]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a CSV with ``expected_header``; bad rows go to ``errors``.

    Line numbers are 1-based physical lines where the row starts, so a quoted field
    spanning lines still points at the right place.
    """
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != expected_header:
            errors.append(RowError(path.name, 1, f"expected header {','.join(expected_header)}, "
                                                 f"got {','.join(header or [])}"))
            return
        last_line = reader.line_num
        for row in reader:
            line = last_line + 1
            last_line = reader.line_num
            if not row:
                continue
            if len(row) != len(expected_header):
                errors.append(RowError(path.name, line, f"expected {len(expected_header)} fields, got {len(row)}"))
                continue
            yield line, dict(zip(expected_header, row))


def _epoch_seconds(value: str) -> int:
    seconds = int(value)
    return parse_ts(seconds * 1000)


def read_links(path: Path, errors: list[RowError]) -> dict[str, dict[str, str]]:
    links: dict[str, dict[str, str]] = {}
    if not path.exists():
        return links
    for _, row in read_csv_rows(path, ["movieId", "imdbId", "tmdbId"], errors):
        ids = {}
        if row["imdbId"].strip():
            ids["imdb_id"] = f"tt{row['imdbId'].strip()}"
        if row["tmdbId"].strip():
            ids["tmdb_id"] = row["tmdbId"].strip()
        links[row["movieId"].strip()] = ids
    return links


def read_movies_csv(folder: Path, errors: list[RowError]) -> list[Video]:
    links = read_links(folder / "links.csv", errors)
    videos = []
    for line, row in read_csv_rows(folder / "movies.csv", ["movieId", "title", "genres"], errors):
        movie_id, title = row["movieId"].strip(), row["title"].strip()
        if not movie_id or not title:
            errors.append(RowError("movies.csv", line, "movieId and title must not be empty"))
            continue
        videos.append(make_video(movie_id, title, row["genres"].split("|"), links))
    return videos


def read_ratings_csv(path: Path, errors: list[RowError], video_ids: set[str]) -> Iterator[WatchEvent]:
    for line, row in read_csv_rows(path, ["userId", "movieId", "rating", "timestamp"], errors):
        try:
            rating = float(row["rating"])
            timestamp_ms = _epoch_seconds(row["timestamp"])
        except ValueError as error:
            errors.append(RowError(path.name, line, f"invalid rating or timestamp: {error}"))
            continue
        if row["movieId"] not in video_ids:
            errors.append(RowError(path.name, line, f"movieId {row['movieId']} is not in the movies file"))
            continue
        yield WatchEvent(user_id=row["userId"].strip(), video_id=row["movieId"].strip(), timestamp_ms=timestamp_ms,
                         rating=rating, source=SOURCE)


def read_tags_csv(path: Path, errors: list[RowError]) -> Iterator[SearchEvent]:
    for line, row in read_csv_rows(path, ["userId", "movieId", "tag", "timestamp"], errors):
        try:
            timestamp_ms = _epoch_seconds(row["timestamp"])
        except ValueError as error:
            errors.append(RowError(path.name, line, f"invalid timestamp: {error}"))
            continue
        if not row["tag"].strip():
            errors.append(RowError(path.name, line, "tag is empty"))
            continue
        yield SearchEvent(user_id=row["userId"].strip(), text=row["tag"].strip(), timestamp_ms=timestamp_ms,
                          source=SOURCE, video_id=row["movieId"].strip())


def detect_layout(folder: Path) -> str:
    """Return ``csv``, ``100k`` or ``1m`` from the files in ``folder``; raise ValueError otherwise."""
    if (folder / "movies.csv").exists() and (folder / "ratings.csv").exists():
        return "csv"
    if (folder / "u.data").exists() and (folder / "u.item").exists():
        return "100k"
    if (folder / "ratings.dat").exists() and (folder / "movies.dat").exists():
        return "1m"
    raise ValueError(f"{folder} is not a MovieLens folder: expected movies.csv and ratings.csv, "
                     "u.data and u.item, or ratings.dat and movies.dat")


def ingest_movielens(client: Elasticsearch, settings: Settings, path: Path | str, embedder: Embedder | None = None,
                     show_progress: bool = True) -> IngestReport:
    """Load a MovieLens folder in any supported layout and return the report.

    Creates missing indices, loads watches and tags, then videos with their statistics,
    then the profiles of every user seen in the files. Loading the same folder again stores no
    event twice and leaves every count unchanged.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"MovieLens path {folder} is not a folder")
    layout = detect_layout(folder)
    started = time.perf_counter()
    embedder = embedder or Embedder(settings, batch_size=settings.embedding_batch_size, show_progress=show_progress)
    hits_before, misses_before = embedder.cache_stats.hits, embedder.cache_stats.misses
    report = IngestReport(source=f"movielens-{layout}:{folder}")
    prepare_indices(client, settings)
    before = {name: int(client.count(index=settings.alias(name)).body["count"])
              for name in ("watch-events", "search-queries", "impressions")}

    users: dict[str, UserRecord] = {}
    seen_users: set[str] = set()

    def tracked(events):
        for event in events:
            seen_users.add(event.user_id)
            yield event

    with loading(client, settings):
        if layout == "csv":
            videos = read_movies_csv(folder, report.row_errors)
        else:
            from indexing import movielens_old

            videos = movielens_old.read_movies(folder, layout, report.row_errors)
            users = movielens_old.read_users(folder, layout, report.row_errors)
        video_ids = {video.video_id for video in videos}

        if layout == "csv":
            watches = read_ratings_csv(folder / "ratings.csv", report.row_errors, video_ids)
        else:
            from indexing import movielens_old

            watches = movielens_old.read_ratings(folder, layout, report.row_errors, video_ids)
        result = bulk_write(client, watch_actions(tracked(watches), settings), settings,
                            description="watch events", show_progress=show_progress)
        report.add_bulk("watch-events", result)
        logger.info("watch events: %d created, %d already stored, %.1f s", result.created, result.duplicates,
                    result.seconds)

        if layout == "csv" and (folder / "tags.csv").exists():
            searches = tracked(read_tags_csv(folder / "tags.csv", report.row_errors))
            embed_before = report.embed_seconds
            result = bulk_write(client, search_actions(searches, embedder, settings, report), settings,
                                description="search queries", show_progress=show_progress)
            report.add_bulk("search-queries", result)
            # The query texts are embedded inside the bulk stream; count that time as embedding only.
            report.bulk_seconds -= report.embed_seconds - embed_before

        client.indices.refresh(index=settings.alias("watch-events"))
        stats = aggregate_video_stats(client, settings)
        video_vectors = load_videos(client, settings, videos, embedder, report, stats=stats,
                                    show_progress=show_progress)

    client.indices.refresh(index=[settings.alias(name) for name in ("videos", "watch-events", "search-queries")])
    profiles = rebuild_profiles(client, settings, user_ids=seen_users | set(users), demographics=users,
                                video_vectors=video_vectors, show_progress=show_progress)
    logger.info("profiles: %d users in %.1f s", profiles.users, profiles.seconds)
    report.profile_seconds = profiles.seconds
    report.users_built = profiles.users
    report.loaded["users"] = profiles.result.written if profiles.result else 0
    if profiles.result:
        report.bulk_failures.extend(profiles.result.failures)

    record_counts(client, settings, report)
    check_counts(report, before)
    report.cache_hits = embedder.cache_stats.hits - hits_before
    report.cache_misses = embedder.cache_stats.misses - misses_before
    report.elapsed_seconds = time.perf_counter() - started
    for error in report.row_errors[:20]:
        logger.warning("rejected row %s", error)
    return report

