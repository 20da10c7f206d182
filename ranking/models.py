"""Ranking models: logistic regression and an MLP of ReLU layers with a sigmoid output.

Notation: R requests, B examples (user, candidate pairs), N history length,
Du user-dense width, Dv static video width, Dd dynamic width, E id-embedding
dims, L location-embedding dims. Both models read one concatenated row per
example, in this column order:

    [user dense (Du) | mean history id embedding (E) | location embedding (L)
     | static video row (Dv) | candidate id embedding (E) | dynamic (Dd)]

and differ only in their hidden layers (none for logistic regression). The
first ``user_width`` columns depend only on the request and the next
``video_width`` only on the video, which is what lets the batch scorer split
the first layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass
class ModelShape:
    """Widths of the input blocks and the hidden layers; saved with the model."""

    kind: str
    user_dense: int
    video_static: int
    dynamic: int
    id_count: int
    location_count: int
    id_embedding_dims: int
    location_embedding_dims: int
    hidden: tuple[int, ...] = ()

    @property
    def user_width(self) -> int:
        return self.user_dense + self.id_embedding_dims + self.location_embedding_dims

    @property
    def video_width(self) -> int:
        return self.video_static + self.id_embedding_dims

    @property
    def input_width(self) -> int:
        return self.user_width + self.video_width + self.dynamic


MODEL_KINDS = ("lr", "mlp")
DEFAULT_HIDDEN = {"lr": (), "mlp": (128, 64)}
# Logistic regression has one layer and few parameters per input, so it needs larger steps to converge.
DEFAULT_LEARNING_RATE = {"lr": 1e-2, "mlp": 1e-3}


class Ranker(nn.Module):
    """Scores (user, candidate) examples with logits; ``predict`` applies the sigmoid."""

    def __init__(self, shape: ModelShape, video_static: torch.Tensor, video_id_index: torch.Tensor):
        super().__init__()
        if shape.kind not in MODEL_KINDS:
            raise ValueError(f"model kind {shape.kind!r} is invalid, expected one of {', '.join(MODEL_KINDS)}")
        self.shape = shape
        self.id_embedding = nn.Embedding(shape.id_count, shape.id_embedding_dims, padding_idx=0)
        self.location_embedding = nn.Embedding(shape.location_count, shape.location_embedding_dims)
        nn.init.normal_(self.id_embedding.weight, std=0.05)
        nn.init.normal_(self.location_embedding.weight, std=0.05)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()
        widths = [shape.input_width, *shape.hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # The static video rows come from the feature table, saved beside the weights.
        self.register_buffer("video_static", video_static.float(), persistent=False)
        self.register_buffer("video_id_index", video_id_index.long(), persistent=False)

    def user_block(self, user_dense: torch.Tensor, history: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """Return the user columns (R, Du + E + L) from dense (R, Du), history (R, N), location (R,)."""
        embedded = self.id_embedding(history)
        mask = (history != 0).unsqueeze(-1).float()
        history_mean = (embedded * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.cat([user_dense, history_mean, self.location_embedding(location)], dim=1)

    def video_block(self, rows: torch.Tensor) -> torch.Tensor:
        """Return the video columns (B, Dv + E) of table rows (B,)."""
        return torch.cat([self.video_static[rows], self.id_embedding(self.video_id_index[rows])], dim=1)

    def concat_features(self, user_dense, history, location, request_index, rows, dynamic) -> torch.Tensor:
        """Return the full input matrix (B, D) of B examples from R requests."""
        user = self.user_block(user_dense[request_index], history[request_index], location[request_index])
        return torch.cat([user, self.video_block(rows), dynamic], dim=1)

    def head(self, first: torch.Tensor) -> torch.Tensor:
        """Apply the layers after the first linear layer to its output (B, H1); return logits (B,)."""
        hidden = first
        for layer in self.layers[1:]:
            hidden = layer(F.relu(hidden))
        return hidden.squeeze(-1)

    def forward(self, user_dense, history, location, request_index, rows, dynamic) -> torch.Tensor:
        """Return logits (B,)."""
        x = self.concat_features(user_dense, history, location, request_index, rows, dynamic)
        return self.head(self.layers[0](x))


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits, each example weighted by ``weights`` when given."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if weights is not None:
        loss = loss * weights
    return loss.mean()


def correct_for_sampling(p_sampled: torch.Tensor | float, kept_fraction: float):
    """Map a probability learned on downsampled negatives back to the full distribution.

    With a fraction r of negatives kept, odds are inflated by 1/r, so
    p = p_s / (p_s + (1 - p_s) / r). r = 1 leaves p unchanged.
    """
    if not 0 < kept_fraction <= 1:
        raise ValueError(f"kept_fraction={kept_fraction} is invalid, expected 0 < r <= 1")
    return p_sampled / (p_sampled + (1 - p_sampled) / kept_fraction)
