"""Training examples from impressions: a shown video that was watched is positive, one that was not is negative.

An ``ImpressionRequest`` is one time a list of videos was shown (or would
have been shown) to a user: the user's profile as of the request time, the
candidates with their channel ranks and scores, and a label per candidate.
Requests are split by time into train, validation and test. Vocabularies
and normalization statistics are fitted on the training split only, and
negatives are downsampled in the training split only: validation and test
keep every example, so their rates are the real ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from app.candidates.types import Candidate
from ranking.feature_table import VideoFeatureTable
from ranking.features import (
    DYNAMIC_COLUMNS, STANDARDIZED_DYNAMIC, FeatureConfig, FeatureEncoder, FeatureStats, FeatureVocab,
    Popularity, Standardizer, location_bucket, user_dense_columns,
    video_columns as video_feature_columns,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class ImpressionRequest:
    """One list shown to one user at ``request_time`` (epoch seconds), with a label per candidate.

    ``engagement`` per candidate is the watch completion or the rating scaled
    to [0, 1] for positives, 0 for negatives.
    """

    user_id: str
    profile: dict[str, Any]
    request_time: float
    candidates: list[Candidate]
    labels: list[int]
    engagement: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.candidates):
            raise ValueError(f"user {self.user_id}: {len(self.labels)} labels for {len(self.candidates)} candidates")
        if not self.engagement:
            self.engagement = [float(label) for label in self.labels]


@dataclass
class ExampleSplit:
    """Encoded examples of one split, as tensors the model reads directly."""

    user_dense: torch.Tensor  # (R, Du)
    history: torch.Tensor  # (R, N)
    location: torch.Tensor  # (R,)
    request_index: torch.Tensor  # (B,)
    rows: torch.Tensor  # (B,)
    dynamic: torch.Tensor  # (B, Dd)
    labels: torch.Tensor  # (B,)
    engagement: torch.Tensor  # (B,)
    request_time: np.ndarray  # (R,) epoch seconds
    user_ids: list[str]

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def positive_rate(self) -> float:
        return float(self.labels.mean()) if self.size else float("nan")


@dataclass
class TrainingData:
    """The three splits, the fitted encoder and the kept fraction of training negatives."""

    encoder: FeatureEncoder
    splits: dict[str, ExampleSplit]
    negative_keep: float
    window: dict[str, Any]


def split_by_time(requests: Sequence[ImpressionRequest], fractions: tuple[float, float] = (0.8, 0.1)
                  ) -> dict[str, list[ImpressionRequest]]:
    """Split requests by request time: the earliest ``fractions[0]`` train, the next ``fractions[1]`` validate."""
    ordered = sorted(requests, key=lambda r: (r.request_time, r.user_id))
    train_end = int(round(len(ordered) * fractions[0]))
    validation_end = int(round(len(ordered) * (fractions[0] + fractions[1])))
    return {"train": ordered[:train_end], "validation": ordered[train_end:validation_end],
            "test": ordered[validation_end:]}


def fit_vocab(requests: Sequence[ImpressionRequest], table: VideoFeatureTable, config: FeatureConfig,
              max_categories: int = 64) -> FeatureVocab:
    """Fit id, location and category vocabularies on training requests only."""
    video_ids: dict[str, None] = {}
    locations: dict[str, None] = {}
    category_counts: dict[str, int] = {}
    for request in requests:
        watches = request.profile.get("recent_watches") or []
        for watch in watches:
            video_ids.setdefault(str(watch.get("video_id")), None)
        for video_id in request.profile.get("watched_ids") or []:
            video_ids.setdefault(str(video_id), None)
        for candidate in request.candidates:
            video_ids.setdefault(str(candidate.video_id), None)
            category = table.category[table.row(candidate.video_id)]
            if category:
                category_counts[category] = category_counts.get(category, 0) + 1
        bucket = location_bucket(request.profile, config.geohash_precision)
        if bucket:
            locations.setdefault(bucket, None)
    categories = sorted(category_counts, key=lambda c: (-category_counts[c], c))[:max_categories]
    return FeatureVocab(video_ids=list(video_ids), locations=sorted(locations), categories=sorted(categories))


def encode_raw(encoder: FeatureEncoder, requests: Sequence[ImpressionRequest], popularity: Popularity
               ) -> dict[str, Any]:
    """Encode requests into unstandardized arrays with the same functions the scorer uses."""
    user_rows, histories, locations, request_index, rows, dynamic = [], [], [], [], [], []
    labels, engagement = [], []
    for index, request in enumerate(requests):
        raw, state = encoder.user_raw(request.profile, request.request_time)
        user_rows.append(raw)
        histories.append(state.history)
        locations.append(state.location)
        candidate_rows, candidate_dynamic = encoder.dynamic_raw(state, request.candidates, popularity)
        rows.append(candidate_rows)
        dynamic.append(candidate_dynamic)
        request_index.append(np.full(len(request.candidates), index, dtype=np.int64))
        labels.extend(request.labels)
        engagement.extend(request.engagement)
    width = encoder.user_width
    return {
        "user": np.array(user_rows).reshape(-1, width),
        "history": np.array(histories, dtype=np.int64).reshape(-1, encoder.config.history_length),
        "location": np.array(locations, dtype=np.int64),
        "request_index": np.concatenate(request_index) if request_index else np.zeros(0, np.int64),
        "rows": np.concatenate(rows) if rows else np.zeros(0, np.int64),
        "dynamic": np.concatenate(dynamic) if dynamic else np.zeros((0, len(DYNAMIC_COLUMNS))),
        "labels": np.array(labels, dtype=np.float32),
        "engagement": np.array(engagement, dtype=np.float32),
        "request_time": np.array([r.request_time for r in requests]),
        "user_ids": [r.user_id for r in requests],
    }


def downsample_negatives(raw: dict[str, Any], keep: float, seed: int) -> dict[str, Any]:
    """Keep every positive and each negative with probability ``keep`` (0 < keep <= 1)."""
    if not 0 < keep <= 1:
        raise ValueError(f"negative_keep={keep} is invalid, expected 0 < keep <= 1")
    if keep == 1:
        return raw
    rng = np.random.default_rng(seed)
    mask = (raw["labels"] > 0) | (rng.random(raw["labels"].shape[0]) < keep)
    kept = dict(raw)
    for key in ("request_index", "rows", "dynamic", "labels", "engagement"):
        kept[key] = raw[key][mask]
    return kept


def _to_split(raw: dict[str, Any], encoder: FeatureEncoder) -> ExampleSplit:
    stats = encoder.stats
    return ExampleSplit(
        user_dense=torch.from_numpy(stats.user.apply(raw["user"])),
        history=torch.from_numpy(raw["history"]),
        location=torch.from_numpy(raw["location"]),
        request_index=torch.from_numpy(raw["request_index"]),
        rows=torch.from_numpy(raw["rows"]),
        dynamic=torch.from_numpy(stats.dynamic.apply(raw["dynamic"])),
        labels=torch.from_numpy(raw["labels"]),
        engagement=torch.from_numpy(raw["engagement"]),
        request_time=raw["request_time"],
        user_ids=raw["user_ids"],
    )


def build_training_data(requests: Sequence[ImpressionRequest], table: VideoFeatureTable, popularity: Popularity,
                        config: FeatureConfig | None = None, negative_keep: float = 0.25,
                        fractions: tuple[float, float] = (0.8, 0.1), seed: int = 0) -> TrainingData:
    """Split, fit vocabularies and statistics on train, encode every split and downsample train negatives."""
    config = config or FeatureConfig(embedding_dims=table.dims)
    parts = split_by_time(requests, fractions)
    if not parts["train"] or not parts["validation"]:
        raise ValueError(f"{len(requests)} requests are too few to split into train and validation")
    vocab = fit_vocab(parts["train"], table, config)
    encoder = FeatureEncoder(config, vocab, None, table)
    raw = {name: encode_raw(encoder, part, popularity) for name, part in parts.items()}

    # Statistics come from the training split before downsampling, so they see the real mix.
    train = raw["train"]
    user_columns = [user_dense_columns(config).index("age")]
    dynamic_columns = [i for i, name in enumerate(DYNAMIC_COLUMNS) if name in STANDARDIZED_DYNAMIC]
    video_raw = encoder.video_raw()
    train_video_rows = video_raw[np.unique(train["rows"])]
    video_columns = [video_feature_columns(config, vocab).index("log_duration")]
    encoder.stats = FeatureStats(
        user=Standardizer.fit(train["user"], user_columns),
        video=Standardizer.fit(train_video_rows, video_columns),
        dynamic=Standardizer.fit(train["dynamic"], dynamic_columns),
    )
    raw["train"] = downsample_negatives(train, negative_keep, seed)
    splits = {name: _to_split(part, encoder) for name, part in raw.items()}
    times = {name: (float(part["request_time"].min()), float(part["request_time"].max()))
             for name, part in raw.items() if len(part["request_time"])}
    window = {name: {"from": low, "to": high, "requests": len(parts[name]), "examples": splits[name].size,
                     "positive_rate": splits[name].positive_rate()} for name, (low, high) in times.items()}
    logger.info("training data %s", {name: split.size for name, split in splits.items()})
    return TrainingData(encoder=encoder, splits=splits, negative_keep=negative_keep, window=window)
