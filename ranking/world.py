"""Evaluation worlds: MovieLens indices that hold only what happened before each test point.

A world is the full vidrec index set under its own prefix, loaded with the
whole movie catalog but only the training part of the ratings (as watches) and
tags (as search queries). Video popularity, user profiles and the collaborative
factors are computed inside the world, so no held-out watch
leaks into the indices the requests read.

Splits (users with fewer than ``min_watches`` watches stay in the world as
training data but are not evaluated):

- ``per_user``: each user's watches sorted by time (ties by video id); the last
  ``test_fraction`` of them (at least one) are the test set. The user's request
  time is the time of their first test watch. Other users' events after that
  time are still in the world, the usual leak of a per-user split.
- ``global``: one cutoff at the ``1 - test_fraction`` quantile of all watch
  times; the test set of a user is their watches at or after the cutoff, for
  users with at least one watch before it. The request time is the cutoff.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from elasticsearch import Elasticsearch

from app.settings import Settings
from indexing import indices
from indexing.bulk_load import bulk_write, count
from indexing.catalog import (IngestReport, aggregate_video_stats, load_videos, loading, search_actions,
                              watch_actions)
from indexing.embed import Embedder
from indexing.movielens import read_movies_csv, read_ratings_csv, read_tags_csv
from indexing.profiles import rebuild_profiles
from indexing.records import SearchEvent, WatchEvent, format_ts
from ranking.collaborative import CFReport, train_cf

logger = logging.getLogger(__name__)

Split = Literal["per_user", "global"]
SPLITS = ("per_user", "global")


class WorldError(ValueError):
    """An evaluation world cannot be built; the message names the input and the fix."""


@dataclass
class SplitResult:
    """Training events and, per evaluated user, the held-out video ids and the request time (epoch ms)."""

    train: list[WatchEvent]
    test: dict[str, list[str]]
    request_ms: dict[str, int]
    cutoff_ms: int | None = None


@dataclass
class World:
    """An evaluation world: ``settings`` point at its indices (their own prefix).

    ``test`` maps each evaluated user to their held-out video ids, oldest first;
    ``request_time`` gives the ISO time at which that user's request is made.
    """

    split: str
    settings: Settings
    test: dict[str, list[str]]
    request_time: dict[str, str]
    cutoff: str | None
    train_watches: int
    train_queries: int
    cf_report: CFReport | None = None
    build_seconds: float = 0.0
    row_errors: list[str] = field(default_factory=list)


def split_watches(events: Iterable[WatchEvent], split: Split, test_fraction: float = 0.2,
                  min_watches: int = 5) -> SplitResult:
    """Split watch events into training events and per-user test sets (see the module docstring)."""
    if split not in SPLITS:
        raise WorldError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not 0 < test_fraction < 1:
        raise WorldError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    by_user: dict[str, list[WatchEvent]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    for watches in by_user.values():
        watches.sort(key=lambda event: (event.timestamp_ms, event.video_id))

    train: list[WatchEvent] = []
    test: dict[str, list[str]] = {}
    request_ms: dict[str, int] = {}
    if split == "per_user":
        for user_id, watches in by_user.items():
            if len(watches) < min_watches:
                train.extend(watches)
                continue
            held_out = max(1, round(test_fraction * len(watches)))
            train.extend(watches[:-held_out])
            test[user_id] = [event.video_id for event in watches[-held_out:]]
            request_ms[user_id] = watches[-held_out].timestamp_ms
        return SplitResult(train, test, request_ms)

    times = sorted(event.timestamp_ms for watches in by_user.values() for event in watches)
    if not times:
        raise WorldError("no watch events to split")
    cutoff = times[min(len(times) - 1, int(math.floor((1 - test_fraction) * len(times))))]
    for user_id, watches in by_user.items():
        before = [event for event in watches if event.timestamp_ms < cutoff]
        after = [event.video_id for event in watches if event.timestamp_ms >= cutoff]
        train.extend(before)
        if len(watches) >= min_watches and before and after:
            test[user_id] = after
            request_ms[user_id] = cutoff
    return SplitResult(train, test, request_ms, cutoff)


def world_settings(settings: Settings, split: Split) -> Settings:
    """Return settings whose prefix names the world's indices: ``<prefix>eval-<split>-``."""
    return settings.model_copy(update={"index_prefix": f"{settings.index_prefix}eval-{split.replace('_', '')}-"})


def delete_world(client: Elasticsearch, settings: Settings) -> list[str]:
    """Delete every index of the world whose settings are ``settings``."""
    return indices.delete_all(client, settings)


