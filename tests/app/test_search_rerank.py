"""Reranking `GET /v1/search` with the ranking model: the rank blend, and the endpoint with the fixture scorer."""

import contextlib
import functools
import math
from datetime import datetime, timezone

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.aggregator import RankResult
from app.candidates.search import search_videos
from app.candidates.types import Candidate, ChannelHit
from app.main import create_app
from app.search_rerank import (as_ranking_candidates, blend_hits, blend_order, model_ranks, rerank_search,
                               scoring_window)
from tests.app.fixture_scorer import fixture_score
from tests.app.recommend_catalog import N_VIDEOS, UNAVAILABLE, index_catalog, video_doc
from tests.app.workers import FIXTURE_LOADER

READ = {"X-API-Key": "test-read-key"}
RRF_K = 60
QUERY = "Video number 3 topic"


# The rank blend, pure.

IDS = ["a", "b", "c", "d"]


@pytest.mark.parametrize("case, ids, scores, weight, expected", [
    ("weight 0 keeps fused order", IDS, [0.1, 0.9, 0.5, 0.7], 0.0, [0, 1, 2, 3]),
    ("weight 1 is model order", IDS, [0.1, 0.9, 0.5, 0.7], 1.0, [1, 3, 2, 0]),
    ("equal model scores keep fused order", IDS, [0.5, 0.5, 0.5, 0.5], 1.0, [0, 1, 2, 3]),
    ("blend tie breaks on fused rank", ["b", "a"], [0.4, 0.6], 0.5, [0, 1]),
    ("unscored hits follow in fused order", IDS, [0.2, 0.8], 1.0, [1, 0, 2, 3]),
    ("unscored hits follow at weight 0.5", IDS, [0.2, 0.8], 0.5, [0, 1, 2, 3]),
    ("NaN model score ranks last", ["a", "b", "c"], [math.nan, 0.1, 0.2], 1.0, [2, 1, 0]),
    ("all NaN keeps fused order", ["a", "b", "c"], [math.nan] * 3, 1.0, [0, 1, 2]),
    ("no hits", [], [], 0.5, []),
])
def test_blend_order_cases(case, ids, scores, weight, expected):
    order = blend_order(ids, scores, weight, RRF_K)
    assert [index for index, _ in order] == expected, case


def test_blend_order_final_scores():
    # Fused ranks 1, 2, 3; model ranks 3, 1, 2.
    order = dict(blend_order(["a", "b", "c"], [0.1, 0.9, 0.5], 0.25, RRF_K))
    assert order[0] == pytest.approx(0.75 / 61 + 0.25 / 63)
    assert order[1] == pytest.approx(0.75 / 62 + 0.25 / 61)
    assert order[2] == pytest.approx(0.75 / 63 + 0.25 / 62)


def test_blend_order_unscored_hit_has_fused_term_only():
    order = dict(blend_order(["a", "b", "c"], [0.3], 0.5, RRF_K))
    assert order[1] == pytest.approx(0.5 / 62)
    assert order[2] == pytest.approx(0.5 / 63)


def test_blend_order_mid_weight_between_orders():
    # A hit that the model puts first climbs from fused rank 4 at weight 0.75 but not at 0.25.
    scores = [0.4, 0.3, 0.2, 0.9]
    assert blend_order(IDS, scores, 0.25, RRF_K)[0][0] == 0
    assert blend_order(IDS, scores, 0.75, RRF_K)[0][0] == 3


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan])
def test_blend_order_rejects_bad_weight(weight):
    with pytest.raises(ValueError, match="expected a number from 0 to 1"):
        blend_order(IDS, [0.1] * 4, weight, RRF_K)


def test_blend_order_rejects_extra_scores():
    with pytest.raises(ValueError, match="5 model scores for 4 hits"):
        blend_order(IDS, [0.1] * 5, 0.5, RRF_K)


def test_model_ranks_nan_last_ties_in_order():
    assert model_ranks([0.2, math.nan, 0.9, 0.2]).tolist() == [2, 4, 1, 3]


def test_scoring_window_bounds():
    assert scoring_window(count=500, k=10, window=100) == 100
    assert scoring_window(count=500, k=150, window=100) == 150
    assert scoring_window(count=40, k=10, window=100) == 40


