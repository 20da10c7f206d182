"""The interface between the aggregator and any scorer (in-process or a ranking worker)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, Sequence

import numpy as np

from app.candidates.types import Candidate


class Scorer(Protocol):
    """Scores N candidates for one user.

    ``profile`` is the user's document from the users index (``_source``), or an
    empty dict for a cold-start user. ``score`` returns a float32 array of shape
    (N,) with watch probabilities in [0, 1], in the order of ``candidates``.
    """

    model_version: str

    def score(self, profile: dict[str, Any], candidates: Sequence[Candidate], request_time: datetime) -> np.ndarray:
        ...
