"""A deterministic stand-in for the ranking model, loaded by workers and the API in tests.

``load_scorer(settings, version)`` serves ``version``; for ``latest`` (or None) it
serves the version written in ``<model_dir>/fixture-version``, else ``fixture-v1``.
Version ``broken`` fails to load. Scores depend only on (version, video id), so two
processes serving the same version give the same scores.
"""

from __future__ import annotations

import zlib
from datetime import datetime
from typing import Any, Sequence

import numpy as np

from app.candidates.types import Candidate

DEFAULT_VERSION = "fixture-v1"


def fixture_score(version: str, video_id: str) -> float:
    return (zlib.crc32(f"{version}:{video_id}".encode()) % 1_000_003) / 1_000_003


class FixtureScorer:
    def __init__(self, model_version: str) -> None:
        self.model_version = model_version

    def score(self, profile: dict[str, Any], candidates: Sequence[Candidate], request_time: datetime) -> np.ndarray:
        return np.array([fixture_score(self.model_version, c.video_id) for c in candidates], dtype=np.float32)


def load_scorer(settings, version: str | None) -> FixtureScorer:
    if version in (None, "latest"):
        marker = settings.model_dir / "fixture-version"
        version = marker.read_text().strip() if marker.exists() else DEFAULT_VERSION
    if version == "broken":
        raise FileNotFoundError(f"no model version broken under {settings.model_dir}")
    return FixtureScorer(version)