def candidate(video_id, fused_score, *lists):
    return Candidate(video_id, [ChannelHit(name, rank, 1.0) for name, rank in lists], fused_score)


def test_ranking_candidates_use_channel_names():
    item = candidate("v1", 0.03, ("bm25", 1), ("knn", 4), ("personal", 2))
    mapped = as_ranking_candidates([item])[0]
    assert [hit.channel for hit in mapped.sources] == ["query_text", "query_semantic", "history_content"]
    assert [hit.rank for hit in mapped.sources] == [1, 4, 2]
    assert mapped.fused_score == 0.03
    assert [hit.channel for hit in item.sources] == ["bm25", "knn", "personal"]


def test_blend_hits_reports_nan_as_none():
    items = [candidate("a", 0.03, ("bm25", 1)), candidate("b", 0.02, ("knn", 1))]
    hits = blend_hits(items, np.array([math.nan, 0.4]), 1.0, RRF_K, k=2)
    assert [hit.candidate.video_id for hit in hits] == ["b", "a"]
    assert hits[0].model_score == pytest.approx(0.4)
    assert hits[1].model_score is None
    assert all(math.isfinite(hit.score) for hit in hits)


class RecordingRanker:
    """A ranking service that returns fixed scores and records what it was given."""

    def __init__(self, scores=None, degraded=False):
        self.scores = scores
        self.degraded = degraded
        self.calls = []

    async def rank(self, request_id, user_id, profile, candidates, request_time, hash_key=None):
        self.calls.append({"candidates": list(candidates), "profile": profile, "hash_key": hash_key,
                           "request_time": request_time})
        scores = None if self.scores is None else np.asarray(self.scores[: len(candidates)], dtype=np.float32)
        return RankResult(scores, "stub-v1", self.degraded)


def fused_items(count):
    return [candidate(f"v{i}", 1.0 / (RRF_K + i), ("bm25", i), ("knn", i)) for i in range(1, count + 1)]


async def test_rerank_search_scores_window_with_channels():
    ranker = RecordingRanker(scores=[0.1, 0.2, 0.9, 0.3, 0.5])
    result = await rerank_search(fused_items(8), k=3, profile={"age": 30}, ranker=ranker, weight=1.0, window=5,
                                 rrf_k=RRF_K, request_id="r1")
    assert len(ranker.calls) == 1
    sent = ranker.calls[0]["candidates"]
    assert [c.video_id for c in sent] == ["v1", "v2", "v3", "v4", "v5"]
    assert {hit.channel for c in sent for hit in c.sources} == {"query_text", "query_semantic"}
    assert ranker.calls[0]["profile"] == {"age": 30}
    assert ranker.calls[0]["hash_key"] == "r1"
    assert [hit.candidate.video_id for hit in result.hits] == ["v3", "v5", "v4"]
    assert {hit.channel for hit in result.hits[0].candidate.sources} == {"bm25", "knn"}
    assert result.model_version == "stub-v1"
    assert result.degraded is False


async def test_rerank_search_weight_zero_skips_model():
    ranker = RecordingRanker(scores=[0.9] * 8)
    result = await rerank_search(fused_items(8), k=4, profile={}, ranker=ranker, weight=0.0, window=5,
                                 rrf_k=RRF_K, request_id="r1")
    assert ranker.calls == []
    assert [hit.candidate.video_id for hit in result.hits] == ["v1", "v2", "v3", "v4"]
    assert [hit.score for hit in result.hits] == [item.fused_score for item in fused_items(4)]
    assert result.model_version is None
    assert result.degraded is False


@pytest.mark.parametrize("ranker", [None, RecordingRanker(scores=None, degraded=True)])
async def test_rerank_search_without_scores_keeps_fused(ranker):
    result = await rerank_search(fused_items(6), k=4, profile={}, ranker=ranker, weight=0.5, window=5,
                                 rrf_k=RRF_K, request_id="r1")
    assert [hit.candidate.video_id for hit in result.hits] == ["v1", "v2", "v3", "v4"]
    assert all(hit.model_score is None for hit in result.hits)
    assert result.model_version is None
    assert result.degraded is True


# The endpoint, on the real node, scored by the fixture scorer.


