"""Ranking features for one user and N candidates: the one code path of training and serving.

A request's features fall into three blocks, in the order the first layer of
every ranking model reads them:

- user block, once per request: the mean stored query embedding of the last
  M queries, and age (standardized) and gender (one-hot) with explicit missing
  indicators. The request time follows as sin/cos pairs of month, ISO week,
  day of week and hour of day, plus a public-holiday flag from the
  ``holidays`` package for the user's country when it is known. Two learned
  parts follow inside the model: the mean video-id embedding of the last N
  watched ids and a location-bucket embedding.
- video block, static per video and precomputed per model version: text
  embedding, category one-hot, log duration, and the learned id embedding.
- dynamic block, per (user, candidate): video age at request time, log
  popularity as of the request time, the retrieval channels with their ranks
  and scores, previous impressions of this video to this user (log count and
  log hours since the last one), and cosine similarity of the user's history
  and query vectors with the candidate's text embedding.

A feature for a request at time t uses only events before t: watches,
queries and impressions in the profile with a timestamp at or after t are
ignored, and popularity comes from a ``Popularity`` source asked for the
count before t. Missing values are NaN before standardization and 0 after,
with an indicator column beside them.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Protocol, Sequence

import holidays
import numpy as np

from app.candidates.types import CHANNELS, Candidate
from ranking.feature_table import UNKNOWN_ROW, VideoFeatureTable, parse_timestamp

logger = logging.getLogger(__name__)

PADDING_ID = 0
UNKNOWN_ID = 1
GENDERS = ("F", "M", "other")

TIME_COLUMNS = [
    "month_sin", "month_cos", "week_sin", "week_cos", "dow_sin", "dow_cos", "hour_sin", "hour_cos",
    "holiday", "country_missing",
]
DYNAMIC_COLUMNS = (
    ["log_video_age_days", "video_age_missing", "log_popularity", "fused_score"]
    + [f"{channel}_flag" for channel in CHANNELS]
    + [f"{channel}_inverse_rank" for channel in CHANNELS]
    + [f"{channel}_score" for channel in CHANNELS]
    + ["log_impressions", "log_hours_since_impression", "never_shown",
       "history_similarity", "history_missing", "query_similarity"]
)
# Columns standardized with statistics fitted on the training split; the rest
# are flags, cyclic encodings or cosines already on a unit scale.
STANDARDIZED_DYNAMIC = {"log_video_age_days", "log_popularity", "fused_score", "log_impressions",
                        "log_hours_since_impression"} | {f"{channel}_score" for channel in CHANNELS}


@dataclass
class FeatureConfig:
    """Sizes of the feature blocks; saved with the model."""

    history_length: int = 50
    query_count: int = 10
    id_embedding_dims: int = 16
    location_embedding_dims: int = 4
    geohash_precision: int = 3
    embedding_dims: int = 384


@dataclass
class FeatureVocab:
    """Vocabularies fitted on the training split: index 0 of each is "unknown"."""

    video_ids: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._video_index = {v: i + 2 for i, v in enumerate(self.video_ids)}
        self._location_index = {v: i + 1 for i, v in enumerate(self.locations)}
        self._category_index = {v: i + 1 for i, v in enumerate(self.categories)}

    @property
    def id_count(self) -> int:
        """Rows of the id-embedding table: padding, unknown, then one per known video."""
        return len(self.video_ids) + 2

    @property
    def location_count(self) -> int:
        return len(self.locations) + 1

    def video_index(self, video_id: str) -> int:
        return self._video_index.get(str(video_id), UNKNOWN_ID)

    def location_index(self, bucket: str | None) -> int:
        return self._location_index.get(bucket, 0) if bucket else 0

    def category_index(self, category: str) -> int:
        return self._category_index.get(category, 0) if category else 0


@dataclass
class Standardizer:
    """Per-column mean and standard deviation; identity until fitted."""

    mean: list[float]
    std: list[float]

    @classmethod
    def identity(cls, width: int) -> "Standardizer":
        return cls([0.0] * width, [1.0] * width)

    @classmethod
    def fit(cls, raw: np.ndarray, columns: Sequence[int]) -> "Standardizer":
        """Fit on the given column indices of ``raw`` (rows = training examples), ignoring NaN."""
        mean = np.zeros(raw.shape[1])
        std = np.ones(raw.shape[1])
        for column in columns:
            values = raw[:, column]
            values = values[np.isfinite(values)]
            if values.size:
                mean[column] = float(values.mean())
                std[column] = float(values.std()) or 1.0
        return cls(mean.tolist(), std.tolist())

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Standardize ``raw`` (..., width) and replace NaN (missing) with 0; returns float32."""
        out = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