def build_world(client: Elasticsearch, settings: Settings, movielens_path: Path | str, split: Split = "per_user",
                embedder: Embedder | None = None, test_fraction: float = 0.2, min_watches: int = 5,
                reuse: bool = False, cf: bool = True, show_progress: bool = True) -> World:
    """Build (or, with ``reuse``, find) the evaluation world of ``split`` from an ml-latest-small folder.

    The world's indices are deleted and loaded again unless ``reuse`` is set and its
    watch-events index already contains exactly the training watches. Rows the
    MovieLens readers reject are listed in ``World.row_errors``.
    """
    started = time.perf_counter()
    folder = Path(movielens_path)
    if not (folder / "ratings.csv").exists():
        raise WorldError(f"{folder} has no ratings.csv: pass the ml-latest-small folder")
    config = world_settings(settings, split)
    report = IngestReport(source=f"world-{split}:{folder}")

    videos = read_movies_csv(folder, report.row_errors)
    video_ids = {video.video_id for video in videos}
    result = split_watches(read_ratings_csv(folder / "ratings.csv", report.row_errors, video_ids), split,
                           test_fraction, min_watches)
    user_limit = {event.user_id: result.request_ms.get(event.user_id) for event in result.train}
    limit_ms = result.cutoff_ms
    queries = [event for event in read_tags_csv(folder / "tags.csv", report.row_errors)
               if _before_split(event, user_limit, limit_ms)]

    users = {event.user_id for event in result.train} | {event.user_id for event in queries}
    reused = reuse and _world_matches(client, config, len(result.train), len(videos), len(users), cf)
    cf_report = None
    if not reused:
        delete_world(client, config)
        indices.create_all(client, config)
        embedder = embedder or Embedder(config, show_progress=show_progress)
        with loading(client, config):
            watches = bulk_write(client, watch_actions(result.train, config), config, description="watch events",
                                 total=len(result.train), show_progress=show_progress)
            report.add_bulk("watch-events", watches)
            searches = bulk_write(client, search_actions(queries, embedder, config, report), config,
                                  description="search queries", total=len(queries), show_progress=show_progress)
            report.add_bulk("search-queries", searches)
            # Popularity comes from the world's own watches, so it stops at the split.
            client.indices.refresh(index=config.alias("watch-events"))
            stats = aggregate_video_stats(client, config)
            video_vectors = load_videos(client, config, videos, embedder, report, stats=stats,
                                        show_progress=show_progress)
        client.indices.refresh(index=[config.alias(name) for name in ("videos", "watch-events", "search-queries")])
        rebuild_profiles(client, config, user_ids=users, video_vectors=video_vectors, show_progress=show_progress)
        client.indices.refresh(index=config.alias("users"))
        if cf:
            cf_report = train_cf(client, config, show_progress=show_progress)

    world = World(
        split=split, settings=config, test=result.test,
        request_time={user: format_ts(ms) for user, ms in result.request_ms.items()},
        cutoff=format_ts(result.cutoff_ms) if result.cutoff_ms is not None else None,
        train_watches=len(result.train), train_queries=len(queries), cf_report=cf_report,
        build_seconds=time.perf_counter() - started, row_errors=[str(error) for error in report.row_errors],
    )
    logger.info("world %s %s: %d training watches, %d queries, %d test users in %.0f s", split,
                "reused" if reused else "built", world.train_watches, world.train_queries, len(world.test),
                world.build_seconds)
    return world


def _before_split(event: SearchEvent, user_limit: dict[str, int | None], cutoff_ms: int | None) -> bool:
    """Return whether a search event happened before its user's split point (or the global cutoff)."""
    if cutoff_ms is not None:
        return event.timestamp_ms < cutoff_ms
    limit = user_limit.get(event.user_id)
    return limit is None or event.timestamp_ms < limit


def _world_matches(client: Elasticsearch, config: Settings, train_watches: int, videos: int, users: int,
                   cf: bool) -> bool:
    """Return whether the world's indices contain a complete earlier build of the same split."""
    for name in ("watch-events", "videos", "users"):
        if not indices.concrete_indices(client, config.alias(name)):
            return False
        client.indices.refresh(index=config.alias(name))
    if count(client, config.alias("watch-events")) != train_watches:
        return False
    if count(client, config.alias("videos")) != videos or count(client, config.alias("users")) != users:
        return False
    return not cf or count(client, config.alias("users"), {"exists": {"field": "cf_model_version"}}) > 0