class CatalogVectorEncoder:
    """Encodes every query as one catalog video's text embedding, so that video leads the kNN list."""

    def __init__(self, vector):
        self.vector = np.asarray(vector, dtype=np.float32)

    def encode(self, texts):
        return np.tile(self.vector, (len(texts), 1))


@pytest.fixture
def catalog_settings(settings, es):
    index_catalog(es, settings)
    return settings.model_copy(update={"scorer_loader": FIXTURE_LOADER, "ranking_deadline_ms": 5000.0})


@pytest.fixture
def encoder():
    # The same generator sequence as index_catalog, which indexes video_doc(i) for i in order.
    rng = np.random.default_rng(7)
    docs = [video_doc(i, rng) for i in range(N_VIDEOS)]
    return CatalogVectorEncoder(docs[40]["text_embedding"])


@contextlib.contextmanager
def search_client(settings, encoder, **overrides):
    with TestClient(create_app(settings.model_copy(update=overrides))) as client:
        client.app.state.query_encoder = encoder
        yield client


def model_score(video_id):
    # The aggregator returns float32 scores.
    return float(np.float32(fixture_score("fixture-v1", video_id)))


def search(client, **params):
    response = client.get("/v1/search", params={"q": QUERY, **params}, headers=READ)
    assert response.status_code == 200, response.text
    return response.json()


def ids(body):
    return [item["video_id"] for item in body["items"]]


def fused_search(client, settings, encoder, k=100, user_id=None):
    call = functools.partial(search_videos, client.app.state.es, settings, encoder, QUERY, k=k, user_id=user_id)
    return client.portal.call(call)


@pytest.mark.es
def test_search_reports_fixture_version(catalog_settings, encoder):
    with search_client(catalog_settings, encoder) as client:
        body = search(client, k=20)
        fused = fused_search(client, catalog_settings, encoder)
    assert body["model_version"] == "fixture-v1"
    assert body["degraded"] is False
    fused_ids = [item.video_id for item in fused.items]
    # Every available video matches "video number", so the fused list contains the whole available catalog.
    assert len(fused_ids) == N_VIDEOS - len(UNAVAILABLE)
    scores = [model_score(video_id) for video_id in fused_ids]
    expected = blend_order(fused_ids, scores, catalog_settings.search_rerank_weight, RRF_K)[:20]
    assert ids(body) == [fused_ids[index] for index, _ in expected]
    assert ids(body) != fused_ids[:20]
    assert [item["score"] for item in body["items"]] == pytest.approx([final for _, final in expected])
    assert [item["rank"] for item in body["items"]] == list(range(1, 21))


@pytest.mark.es
def test_search_weight_one_follows_model(catalog_settings, encoder):
    with search_client(catalog_settings, encoder, search_rerank_weight=1.0) as client:
        body = search(client, k=10)
        fused = fused_search(client, catalog_settings, encoder)
    fused_ids = [item.video_id for item in fused.items]
    by_model = sorted(fused_ids, key=lambda video_id: -model_score(video_id))
    assert ids(body) == by_model[:10]
    assert ids(body) != fused_ids[:10]


@pytest.mark.es
def test_search_window_caps_scored_hits(catalog_settings, encoder):
    # A window below k scores exactly the top k fused hits.
    with search_client(catalog_settings, encoder, search_rerank_weight=1.0, search_rerank_window=3) as client:
        body = search(client, k=8, explain="true")
        fused = fused_search(client, catalog_settings, encoder)
    top = [item.video_id for item in fused.items[:8]]
    assert ids(body) == sorted(top, key=lambda video_id: -model_score(video_id))
    assert all(item["model_score"] is not None for item in body["items"])


@pytest.mark.es
def test_search_without_rerank_is_fused(catalog_settings, encoder):
    with search_client(catalog_settings, encoder) as client:
        body = search(client, k=15, rerank="false", explain="true")
        fused = fused_search(client, catalog_settings, encoder, k=15)
    assert body["model_version"] is None
    assert body["degraded"] is False
    assert ids(body) == [item.video_id for item in fused.items]
    assert [item["score"] for item in body["items"]] == pytest.approx([item.fused_score for item in fused.items])
    assert all(item["model_score"] is None for item in body["items"])
    # The encoder returns v40's own vector, so v40 leads the kNN list.
    v40 = next(item for item in body["items"] if item["video_id"] == "v40")
    assert ("knn", 1) in [(source["channel"], source["rank"]) for source in v40["sources"]]


