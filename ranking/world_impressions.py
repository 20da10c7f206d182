"""Impressions built inside a MovieLens evaluation world, for datasets without an impression log.

Protocol, per user with at least ``min_watches`` ratings sorted by time:

1. The last ``test_fraction`` of the watches are the test set; the split time
   s_u is the time of the first test watch. The evaluation world contains
   every user's watches before s_u.
2. Inside that pre-test history a nested split gives the ranking cutoff c_u
   (the time of the first of the last ``label_fraction`` pre-test watches).
   The ranking world contains every user's watches before c_u.
3. Candidate generation runs for each user as of c_u inside the ranking world;
   a candidate watched in [c_u, s_u) is a positive, every other candidate a
   negative. So the negatives are what the system would have shown at c_u.

Candidate generation here is an in-memory copy of the channels over the same
inputs as the Elasticsearch channels: history-content (cosine of the profile's
history vector with every text embedding), collaborative (ALS factors trained
on the world's watch matrix), query-semantic (cosine with the query vector)
and popularity (world watch counts before the request time), fused with
reciprocal rank fusion and capped.
NOTE: the BM25 query-text channel and the Elasticsearch filters (availability,
region, age) are not reproduced here, because every MovieLens movie is
available and the dataset has no demographics.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from app.candidates.merge import fuse
from app.candidates.types import Candidate
from app.settings import Settings
from ranking.feature_table import VideoFeatureTable, build_table
from ranking.features import PopularityTimeline
from ranking.training_data import ImpressionRequest

logger = logging.getLogger(__name__)

# A MovieLens title ends with the release year in parentheses, as "Heat (1995)".
TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{4})?\s*\)\s*$")


@dataclass
class Watch:
    video_id: str
    ts: float  # epoch seconds
    rating: float


@dataclass
class MovieLensData:
    """Videos (records for the feature table, with text embeddings), watches and tag queries per user."""

    table: VideoFeatureTable
    watches: dict[str, list[Watch]]
    queries: dict[str, list[tuple[float, str, np.ndarray]]]


@dataclass
class UserSplit:
    user_id: str
    history: list[Watch]  # before the cutoff, oldest first
    future: list[Watch]  # from the cutoff to the end of the window, oldest first
    cutoff: float


def load_movielens(folder: Path, settings: Settings, embedder: Any | None = None) -> MovieLensData:
    """Read movies.csv, ratings.csv and tags.csv; embed titles with genres and tag queries."""
    from indexing.embed import Embedder, query_text, video_text

    embedder = embedder or Embedder(settings)
    movies = []
    with open(folder / "movies.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
            movies.append((row["movieId"], row["title"].strip(), genres))
    texts = [video_text(title, genres, None, settings.embedding_max_chars) for _, title, genres in movies]
    vectors = embedder.encode(texts, description="movie embeddings")
    records = []
    for (movie_id, title, genres), vector in zip(movies, vectors):
        record = {"video_id": movie_id, "text_embedding": vector, "category": genres[0] if genres else ""}
        year = TITLE_YEAR.search(title)
        if year:
            # Published on January 1 of the release year, as the MovieLens loader indexes it.
            record["published_at"] = f"{year.group(1)}-01-01T00:00:00Z"
        records.append(record)

    watches: dict[str, list[Watch]] = defaultdict(list)
    with open(folder / "ratings.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            watches[row["userId"]].append(Watch(row["movieId"], float(row["timestamp"]), float(row["rating"])))
    counts: dict[str, int] = defaultdict(int)
    for user_watches in watches.values():
        user_watches.sort(key=lambda w: (w.ts, w.video_id))
        for watch in user_watches:
            counts[watch.video_id] += 1
    for record in records:
        record["watch_count"] = counts.get(record["video_id"], 0)
    table = build_table(records, embedder.dims)

    queries: dict[str, list[tuple[float, str, np.ndarray]]] = defaultdict(list)
    tag_path = folder / "tags.csv"
    if tag_path.exists():
        with open(tag_path, newline="", encoding="utf-8") as handle:
            rows = [(r["userId"], float(r["timestamp"]), r["tag"].strip()) for r in csv.DictReader(handle) if r["tag"].strip()]
        tag_vectors = embedder.encode([query_text(text, settings.embedding_max_chars) for _, _, text in rows],
                                      description="tag query embeddings")
        for (user_id, ts, text), vector in zip(rows, tag_vectors):
            queries[user_id].append((ts, text, vector))
    logger.info("loaded movielens folder=%s videos=%d users=%d", folder, len(records), len(watches))
    return MovieLensData(table=table, watches=dict(watches), queries=dict(queries))


def split_users(watches: dict[str, list[Watch]], fraction: float, min_watches: int) -> dict[str, UserSplit]:
    """Split each user's time-ordered watches: the last ``fraction`` (at least one) after the cutoff."""
    splits = {}
    for user_id, user_watches in watches.items():
        if len(user_watches) < min_watches:
            continue
        held_out = max(1, int(round(len(user_watches) * fraction)))
        cut = len(user_watches) - held_out
        cutoff = user_watches[cut].ts
        # Watches at the cutoff second count as future, so the history is strictly before it.
        history = [w for w in user_watches[:cut] if w.ts < cutoff]
        splits[user_id] = UserSplit(user_id, history, user_watches[cut:], cutoff)
    return splits


