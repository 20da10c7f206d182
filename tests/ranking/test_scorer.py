import numpy as np
import pytest

from app.candidates.types import Candidate, ChannelHit
from ranking.artifacts import ModelNotFoundError, load_model, resolve_version, save_model
from ranking.scorer import BatchScorer, load_scorer
from ranking.synthetic import make_world
from ranking.train import TrainConfig, train_model
from ranking.training_data import build_training_data

KEEP = 0.5


@pytest.fixture(scope="module")
def trained():
    world = make_world(videos=150, users=60, requests_per_user=2, candidates=20, dims=16, seed=2)
    data = build_training_data(world.requests, world.table, world.popularity, negative_keep=KEEP)
    models = {kind: train_model(data, TrainConfig(kind=kind, epochs=3)).model for kind in ("mlp", "lr")}
    return world, data, models


@pytest.mark.parametrize("kind", ["mlp", "lr"])
def test_scorer_equals_plain_forward(trained, kind):
    world, data, models = trained
    scorer = BatchScorer(models[kind], data.encoder, KEEP, "test")
    for request in world.requests[-5:]:
        fast = scorer.score(request.profile, request.candidates, request.request_time)
        plain = scorer.score_plain(request.profile, request.candidates, request.request_time)
        assert fast.dtype == np.float32
        assert fast.shape == (len(request.candidates),)
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)


def test_scorer_unknown_candidate_gets_default(trained):
    world, data, models = trained
    scorer = BatchScorer(models["mlp"], data.encoder, KEEP, "test")
    request = world.requests[0]
    unknown = [Candidate("never-seen-1"), Candidate("never-seen-2", [ChannelHit("popular_fresh", 3, 1.0)])]
    scores = scorer.score(request.profile, unknown, request.request_time)
    assert np.all(np.isfinite(scores))
    assert np.all((scores > 0) & (scores < 1))
    alone = scorer.score(request.profile, unknown[:1], request.request_time)
    assert alone[0] == pytest.approx(scores[0], abs=1e-6)


def test_scorer_cold_start_and_empty(trained):
    world, data, models = trained
    scorer = BatchScorer(models["mlp"], data.encoder, KEEP, "test")
    assert scorer.score({}, [], world.requests[0].request_time).shape == (0,)
    scores = scorer.score({}, world.requests[0].candidates, world.requests[0].request_time)
    assert np.all(np.isfinite(scores))


def test_scorer_rejects_zero_threads(trained):
    _, data, models = trained
    with pytest.raises(ValueError, match="threads=0"):
        BatchScorer(models["lr"], data.encoder, KEEP, "test", threads=0)


def test_artifacts_round_trip(trained, settings):
    world, data, models = trained
    lr_dir = save_model(settings.model_dir, models["lr"], data.encoder, KEEP, {"window": data.window})
    mlp_dir = save_model(settings.model_dir, models["mlp"], data.encoder, KEEP, {"window": data.window})
    assert resolve_version(settings.model_dir, "latest") == mlp_dir
    assert resolve_version(settings.model_dir, "latest-lr") == lr_dir
    scorer = load_scorer(settings, "latest")
    assert scorer.model_version == mlp_dir.name
    original = BatchScorer(models["mlp"], data.encoder, KEEP, "test")
    request = world.requests[3]
    np.testing.assert_allclose(scorer.score(request.profile, request.candidates, request.request_time),
                               original.score(request.profile, request.candidates, request.request_time), rtol=1e-6)
    _, _, record = load_model(settings.model_dir, lr_dir.name)
    assert record["shape"]["kind"] == "lr"
    assert record["code_version"]


def test_artifacts_unknown_version(settings):
    with pytest.raises(ModelNotFoundError, match="no ranking model"):
        resolve_version(settings.model_dir, "latest")
    with pytest.raises(ModelNotFoundError, match="'mlp-x' not found"):
        resolve_version(settings.model_dir, "mlp-x")


def test_scorer_refresh_popularity_changes_scores(trained):
    world, data, models = trained
    scorer = BatchScorer(models["mlp"], data.encoder, KEEP, "test")
    request = world.requests[0]
    before = scorer.score(request.profile, request.candidates, request.request_time)
    video_id = request.candidates[0].video_id
    assert scorer.refresh_popularity({video_id: 1e6, "not-in-table": 5}) == 1
    after = scorer.score(request.profile, request.candidates, request.request_time)
    assert after[0] != pytest.approx(before[0], abs=1e-7)
    np.testing.assert_allclose(after[1:], before[1:], rtol=1e-6)
