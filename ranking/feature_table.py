"""Static video-side features in memory, keyed by video id.

The ranking scorer never reads vectors from Elasticsearch per request. A
``VideoFeatureTable`` is exported from the ``videos`` index (or built from
records) when a model is trained, saved inside the model's directory as
``.npy`` arrays, and opened memory-mapped by the scorer.

Row 0 is the default row for video ids the table does not know: a zero text
embedding, no category, no duration, no publish date and zero popularity.
Every other row belongs to one video id.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

TABLE_FORMAT_VERSION = 1
UNKNOWN_ROW = 0
EXPORTED_FIELDS = ["video_id", "text_embedding", "category", "duration_s", "published_at", "watch_count"]


def parse_timestamp(value: Any) -> float | None:
    """Convert an ISO 8601 string, epoch milliseconds or a datetime to epoch seconds (None when absent)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value) / 1000.0
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        # Elasticsearch stores dates without an offset as UTC.
        from datetime import timezone

        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


@dataclass
class VideoFeatureTable:
    """Per-video arrays, row ``i`` for ``video_ids[i - 1]`` and row 0 for unknown ids.

    Shapes, with V videos and D text-embedding dimensions: ``text_embedding``
    (V+1, D) float32; ``duration_s``, ``published_at`` (epoch seconds) and
    ``popularity`` (watch count) (V+1,) float64 with NaN for missing values;
    ``category`` (V+1,) object array of strings, "" when missing.
    """

    video_ids: list[str]
    text_embedding: np.ndarray
    category: np.ndarray
    duration_s: np.ndarray
    published_at: np.ndarray
    popularity: np.ndarray

    def __post_init__(self) -> None:
        self._row_of = {video_id: row for row, video_id in enumerate(self.video_ids, start=1)}
        norms = np.linalg.norm(np.asarray(self.text_embedding, dtype=np.float32), axis=1)
        self.text_norm = norms.astype(np.float32)

    @property
    def size(self) -> int:
        """Number of rows, the default row included."""
        return len(self.video_ids) + 1

    @property
    def dims(self) -> int:
        return int(self.text_embedding.shape[1])

    def row(self, video_id: str) -> int:
        """Return the row of ``video_id``, or ``UNKNOWN_ROW`` for an id the table does not hold."""
        return self._row_of.get(str(video_id), UNKNOWN_ROW)

    def rows(self, video_ids: Iterable[str]) -> np.ndarray:
        """Return the rows of ``video_ids`` as int64, ``UNKNOWN_ROW`` for unknown ids."""
        get = self._row_of.get
        return np.array([get(v if isinstance(v, str) else str(v), UNKNOWN_ROW) for v in video_ids], dtype=np.int64)

    def set_popularity(self, counts: dict[str, float]) -> int:
        """Replace the watch counts of the given videos with live values; return how many were found."""
        popularity = np.array(self.popularity, dtype=np.float64)
        found = 0
        for video_id, count in counts.items():
            row = self.row(video_id)
            if row != UNKNOWN_ROW:
                popularity[row] = float(count)
                found += 1
        self.popularity = popularity
        return found

    def save(self, folder: Path) -> None:
        """Write the table as .npy arrays plus ids and metadata in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "text_embedding.npy", np.asarray(self.text_embedding, dtype=np.float32))
        np.save(folder / "duration_s.npy", np.asarray(self.duration_s, dtype=np.float64))
        np.save(folder / "published_at.npy", np.asarray(self.published_at, dtype=np.float64))
        np.save(folder / "popularity.npy", np.asarray(self.popularity, dtype=np.float64))
        (folder / "categories.json").write_text(json.dumps([str(c) for c in self.category]))
        (folder / "video_ids.json").write_text(json.dumps(self.video_ids))
        meta = {"format_version": TABLE_FORMAT_VERSION, "videos": len(self.video_ids), "dims": self.dims}
        (folder / "table.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> "VideoFeatureTable":
        """Open a table written by ``save``; the text embeddings are memory-mapped unless ``mmap`` is False."""
        meta = json.loads((folder / "table.json").read_text())
        if meta.get("format_version") != TABLE_FORMAT_VERSION:
            raise ValueError(
                f"video feature table {folder} has format_version {meta.get('format_version')!r}, "
                f"expected {TABLE_FORMAT_VERSION}: retrain the model to rebuild it"
            )
        return cls(
            video_ids=json.loads((folder / "video_ids.json").read_text()),
            text_embedding=np.load(folder / "text_embedding.npy", mmap_mode="r" if mmap else None),
            category=np.array(json.loads((folder / "categories.json").read_text()), dtype=object),
            duration_s=np.load(folder / "duration_s.npy"),
            published_at=np.load(folder / "published_at.npy"),
            popularity=np.load(folder / "popularity.npy"),
        )


def build_table(records: Sequence[dict[str, Any]], dims: int) -> VideoFeatureTable:
    """Build a table from video documents (``_source`` of the videos index).

    A record without ``text_embedding`` gets a zero vector. A vector of another
    length raises ValueError naming the video id and both lengths.
    """
    count = len(records)
    embedding = np.zeros((count + 1, dims), dtype=np.float32)
    category = np.full(count + 1, "", dtype=object)
    duration = np.full(count + 1, np.nan)
    published = np.full(count + 1, np.nan)
    popularity = np.zeros(count + 1)
    video_ids: list[str] = []
    for row, record in enumerate(records, start=1):
        video_id = str(record["video_id"])
        video_ids.append(video_id)
        vector = record.get("text_embedding")
        if vector is not None:
            if len(vector) != dims:
                raise ValueError(f"video {video_id}: text_embedding has {len(vector)} dims, expected {dims}")
            embedding[row] = np.asarray(vector, dtype=np.float32)
        value = record.get("category")
        # A keyword field may hold a list (MovieLens genres); the first entry is the category.
        if isinstance(value, (list, tuple)):
            value = value[0] if value else ""
        category[row] = str(value or "")
        if record.get("duration_s") is not None:
            duration[row] = float(record["duration_s"])
        stamp = parse_timestamp(record.get("published_at"))
        if stamp is not None:
            published[row] = stamp
        count_value = record.get("watch_count")
        if count_value is not None and math.isfinite(float(count_value)):
            popularity[row] = float(count_value)
    if len(set(video_ids)) != len(video_ids):
        raise ValueError("video records contain duplicate video_id values")
    return VideoFeatureTable(video_ids, embedding, category, duration, published, popularity)


def read_popularity(client: Any, index: str, batch_size: int = 5000) -> dict[str, float]:
    """Return the current ``watch_count`` of every video in the videos index (alias ``index``)."""
    from elasticsearch import helpers

    counts = {}
    for hit in helpers.scan(client, index=index, query={"query": {"exists": {"field": "watch_count"}}},
                            _source=["video_id", "watch_count"], size=batch_size):
        source = hit["_source"]
        counts[str(source["video_id"])] = float(source["watch_count"])
    return counts


def export_table(client: Any, index: str, dims: int, batch_size: int = 1000) -> VideoFeatureTable:
    """Scan the videos index (alias ``index``) and build the table from every document."""
    from elasticsearch import helpers

    records = [
        hit["_source"]
        for hit in helpers.scan(client, index=index, query={"query": {"match_all": {}}},
                                _source=EXPORTED_FIELDS, size=batch_size)
    ]
    logger.info("exported video feature table index=%s videos=%d", index, len(records))
    return build_table(records, dims)