@pytest.mark.es
def test_search_explain_keeps_list_names(catalog_settings, encoder):
    with search_client(catalog_settings, encoder) as client:
        anonymous = search(client, k=10, explain="true")
        personal = search(client, k=10, explain="true", user_id="u1")
    lists = {source["channel"] for item in anonymous["items"] for source in item["sources"]}
    assert lists == {"bm25", "knn"}
    for item in anonymous["items"]:
        assert item["model_score"] == pytest.approx(model_score(item["video_id"]))
        assert item["fused_score"] > 0
        assert all(source["rank"] >= 1 for source in item["sources"])
    assert {source["channel"] for item in personal["items"] for source in item["sources"]} == {
        "bm25", "knn", "personal"}
    assert personal["model_version"] == "fixture-v1"


@pytest.mark.es
def test_search_weight_zero_skips_model(catalog_settings, encoder):
    # Version "broken" fails to load, so any model call would mark the response degraded.
    with search_client(catalog_settings, encoder, search_rerank_weight=0.0, ranker_version="broken") as client:
        body = search(client, k=10)
        fused = fused_search(client, catalog_settings, encoder, k=10)
    assert body["degraded"] is False
    assert body["model_version"] is None
    assert ids(body) == [item.video_id for item in fused.items]


@pytest.mark.es
def test_search_overload_keeps_fused_order(catalog_settings, encoder):
    with search_client(catalog_settings, encoder, max_inflight_recommendations=2) as client:
        recommender = client.app.state.recommender
        recommender.inflight = 2  # the limit is reached
        shed = search(client, k=10)
        recommender.inflight = 0
        served = search(client, k=10)
        fused = fused_search(client, catalog_settings, encoder, k=10)
        inflight_after = recommender.inflight
    assert shed["degraded"] is True
    assert shed["model_version"] is None
    assert ids(shed) == [item.video_id for item in fused.items]
    assert served["degraded"] is False
    assert served["model_version"] == "fixture-v1"
    assert inflight_after == 0


@pytest.mark.es
def test_search_failed_scoring_keeps_fused(catalog_settings, encoder):
    with search_client(catalog_settings, encoder, ranker_version="broken") as client:
        body = search(client, k=10, explain="true")
        fused = fused_search(client, catalog_settings, encoder, k=10)
    assert body["degraded"] is True
    assert body["model_version"] is None
    assert ids(body) == [item.video_id for item in fused.items]
    assert [item["score"] for item in body["items"]] == pytest.approx([item.fused_score for item in fused.items])
    assert all(item["model_score"] is None for item in body["items"])


@pytest.mark.es
async def test_search_reads_whole_profile(catalog_settings, es, encoder):
    from app.es_client import make_async_client

    watches = [{"video_id": "v2", "ts": datetime(2020, 1, 1, tzinfo=timezone.utc).isoformat()}]
    es.update(index=catalog_settings.alias("users"), id="u1", doc={"recent_watches": watches}, refresh=True)
    client = make_async_client(catalog_settings)
    try:
        whole = await search_videos(client, catalog_settings, encoder, QUERY, user_id="u1", whole_profile=True)
        partial = await search_videos(client, catalog_settings, encoder, QUERY, user_id="u1")
    finally:
        await client.close()
    assert whole.profile["recent_watches"][0]["video_id"] == "v2"
    assert "recent_watches" not in partial.profile
    assert whole.profile["history_vector"] == partial.profile["history_vector"]


@pytest.mark.es
def test_search_scores_at_serving_clock(catalog_settings, encoder):
    as_of = datetime(2018, 9, 25, tzinfo=timezone.utc)
    ranker = RecordingRanker(scores=[0.5] * 100)
    with search_client(catalog_settings, encoder, as_of=as_of) as client:
        aggregator = client.app.state.aggregator
        client.app.state.aggregator = ranker
        try:
            body = search(client, k=5)
        finally:
            client.app.state.aggregator = aggregator  # the app's shutdown closes it
    assert body["model_version"] == "stub-v1"
    assert len(ranker.calls) == 1
    assert ranker.calls[0]["request_time"] == as_of
