"""Batch scorer: one user and N candidates in, N watch probabilities out.

The first linear layer is split by input block (notation as in
``ranking.models``): W x + b = W_u x_u + W_v x_v + W_d x_d + b. The video
part W_v x_v + b is computed for every row of the feature table when the
scorer loads a model version. A request then computes the user part once,
history bag and location embedding included, and only the small dynamic part
per candidate: O(H1 * (Du + N * Dd)) instead of O(N * H1 * (Du + Dv + Dd)).

A request carries the user's profile once and the candidate ids with their
channel ranks and scores; the scorer looks every video-side feature up in its
table. An id the table does not hold gets the table's default row.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any, Sequence

import numpy as np
import torch

from app.candidates.types import Candidate
from app.settings import Settings
from ranking.artifacts import load_model
from ranking.features import FeatureEncoder, Popularity, TablePopularity, request_timestamp
from ranking.models import Ranker

logger = logging.getLogger(__name__)


class BatchScorer:
    """Scores candidates with one loaded model version; implements ``ranking.scorer_protocol.Scorer``.

    ``threads`` pins torch's intra-op thread count for the whole process
    (default 1: ranking workers run one per core).
    """

    def __init__(self, model: Ranker, encoder: FeatureEncoder, negative_keep: float, model_version: str,
                 popularity: Popularity | None = None, threads: int = 1):
        if threads < 1:
            raise ValueError(f"threads={threads} is invalid, expected an integer >= 1")
        torch.set_num_threads(threads)
        self.model = model.eval()
        self.encoder = encoder
        self.model_version = model_version
        self.log_keep = math.log(negative_keep)
        self.popularity = popularity or TablePopularity(encoder.table)
        shape = model.shape
        with torch.no_grad():
            weight = model.layers[0].weight
            self._w_user = weight[:, : shape.user_width].T.contiguous()
            self._w_video = weight[:, shape.user_width: shape.user_width + shape.video_width].T.contiguous()
            self._w_dynamic = weight[:, shape.user_width + shape.video_width:].T.contiguous()
            all_rows = torch.arange(model.video_static.shape[0])
            self._video_first = (model.video_block(all_rows) @ self._w_video + model.layers[0].bias).contiguous()

    def refresh_popularity(self, counts: dict[str, float]) -> int:
        """Replace the popularity feature's watch counts with live values (see ``feature_table.read_popularity``).

        Returns how many of the given ids the table holds.
        """
        return self.encoder.table.set_popularity(counts)

    def _features(self, profile: dict[str, Any], candidates: Sequence[Candidate], request_time: datetime | float):
        user = self.encoder.encode_user(profile or {}, request_timestamp(request_time))
        rows, dynamic = self.encoder.encode_candidates(user, candidates, self.popularity)
        return user, torch.from_numpy(rows), torch.from_numpy(dynamic)

    def score(self, profile: dict[str, Any], candidates: Sequence[Candidate],
              request_time: datetime | float) -> np.ndarray:
        """Return float32 probabilities (N,) in the order of ``candidates``."""
        if not candidates:
            return np.zeros(0, dtype=np.float32)
        user, rows, dynamic = self._features(profile, candidates, request_time)
        with torch.no_grad():
            user_block = self.model.user_block(torch.from_numpy(user.dense)[None], torch.from_numpy(user.history)[None],
                                               torch.tensor([user.location]))
            first = self._video_first[rows] + dynamic @ self._w_dynamic + user_block @ self._w_user
            logits = self.model.head(first) + self.log_keep
        return torch.sigmoid(logits).numpy().astype(np.float32)

    def score_plain(self, profile: dict[str, Any], candidates: Sequence[Candidate],
                    request_time: datetime | float) -> np.ndarray:
        """Score with a plain forward pass over the concatenated features (the reference for ``score``)."""
        if not candidates:
            return np.zeros(0, dtype=np.float32)
        user, rows, dynamic = self._features(profile, candidates, request_time)
        with torch.no_grad():
            logits = self.model(torch.from_numpy(user.dense)[None], torch.from_numpy(user.history)[None],
                                torch.tensor([user.location]), torch.zeros(len(rows), dtype=torch.long),
                                rows, dynamic) + self.log_keep
        return torch.sigmoid(logits).numpy().astype(np.float32)


def load_scorer(settings: Settings, version: str | None = None, threads: int | None = None) -> BatchScorer:
    """Load ``version`` (default ``settings.ranker_version``) from ``settings.model_dir`` as a BatchScorer.

    ``threads`` defaults to ``settings.worker_threads``.
    """
    model, encoder, record = load_model(settings.model_dir, version or settings.ranker_version)
    return BatchScorer(model, encoder, record["negative_keep"], record["version"],
                       threads=threads or settings.worker_threads)