def nested_splits(test_splits: dict[str, UserSplit], fraction: float, min_watches: int) -> dict[str, UserSplit]:
    """Split each user's pre-test history again, giving the ranking cutoff and its labels."""
    return split_users({u: s.history for u, s in test_splits.items()}, fraction, min_watches)


class World:
    """The state of one world: each user's watches before their cutoff, and models fitted on them."""

    def __init__(self, data: MovieLensData, splits: dict[str, UserSplit], settings: Settings,
                 cf_iterations: int = 15, seed: int = 13):
        self.data = data
        self.splits = splits
        self.settings = settings
        table = data.table
        rows, times, users = [], [], []
        user_index = {user_id: i for i, user_id in enumerate(splits)}
        for user_id, split in splits.items():
            for watch in split.history:
                rows.append(table.row(watch.video_id))
                times.append(watch.ts)
                users.append(user_index[user_id])
        self.popularity = PopularityTimeline(np.array(rows, dtype=np.int64), np.array(times), table.size)
        self.user_index = user_index
        self._train_cf(np.array(users, dtype=np.int64), np.array(rows, dtype=np.int64), cf_iterations, seed)
        norms = np.where(table.text_norm > 0, table.text_norm, 1.0)
        self._unit_text = np.asarray(table.text_embedding, dtype=np.float32) / norms[:, None]

    def _train_cf(self, users: np.ndarray, rows: np.ndarray, iterations: int, seed: int) -> None:
        from ranking.collaborative import factorize

        matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (users, rows)),
                               shape=(len(self.user_index), self.data.table.size))
        matrix.data[:] = 1.0
        self.user_factors, self.item_factors = factorize(matrix.tocsr(), "als", self.settings.cf_dims, iterations,
                                                         0.05, seed)

    def profile(self, user_id: str) -> dict[str, Any]:
        """Build the user's profile as of their cutoff, with the fields ingestion writes."""
        from indexing.profiles import history_vector

        split = self.splits[user_id]
        table = self.data.table
        recent = sorted(split.history, key=lambda w: w.ts, reverse=True)
        recent_watches = [{"video_id": w.video_id, "ts": int(w.ts * 1000), "rating": w.rating,
                           "completion": 1.0} for w in recent[: self.settings.profile_recent_watches]]
        vectors = {w["video_id"]: np.asarray(table.text_embedding[table.row(w["video_id"])])
                   for w in recent_watches}
        profile: dict[str, Any] = {
            "user_id": user_id,
            "watched_ids": list(dict.fromkeys(w.video_id for w in recent)),
            "recent_watches": recent_watches,
            "watch_count": len(recent),
        }
        vector = history_vector(recent_watches, vectors, self.settings.profile_half_life_days) if recent_watches else None
        if vector is not None:
            profile["history_vector"] = vector
        queries = sorted((q for q in self.data.queries.get(user_id, []) if q[0] < split.cutoff), reverse=True,
                         key=lambda q: q[0])[: self.settings.profile_recent_queries]
        if queries:
            profile["recent_queries"] = [{"text": text, "ts": int(ts * 1000), "vector": vector.tolist()}
                                         for ts, text, vector in queries]
            mean = np.mean([vector for _, _, vector in queries], axis=0)
            profile["query_vector"] = (mean / (np.linalg.norm(mean) or 1.0)).tolist()
        return profile

    def _top(self, scores: np.ndarray, size: int, excluded_rows: np.ndarray) -> list[tuple[str, float]]:
        scores = scores.astype(np.float64).copy()
        scores[0] = -np.inf  # the table's default row is not a video
        scores[excluded_rows] = -np.inf
        size = min(size, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, size - 1)[:size] if size > 0 else np.zeros(0, dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.data.table.video_ids[row - 1], float(scores[row])) for row in top]

    def channel_hits(self, user_id: str, profile: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
        """Return each channel's (video id, score) list for the user as of their cutoff."""
        settings = self.settings
        table = self.data.table
        watched = table.rows(profile.get("watched_ids") or [])
        hits: dict[str, list[tuple[str, float]]] = {}
        # Scores use Elasticsearch's scales, because channel scores are ranking features: a cosine kNN
        # hit scores (1 + cos) / 2, and a max_inner_product hit 1 / (1 - dot) below 0, else dot + 1.
        if profile.get("history_vector") is not None:
            scores = (1 + self._unit_text @ np.asarray(profile["history_vector"], dtype=np.float32)) / 2
            hits["history_content"] = self._top(scores, settings.candidates_history_size, watched)
        if user_id in self.user_index:
            dots = self.item_factors @ self.user_factors[self.user_index[user_id]]
            scores = np.where(dots < 0, 1 / (1 - np.minimum(dots, 0)), dots + 1)
            hits["collaborative"] = self._top(scores, settings.candidates_collaborative_size, watched)
        if profile.get("query_vector") is not None:
            scores = (1 + self._unit_text @ np.asarray(profile["query_vector"], dtype=np.float32)) / 2
            hits["query_semantic"] = self._top(scores, settings.candidates_query_semantic_size, watched)
        hits["popular_fresh"] = self.popular_fresh(self.splits[user_id].cutoff, settings.candidates_popular_size,
                                                   watched)
        return hits

    def popular_fresh(self, before: float, size: int, excluded_rows: np.ndarray) -> list[tuple[str, float]]:
        """Score log10(2 + ln(1 + watches)) * 0.5 ** (age_days / scale), as the popular-fresh channel does."""
        table = self.data.table
        popularity = np.log1p(self.popularity.counts(np.arange(table.size), before))
        age_days = (before - np.asarray(table.published_at)) / 86400.0
        decay = np.where(np.isfinite(age_days), 0.5 ** (np.abs(np.nan_to_num(age_days)) /
                                                         self.settings.popular_fresh_scale_days), 1.0)
        return self._top(np.log10(2 + popularity) * decay, size, excluded_rows)

    def popular(self, before: float, size: int, excluded_rows: np.ndarray) -> list[tuple[str, float]]:
        counts = self.popularity.counts(np.arange(self.data.table.size), before)
        return self._top(counts, size, excluded_rows)

    def collaborative_top(self, user_id: str, size: int, excluded_rows: np.ndarray) -> list[tuple[str, float]]:
        scores = self.item_factors @ self.user_factors[self.user_index[user_id]]
        return self._top(scores, size, excluded_rows)

    def candidates(self, user_id: str, profile: dict[str, Any], cap: int) -> list[Candidate]:
        """Fuse the channels with reciprocal rank fusion and keep the best ``cap``."""
        hits = self.channel_hits(user_id, profile)
        return fuse(hits, self.settings.candidates_rrf_k, profile.get("watched_ids") or [])[:cap]


def ranking_requests(world: World, cap: int) -> list[ImpressionRequest]:
    """Build one impression request per user at the ranking cutoff; future watches label the candidates."""
    requests = []
    for user_id, split in world.splits.items():
        profile = world.profile(user_id)
        candidates = world.candidates(user_id, profile, cap)
        ratings = {w.video_id: w.rating for w in split.future}
        labels = [1 if c.video_id in ratings else 0 for c in candidates]
        engagement = [ratings.get(c.video_id, 0.0) / 5.0 for c in candidates]
        requests.append(ImpressionRequest(user_id, profile, split.cutoff, candidates, labels, engagement))
    return requests


@dataclass
class RankingWorlds:
    """The loaded dataset, both splits, and the ranking world's impression requests."""

    data: MovieLensData
    test_splits: dict[str, UserSplit]
    ranking_splits: dict[str, UserSplit]
    ranking_world: World
    requests: list[ImpressionRequest]


def prepare_ranking_world(settings: Settings, data_dir: Path, cap: int = 500, max_users: int | None = None,
                          test_fraction: float = 0.2, label_fraction: float = 0.2,
                          data: MovieLensData | None = None) -> RankingWorlds:
    """Load MovieLens, split per user, build the ranking world and its impression requests."""
    data = data or load_movielens(data_dir, settings)
    test_splits = split_users(data.watches, test_fraction, min_watches=5)
    if max_users is not None:
        kept = sorted(test_splits, key=lambda u: (len(u), u))[:max_users]
        test_splits = {u: test_splits[u] for u in kept}
    ranking_splits = nested_splits(test_splits, label_fraction, min_watches=4)
    world = World(data, ranking_splits, settings)
    requests = ranking_requests(world, cap)
    positives = sum(sum(r.labels) for r in requests)
    examples = sum(len(r.labels) for r in requests)
    logger.info("ranking world users=%d impressions=%d positives=%d", len(requests), examples, positives)
    return RankingWorlds(data, test_splits, ranking_splits, world, requests)
