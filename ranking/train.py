"""Train a ranking model on ``TrainingData`` with fixed seeds and early stopping on validation loss."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ranking.models import DEFAULT_HIDDEN, DEFAULT_LEARNING_RATE, ModelShape, Ranker, bce_loss
from ranking.training_data import ExampleSplit, TrainingData

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Training produced a NaN or infinite loss or weight."""


@dataclass
class TrainConfig:
    """Optimizer and stopping settings. ``weight_positives`` scales each positive's loss by its engagement."""

    kind: str = "mlp"
    hidden: tuple[int, ...] | None = None
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float | None = None
    weight_decay: float = 1e-5
    patience: int = 3
    seed: int = 0
    weight_positives: bool = False
    # One torch thread by default: on a 2-core machine shared with Elasticsearch, two threads made
    # MLP epochs about 10x slower than one (vidrec evaluate ranking on ml-latest-small).
    threads: int = 1


@dataclass
class TrainResult:
    """The model at its best validation epoch and the run's figures."""

    model: Ranker
    best_epoch: int
    best_validation_loss: float
    seconds: float
    examples_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(data: TrainingData, kind: str, hidden: tuple[int, ...] | None = None) -> Ranker:
    """Create an untrained model sized for ``data``'s encoder."""
    encoder = data.encoder
    if kind != "mlp":
        hidden = ()
    elif hidden is None:
        hidden = DEFAULT_HIDDEN[kind]
    shape = ModelShape(
        kind=kind, user_dense=encoder.user_width, video_static=encoder.video_width,
        dynamic=data.splits["train"].dynamic.shape[1], id_count=encoder.vocab.id_count,
        location_count=encoder.vocab.location_count, id_embedding_dims=encoder.config.id_embedding_dims,
        location_embedding_dims=encoder.config.location_embedding_dims,
        hidden=tuple(hidden),
    )
    return Ranker(shape, torch.from_numpy(encoder.video_matrix()), torch.from_numpy(encoder.table_id_index))


def example_weights(split: ExampleSplit, weight_positives: bool) -> torch.Tensor | None:
    """Per-example loss weights: positives scaled by engagement / mean positive engagement, negatives 1."""
    if not weight_positives:
        return None
    positive = split.labels > 0
    mean = float(split.engagement[positive].mean()) if bool(positive.any()) else 1.0
    weights = torch.ones_like(split.labels)
    weights[positive] = split.engagement[positive] / (mean or 1.0)
    return weights


def split_logits(model: Ranker, split: ExampleSplit, batch_size: int = 8192) -> torch.Tensor:
    """Return logits (B,) of every example in ``split``, in evaluation mode and without gradients."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, split.size, batch_size):
            part = slice(start, start + batch_size)
            out.append(model(split.user_dense, split.history, split.location, split.request_index[part],
                             split.rows[part], split.dynamic[part]))
    return torch.cat(out) if out else torch.zeros(0)


def validation_loss(model: Ranker, split: ExampleSplit, kept_fraction: float) -> float:
    """BCE on an intact split of the sampling-corrected probabilities (logit + log r)."""
    logits = split_logits(model, split) + math.log(kept_fraction)
    return float(bce_loss(logits, split.labels))


def check_loss(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise TrainingDivergedError(f"training loss became {loss} at epoch {epoch}: lower the learning rate")


def check_finite(model: Ranker, loss: float, epoch: int) -> None:
    check_loss(loss, epoch)
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise TrainingDivergedError(f"parameter {name} has NaN or infinite values at epoch {epoch}")


def train_model(data: TrainingData, config: TrainConfig) -> TrainResult:
    """Train with Adam on the (downsampled) training split; keep the epoch with the lowest validation loss."""
    set_seeds(config.seed)
    torch.set_num_threads(config.threads)
    model = build_model(data, config.kind, config.hidden)
    train, validation = data.splits["train"], data.splits["validation"]
    weights = example_weights(train, config.weight_positives)
    learning_rate = config.learning_rate or DEFAULT_LEARNING_RATE[config.kind]
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)

    best_loss, best_epoch, best_state = math.inf, -1, None
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    seen = 0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(train.size, generator=generator)
        total, batches = 0.0, 0
        for start in range(0, train.size, config.batch_size):
            batch = order[start: start + config.batch_size]
            logits = model(train.user_dense, train.history, train.location, train.request_index[batch],
                           train.rows[batch], train.dynamic[batch])
            loss = bce_loss(logits, train.labels[batch], None if weights is None else weights[batch])
            optimizer.zero_grad()
            loss.backward()
            loss_value = loss.item()
            check_loss(loss_value, epoch)
            optimizer.step()
            total += loss_value
            batches += 1
            seen += len(batch)
        train_loss = total / max(batches, 1)
        check_finite(model, train_loss, epoch)
        valid_loss = validation_loss(model, validation, data.negative_keep)
        history.append({"epoch": epoch, "train_loss": train_loss, "validation_loss": valid_loss})
        logger.info("epoch=%d train_loss=%.4f validation_loss=%.4f", epoch, train_loss, valid_loss)
        if valid_loss < best_loss - 1e-5:
            best_loss, best_epoch = valid_loss, epoch
            best_state = {key: value.clone() for key, value in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            logger.info("early stop at epoch=%d best_epoch=%d", epoch, best_epoch)
            break
    seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, best_epoch=best_epoch, best_validation_loss=best_loss, seconds=seconds,
                       examples_per_s=seen / seconds if seconds > 0 else 0.0, history=history)
