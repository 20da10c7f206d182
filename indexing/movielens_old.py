"""The older MovieLens layouts with user demographics: ml-100k (``u.data``, ``u.item``, ``u.user``)
and ml-1m (``ratings.dat``, ``movies.dat``, ``users.dat``).

ml-100k files are separated by tabs (``u.data``) and ``|``; ml-1m files by ``::``.
Both are Latin-1. ml-1m codes ages by bucket (1 = under 18, 18 = 18-24, ..., 56 = 56+)
and occupations by number; the age kept is the bucket's lower bound, and the
occupation its name from the ml-1m README.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Iterator

from indexing.demographics import resolve_zip
from indexing.records import RowError, UserRecord, Video, WatchEvent, parse_ts

logger = logging.getLogger(__name__)

SOURCE = "movielens"
ENCODING = "latin-1"
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]
ML1M_OCCUPATIONS = ["other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer"]


def _lines(path: Path, separator: str, fields: int, errors: list[RowError]) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, fields) of a separated file; wrong field counts go to ``errors``."""
    with path.open(encoding=ENCODING, newline="") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split(separator)
            if len(parts) < fields:
                errors.append(RowError(path.name, number, f"expected {fields} fields separated by "
                                                          f"{separator!r}, got {len(parts)}"))
                continue
            yield number, parts


def read_movies(folder: Path, layout: str, errors: list[RowError]) -> list[Video]:
    from indexing.movielens import make_video

    videos = []
    if layout == "100k":
        genres_names = ML100K_GENRES
        for number, parts in _lines(folder / "u.item", "|", 5 + len(genres_names), errors):
            flags = parts[5:5 + len(genres_names)]
            if any(flag not in {"0", "1"} for flag in flags):
                errors.append(RowError("u.item", number, "genre flags must be 0 or 1"))
                continue
            genres = [name for name, flag in zip(genres_names, flags) if flag == "1" and name != "unknown"]
            video = make_video(parts[0].strip(), parts[1].strip(), genres, {})
            if parts[2].strip():
                try:
                    released = datetime.strptime(parts[2].strip(), "%d-%b-%Y")
                    video.published_at = released.strftime("%Y-%m-%dT00:00:00.000Z")
                    video.year = video.year or released.year
                except ValueError:
                    errors.append(RowError("u.item", number, f"invalid release date {parts[2]!r}, "
                                                             "expected DD-Mon-YYYY"))
            # parts[4] is an IMDb search URL, not an IMDb id, so external_ids stays empty.
            videos.append(video)
    else:
        for number, parts in _lines(folder / "movies.dat", "::", 3, errors):
            videos.append(make_video(parts[0].strip(), parts[1].strip(), parts[2].strip().split("|"), {}))
    return videos


def read_ratings(folder: Path, layout: str, errors: list[RowError], video_ids: set[str]) -> Iterator[WatchEvent]:
    path, separator = (folder / "u.data", "\t") if layout == "100k" else (folder / "ratings.dat", "::")
    for number, parts in _lines(path, separator, 4, errors):
        user_id, movie_id = parts[0].strip(), parts[1].strip()
        try:
            rating = float(parts[2])
            timestamp_ms = parse_ts(int(parts[3]) * 1000)
        except ValueError as error:
            errors.append(RowError(path.name, number, f"invalid rating or timestamp: {error}"))
            continue
        if movie_id not in video_ids:
            errors.append(RowError(path.name, number, f"movie id {movie_id} is not in the movies file"))
            continue
        yield WatchEvent(user_id=user_id, video_id=movie_id, timestamp_ms=timestamp_ms, rating=rating, source=SOURCE)


def read_users(folder: Path, layout: str, errors: list[RowError]) -> dict[str, UserRecord]:
    """Return demographics per user id, the zip code resolved offline to a location and region."""
    users: dict[str, UserRecord] = {}
    if layout == "100k":
        path = folder / "u.user"
        if not path.exists():
            return users
        rows = ((number, parts[0], parts[1], parts[2], parts[3], parts[4])
                for number, parts in _lines(path, "|", 5, errors))
    else:
        path = folder / "users.dat"
        if not path.exists():
            return users
        rows = ((number, parts[0], parts[2], parts[1], parts[3], parts[4])
                for number, parts in _lines(path, "::", 5, errors))
    for number, user_id, age_text, gender, occupation, zip_code in rows:
        try:
            age = int(age_text)
        except ValueError:
            errors.append(RowError(path.name, number, f"invalid age {age_text!r}, expected an integer"))
            continue
        gender = gender.strip().upper()
        if gender not in {"M", "F"}:
            errors.append(RowError(path.name, number, f"invalid gender {gender!r}, expected M or F"))
            continue
        if layout == "1m":
            try:
                occupation = ML1M_OCCUPATIONS[int(occupation)]
            except (ValueError, IndexError):
                errors.append(RowError(path.name, number, f"invalid occupation code {occupation!r}, expected 0..20"))
                continue
        record = UserRecord(user_id=user_id.strip(), age=age, gender=gender, occupation=occupation.strip(),
                            zip_code=zip_code.strip())
        place = resolve_zip(record.zip_code)
        if place is not None:
            record.location, record.region = place.location, place.region
            record.country, record.geohash = place.country, place.geohash
        users[record.user_id] = record
    return users