@dataclass
class FeatureStats:
    """Normalization statistics of the user, video and dynamic blocks."""

    user: Standardizer
    video: Standardizer
    dynamic: Standardizer


@dataclass
class UserFeatures:
    """The user block of one request, plus what the dynamic block needs from the profile."""

    dense: np.ndarray  # (Du,) float32, standardized
    history: np.ndarray  # (N,) int64 id-embedding indices, PADDING_ID after the last watch
    location: int
    history_vector: np.ndarray | None
    query_vector: np.ndarray | None
    impressions: dict[str, tuple[int, float | None]]
    request_time: float


class Popularity(Protocol):
    """Watch counts of table rows before a time (epoch seconds)."""

    def counts(self, rows: np.ndarray, before: float) -> np.ndarray: ...


class TablePopularity:
    """Serving popularity: the table's current watch counts, updated with ``set_popularity``."""

    def __init__(self, table: VideoFeatureTable):
        self.table = table

    def counts(self, rows: np.ndarray, before: float) -> np.ndarray:
        return np.asarray(self.table.popularity, dtype=np.float64)[rows]


class PopularityTimeline:
    """Training popularity: watch counts strictly before a time, from (row, timestamp) events."""

    def __init__(self, rows: np.ndarray, timestamps: np.ndarray, size: int):
        order = np.lexsort((timestamps, rows))
        self._origin = float(timestamps.min()) if len(timestamps) else 0.0
        times = timestamps[order].astype(np.float64) - self._origin
        # One sorted key per event, row-major then time, so one searchsorted returns the counts of every row.
        self._span = float(times.max()) + 2.0 if len(times) else 2.0
        self._keys = rows[order].astype(np.float64) * self._span + times
        self._start = np.searchsorted(rows[order], np.arange(size), side="left")

    def counts(self, rows: np.ndarray, before: float) -> np.ndarray:
        offset = min(max(before - self._origin, -1.0), self._span - 1.0)
        ends = np.searchsorted(self._keys, np.asarray(rows, dtype=np.float64) * self._span + offset, side="left")
        return (ends - self._start[rows]).astype(np.float64)


def user_dense_columns(config: FeatureConfig) -> list[str]:
    queries = [f"query_{i}" for i in range(config.embedding_dims)]
    return (queries + ["query_missing", "history_empty", "age", "age_missing"]
            + [f"gender_{g}" for g in GENDERS] + ["gender_missing"] + TIME_COLUMNS)


def video_columns(config: FeatureConfig, vocab: FeatureVocab) -> list[str]:
    text = [f"text_{i}" for i in range(config.embedding_dims)]
    categories = ["category_unknown"] + [f"category_{c}" for c in vocab.categories]
    return text + ["text_missing"] + categories + ["log_duration", "duration_missing"]


def location_bucket(profile: dict[str, Any], precision: int) -> str | None:
    """Return the user's location bucket: a geohash prefix, else the region, else the country."""
    if profile.get("geohash"):
        return "g:" + str(profile["geohash"])[:precision]
    if profile.get("region"):
        return "r:" + str(profile["region"])
    if profile.get("country"):
        return "c:" + str(profile["country"])
    return None


