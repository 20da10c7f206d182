import math

import numpy as np
import pytest
import torch

from ranking.metrics import auc
from ranking.models import correct_for_sampling
from ranking.synthetic import make_world
from ranking.train import TrainConfig, TrainingDivergedError, split_logits, train_model
from ranking.training_data import build_training_data, split_by_time
from ranking.features import user_dense_columns

KEEP = 0.3


@pytest.fixture(scope="module")
def world():
    return make_world(videos=200, users=150, requests_per_user=3, candidates=30, dims=16, seed=1)


@pytest.fixture(scope="module")
def data(world):
    return build_training_data(world.requests, world.table, world.popularity, negative_keep=KEEP, seed=3)


@pytest.fixture(scope="module")
def results(data):
    return {kind: train_model(data, TrainConfig(kind=kind, epochs=15)) for kind in ("mlp", "lr")}


def corrected_probabilities(result, split):
    return torch.sigmoid(split_logits(result.model, split) + math.log(KEEP)).numpy()


def test_correct_for_sampling_known_values():
    assert correct_for_sampling(0.5, 0.25) == pytest.approx(0.2)
    assert correct_for_sampling(0.3, 1.0) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="kept_fraction=0"):
        correct_for_sampling(0.5, 0)


def test_logit_offset_equals_correction_formula():
    p_s = torch.tensor([0.01, 0.2, 0.5, 0.9])
    shifted = torch.sigmoid(torch.logit(p_s) + math.log(KEEP))
    torch.testing.assert_close(shifted, correct_for_sampling(p_s, KEEP))


def test_split_by_time_orders_requests(world):
    parts = split_by_time(world.requests, (0.8, 0.1))
    assert max(r.request_time for r in parts["train"]) <= min(r.request_time for r in parts["validation"])
    assert max(r.request_time for r in parts["validation"]) <= min(r.request_time for r in parts["test"])
    assert sum(len(p) for p in parts.values()) == len(world.requests)


def test_downsampling_only_in_train(world, data):
    parts = split_by_time(world.requests, (0.8, 0.1))
    for name in ("validation", "test"):
        assert data.splits[name].size == sum(len(r.candidates) for r in parts[name])
    train_total = sum(len(r.candidates) for r in parts["train"])
    train_positives = sum(sum(r.labels) for r in parts["train"])
    assert int(data.splits["train"].labels.sum()) == train_positives
    kept_negatives = data.splits["train"].size - train_positives
    assert kept_negatives == pytest.approx(KEEP * (train_total - train_positives), rel=0.15)


def test_stats_fitted_on_train_only(world, data):
    parts = split_by_time(world.requests, (0.8, 0.1))
    train_ages = [r.profile["age"] for r in parts["train"] if r.profile.get("age") is not None]
    all_ages = [r.profile["age"] for r in world.requests if r.profile.get("age") is not None]
    age = user_dense_columns(data.encoder.config).index("age")
    assert data.encoder.stats.user.mean[age] == pytest.approx(np.mean(train_ages))
    assert data.encoder.stats.user.mean[age] != pytest.approx(np.mean(all_ages), abs=1e-9)
    test_only_videos = {c.video_id for r in parts["test"] for c in r.candidates} - {
        c.video_id for r in parts["train"] for c in r.candidates} - {
        w["video_id"] for r in parts["train"] for w in r.profile["recent_watches"]}
    assert not set(data.encoder.vocab.video_ids) & test_only_videos


@pytest.mark.parametrize("kind", ["mlp", "lr"])
def test_training_learns_planted_signal(data, results, kind):
    result = results[kind]
    test = data.splits["test"]
    probabilities = corrected_probabilities(result, test)
    assert auc(test.labels.numpy(), probabilities) > 0.75
    # Trained on 30% of negatives; corrected, the mean matches the intact test rate.
    assert probabilities.mean() == pytest.approx(test.positive_rate(), abs=0.03)
    assert result.examples_per_s > 0


def test_uncorrected_probabilities_overestimate(data, results):
    result = results["mlp"]
    test = data.splits["test"]
    raw = torch.sigmoid(split_logits(result.model, test)).numpy()
    assert raw.mean() > test.positive_rate() + 0.05


def test_training_is_reproducible(data):
    first = train_model(data, TrainConfig(kind="lr", epochs=2, seed=5))
    second = train_model(data, TrainConfig(kind="lr", epochs=2, seed=5))
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(value, second.model.state_dict()[key])


def test_nan_loss_raises_named_error(world):
    broken = build_training_data(world.requests, world.table, world.popularity, negative_keep=KEEP)
    broken.splits["train"].dynamic[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="loss became nan"):
        train_model(broken, TrainConfig(kind="lr", epochs=1, batch_size=100_000))


def test_engagement_weighting_changes_weights(data):
    from ranking.train import example_weights

    train = data.splits["train"]
    weights = example_weights(train, True)
    positive = train.labels > 0
    assert float(weights[positive].mean()) == pytest.approx(1.0, rel=1e-5)
    assert float(weights[positive].std()) > 0.05
    assert bool((weights[~positive] == 1).all())
    assert example_weights(train, False) is None