@functools.lru_cache(maxsize=256)
def _holiday_calendar(country: str, year: int) -> Any:
    try:
        return holidays.country_holidays(country, years=year)
    except NotImplementedError:
        return None


def time_features(request_time: float, country: str | None) -> np.ndarray:
    """Encode the request time (UTC) as sin/cos pairs plus holiday and country-missing flags."""
    moment = datetime.fromtimestamp(request_time, tz=timezone.utc)
    month = (moment.month - 1) / 12.0
    week = (moment.isocalendar().week - 1) / 53.0
    dow = moment.weekday() / 7.0
    hour = (moment.hour + moment.minute / 60.0) / 24.0
    values = []
    for fraction in (month, week, dow, hour):
        values += [math.sin(2 * math.pi * fraction), math.cos(2 * math.pi * fraction)]
    calendar = _holiday_calendar(country.upper(), moment.year) if country else None
    if calendar is None:
        values += [0.0, 1.0]
    else:
        values += [1.0 if date(moment.year, moment.month, moment.day) in calendar else 0.0, 0.0]
    return np.array(values)


def normalize_gender(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().upper()
    if text in ("F", "FEMALE"):
        return "F"
    if text in ("M", "MALE"):
        return "M"
    return "other"


def _vector(value: Any, dims: int) -> np.ndarray | None:
    if value is None:
        return None
    vector = np.asarray(value, dtype=np.float32)
    if vector.shape != (dims,) or not np.all(np.isfinite(vector)):
        return None
    return vector


def _before(entries: Sequence[dict[str, Any]] | None, request_time: float) -> list[tuple[float | None, dict]]:
    """Entries with a timestamp before ``request_time``, or without one (trusted as past)."""
    kept = []
    for entry in entries or []:
        stamp = parse_timestamp(entry.get("ts"))
        if stamp is None or stamp < request_time:
            kept.append((stamp, entry))
    return kept


class FeatureEncoder:
    """Turns profiles and candidates into the model's input blocks for one fitted vocabulary."""

    def __init__(self, config: FeatureConfig, vocab: FeatureVocab, stats: FeatureStats | None,
                 table: VideoFeatureTable):
        self.config = config
        self.vocab = vocab
        self.table = table
        self.user_width = len(user_dense_columns(config))
        self.video_width = len(video_columns(config, vocab))
        self.stats = stats or FeatureStats(Standardizer.identity(self.user_width),
                                           Standardizer.identity(self.video_width),
                                           Standardizer.identity(len(DYNAMIC_COLUMNS)))
        self.table_id_index = np.array([UNKNOWN_ID] + [vocab.video_index(v) for v in table.video_ids],
                                       dtype=np.int64)

    # User block.

    def user_raw(self, profile: dict[str, Any], request_time: float) -> tuple[np.ndarray, UserFeatures]:
        """Return the unstandardized user row and the per-request state for the dynamic block."""
        dims = self.config.embedding_dims
        queries = _before(profile.get("recent_queries"), request_time)
        query_vectors = [v for _, q in queries[: self.config.query_count]
                         if (v := _vector(q.get("vector"), dims)) is not None]
        if query_vectors:
            query_vector = np.mean(query_vectors, axis=0)
        elif not profile.get("recent_queries"):
            query_vector = _vector(profile.get("query_vector"), dims)
        else:
            query_vector = None

        history_ids = self._history_ids(profile, request_time)
        history = np.full(self.config.history_length, PADDING_ID, dtype=np.int64)
        history[: len(history_ids)] = [self.vocab.video_index(v) for v in history_ids]

        age = profile.get("age")
        age_value = float(age) if isinstance(age, (int, float)) and 0 < age < 130 else math.nan
        gender = normalize_gender(profile.get("gender"))
        raw = np.concatenate([
            query_vector if query_vector is not None else np.zeros(dims),
            [0.0 if query_vector is not None else 1.0, 0.0 if history_ids else 1.0],
            [age_value, 1.0 if math.isnan(age_value) else 0.0],
            [1.0 if gender == g else 0.0 for g in GENDERS], [1.0 if gender is None else 0.0],
            time_features(request_time, profile.get("country")),
        ])
        impressions: dict[str, tuple[int, float | None]] = {}
        for entry in profile.get("impressions") or []:
            stamp = parse_timestamp(entry.get("last_shown"))
            if stamp is not None and stamp >= request_time:
                # NOTE: a count whose last showing is not before t may include later showings; drop it.
                continue
            impressions[str(entry.get("video_id"))] = (int(entry.get("count") or 0), stamp)
        state = UserFeatures(
            dense=raw, history=history,
            location=self.vocab.location_index(location_bucket(profile, self.config.geohash_precision)),
            history_vector=_vector(profile.get("history_vector"), dims), query_vector=query_vector,
            impressions=impressions, request_time=request_time,
        )
        return raw, state

    def _history_ids(self, profile: dict[str, Any], request_time: float) -> list[str]:
        watches = _before(profile.get("recent_watches"), request_time)
        if profile.get("recent_watches"):
            watches.sort(key=lambda pair: pair[0] if pair[0] is not None else -math.inf, reverse=True)
            ids = [str(w.get("video_id")) for _, w in watches]
        else:
            ids = [str(v) for v in profile.get("watched_ids") or []]
        return ids[: self.config.history_length]

    def encode_user(self, profile: dict[str, Any], request_time: float) -> UserFeatures:
        """Encode the user block of one request, standardized."""
        raw, state = self.user_raw(profile or {}, request_time)
        state.dense = self.stats.user.apply(raw[None, :])[0]
        return state

    # Video block.

    def video_raw(self) -> np.ndarray:
        """Return the unstandardized static rows of the whole table, (V+1, Dv)."""
        table = self.table
        size = table.size
        categories = np.zeros((size, len(self.vocab.categories) + 1))
        categories[np.arange(size), [self.vocab.category_index(c) for c in table.category]] = 1.0
        duration = np.asarray(table.duration_s, dtype=np.float64)
        log_duration = np.where(duration > 0, np.log1p(np.where(duration > 0, duration, 0.0)), np.nan)
        text_missing = (table.text_norm == 0).astype(np.float64)
        return np.column_stack([np.asarray(table.text_embedding, dtype=np.float64), text_missing, categories,
                                log_duration, np.isnan(log_duration).astype(np.float64)])

    def video_matrix(self) -> np.ndarray:
        """Return the standardized static rows of the whole table, (V+1, Dv) float32."""
        return self.stats.video.apply(self.video_raw())

    # Dynamic block.

    def dynamic_raw(self, user: UserFeatures, candidates: Sequence[Candidate],
                    popularity: Popularity) -> tuple[np.ndarray, np.ndarray]:
        """Return table rows (N,) and the unstandardized dynamic block (N, Dd) of the candidates."""
        count = len(candidates)
        t = user.request_time
        rows = self.table.rows(c.video_id for c in candidates)
        out = np.zeros((count, len(DYNAMIC_COLUMNS)))

        published = np.asarray(self.table.published_at)[rows]
        age_days = (t - published) / 86400.0
        known_age = np.isfinite(age_days) & (age_days >= 0)
        out[:, 0] = np.where(known_age, np.log1p(np.where(known_age, age_days, 0.0)), np.nan)
        out[:, 1] = (~known_age).astype(np.float64)
        out[:, 2] = np.log1p(popularity.counts(rows, t))
        out[:, 3] = [c.fused_score for c in candidates]

        # Channel flags, inverse ranks and raw scores, gathered in lists and written in one step each.
        channel_base = 4
        n_channels = len(CHANNELS)
        channel_position = {name: i for i, name in enumerate(CHANNELS)}
        hit_rows, hit_channels, hit_ranks, hit_scores = [], [], [], []
        for i, candidate in enumerate(candidates):
            for hit in candidate.sources:
                position = channel_position.get(hit.channel)
                if position is None:
                    _warn_unknown_channel(hit.channel)
                    continue
                hit_rows.append(i)
                hit_channels.append(position)
                hit_ranks.append(max(int(hit.rank), 1))
                hit_scores.append(float(hit.score))
        out[:, channel_base + 2 * n_channels: channel_base + 3 * n_channels] = np.nan
        hit_rows_array = np.array(hit_rows, dtype=np.int64)
        hit_channels_array = np.array(hit_channels, dtype=np.int64)
        out[hit_rows_array, channel_base + hit_channels_array] = 1.0
        out[hit_rows_array, channel_base + n_channels + hit_channels_array] = 1.0 / np.array(hit_ranks, dtype=np.float64)
        out[hit_rows_array, channel_base + 2 * n_channels + hit_channels_array] = np.array(hit_scores, dtype=np.float64)

        # Previous impressions: log count, log hours since the last one, never-shown flag.
        base = channel_base + 3 * n_channels
        out[:, base: base + 3] = (np.nan, np.nan, 1.0)
        if user.impressions:
            for i, candidate in enumerate(candidates):
                shown = user.impressions.get(str(candidate.video_id))
                if shown is None or shown[0] <= 0:
                    continue
                hours = (t - shown[1]) / 3600.0 if shown[1] is not None else math.nan
                out[i, base: base + 3] = (math.log1p(shown[0]), math.log1p(max(hours, 0.0)), 0.0)

        embeddings = np.asarray(self.table.text_embedding[rows], dtype=np.float32)
        norms = self.table.text_norm[rows].astype(np.float64)
        out[:, base + 3], missing = _cosine(embeddings, norms, user.history_vector)
        out[:, base + 4] = missing
        out[:, base + 5], _ = _cosine(embeddings, norms, user.query_vector)
        return rows, out

    def encode_candidates(self, user: UserFeatures, candidates: Sequence[Candidate],
                          popularity: Popularity) -> tuple[np.ndarray, np.ndarray]:
        """Return table rows (N,) int64 and the standardized dynamic block (N, Dd) float32."""
        rows, raw = self.dynamic_raw(user, candidates, popularity)
        return rows, self.stats.dynamic.apply(raw)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "vocab": {"video_ids": self.vocab.video_ids,
                "locations": self.vocab.locations, "categories": self.vocab.categories},
                "stats": {name: asdict(getattr(self.stats, name)) for name in ("user", "video", "dynamic")}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], table: VideoFeatureTable) -> "FeatureEncoder":
        stats = FeatureStats(**{name: Standardizer(**data["stats"][name]) for name in ("user", "video", "dynamic")})
        return cls(FeatureConfig(**data["config"]), FeatureVocab(**data["vocab"]), stats, table)


def _cosine(embeddings: np.ndarray, norms: np.ndarray, vector: np.ndarray | None) -> tuple[np.ndarray, float]:
    if vector is None or not np.any(vector):
        return np.zeros(len(norms)), 1.0
    denominator = norms * float(np.linalg.norm(vector))
    dots = (embeddings @ vector.astype(np.float32)).astype(np.float64)
    return np.where(denominator > 0, dots / np.where(denominator > 0, denominator, 1.0), 0.0), 0.0


@functools.lru_cache(maxsize=32)
def _warn_unknown_channel(channel: str) -> None:
    logger.warning("candidate source channel=%s is not one of %s; its rank and score are ignored",
                   channel, ", ".join(CHANNELS))


def request_timestamp(request_time: datetime | float) -> float:
    """Return epoch seconds for a datetime (naive means UTC) or a number of seconds."""
    if isinstance(request_time, datetime):
        if request_time.tzinfo is None:
            request_time = request_time.replace(tzinfo=timezone.utc)
        return request_time.timestamp()
    return float(request_time)
