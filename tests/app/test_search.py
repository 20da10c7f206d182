"""`GET /v1/search` against the real node, with the fixture catalog embedded by the real model."""

import uuid

import httpx
import numpy as np
import pytest

from app.candidates import search as search_module
from app.es_client import make_async_client
from app.main import create_app
from app.settings import load_settings
from indexing import indices
from indexing.embed import Embedder, video_text
from tests.app.fixture_catalog import CHEF, catalog
from tests.conftest import delete_prefixed_indices

READ = {"X-API-Key": "test-read-key"}
ODD_QUERIES = ["curry/rice", "pasta (fresh)", '"sourdough bread', "back\\slash drills", "c++ piano",
               "AND OR NOT", "title:guitar", "*?~^[]{}!:", "-marathon +tennis"]


@pytest.fixture(scope="module")
def embedder():
    return Embedder(load_settings(), use_cache=False, show_progress=False)


@pytest.fixture(scope="module")
def search_settings(es_session_client, es_url, tmp_path_factory, embedder):
    """Settings of one fixture catalog shared by the module's tests (they only read it).

    Weight 0 turns reranking off: these tests check retrieval and fusion, and
    test_search_rerank.py checks the reranking.
    """
    config = load_settings(es_url=es_url, index_prefix=f"test-{uuid.uuid4().hex[:10]}-",
                           model_dir=tmp_path_factory.mktemp("models"), api_read_key="test-read-key",
                           api_write_key="test-write-key", search_rerank_weight=0.0)
    indices.create_all(es_session_client, config, names=("videos", "users"))
    docs = catalog()
    vectors = embedder.encode([video_text(doc["title"], doc["tags"], doc["description"], 1000) for doc in docs])
    cooking = vectors[[doc["category"] == "cooking" for doc in docs]].mean(axis=0)
    chef = dict(CHEF, history_vector=(cooking / np.linalg.norm(cooking)).tolist())
    operations = []
    for doc, vector in zip(docs, vectors):
        doc["text_embedding"] = vector.tolist()
        operations += [{"index": {"_index": config.alias("videos"), "_id": doc["video_id"]}}, doc]
    operations += [{"index": {"_index": config.alias("users"), "_id": "chef"}}, chef]
    assert not es_session_client.bulk(operations=operations, refresh=True)["errors"]
    yield config
    delete_prefixed_indices(es_session_client, config.index_prefix)


@pytest.fixture
async def api(search_settings, embedder):
    app = create_app(search_settings)
    app.state.es = make_async_client(search_settings)
    app.state.query_encoder = embedder
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        client.app = app
        yield client
    await app.state.es.close()


def video_ids(response):
    return [item["video_id"] for item in response.json()["items"]]


@pytest.mark.es
async def test_search_title_first(api):
    response = await api.get("/v1/search", params={"q": "Thai green curry at home"}, headers=READ)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"request_id", "user_id", "model_version", "cold_start", "degraded", "items"}
    assert body["items"][0]["video_id"] == "cook-3"
    assert body["items"][0]["title"] == "Thai green curry at home"
    assert body["items"][0]["rank"] == 1
    assert body["degraded"] is False


@pytest.mark.es
@pytest.mark.parametrize("q", ODD_QUERIES)
async def test_search_odd_characters(api, q):
    response = await api.get("/v1/search", params={"q": q, "k": 5}, headers=READ)
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 5


@pytest.mark.es
async def test_search_bm25_handles_odd_characters(api):
    for q in ODD_QUERIES:
        result = await search_module.search_videos(api.app.state.es, api.app.state.settings, None, q, k=5,
                                                   mode="bm25")
        assert result.degraded is False, q


@pytest.mark.es
@pytest.mark.parametrize("params, expected", [
    ({"q": ""}, "at least one non-space"),
    ({"q": "   "}, "at least one non-space"),
    ({"q": "a" * 2001}, "2000"),
    ({"q": "pasta", "k": 0}, "greater than or equal to 1"),
    ({"q": "pasta", "k": 101}, "less than or equal to 100"),
])
async def test_search_rejects_bad_input(api, params, expected):
    response = await api.get("/v1/search", params=params, headers=READ)
    assert response.status_code == 422
    assert expected in response.text


@pytest.mark.es
async def test_search_needs_read_key(api):
    response = await api.get("/v1/search", params={"q": "pasta"})
    assert response.status_code == 401


@pytest.mark.es
async def test_search_unknown_user_cold_start(api):
    response = await api.get("/v1/search", params={"q": "pasta", "user_id": "nobody"}, headers=READ)
    assert response.status_code == 200
    assert response.json()["cold_start"] is True
    assert response.json()["user_id"] == "nobody"


@pytest.mark.es
async def test_search_personal_filters(api):
    curry = await api.get("/v1/search", params={"q": "Thai green curry", "user_id": "chef", "explain": "true"},
                          headers=READ)
    assert "cook-3" not in video_ids(curry)  # marked not interested
    pasta = await api.get("/v1/search", params={"q": "Pasta carbonara", "user_id": "chef"}, headers=READ)
    assert video_ids(pasta)[0] == "cook-1"  # watched videos stay searchable
    assert pasta.json()["cold_start"] is False


@pytest.mark.es
async def test_search_personal_list_used(api):
    response = await api.get("/v1/search", params={"q": "recipe video", "user_id": "chef", "explain": "true"},
                             headers=READ)
    channels = {source["channel"] for item in response.json()["items"] for source in item["sources"]}
    assert channels == {"bm25", "knn", "personal"}


@pytest.mark.es
async def test_search_without_encoder_degrades(api):
    api.app.state.query_encoder = None
    response = await api.get("/v1/search", params={"q": "Sourdough bread for beginners"}, headers=READ)
    assert response.status_code == 200
    assert response.json()["degraded"] is True
    assert video_ids(response)[0] == "cook-2"


def test_text_body_uses_multi_match():
    filter_query = search_module.search_filter({"watched_ids": ["a"], "not_interested": ["b"]}, load_settings())
    body = search_module.text_body('a "b" (c)', 10, filter_query)
    assert body["query"]["bool"]["must"] == [{"multi_match": {
        "query": 'a "b" (c)', "fields": ["title^3", "tags^2", "description"], "type": "best_fields"}}]
    assert {"terms": {"video_id": ["b"]}} in body["query"]["bool"]["must_not"]
    assert body["_source"] == ["title"]


@pytest.mark.es
async def test_search_hides_unavailable(api):
    response = await api.get("/v1/search", params={"q": "Removed risotto recipe", "k": 20}, headers=READ)
    assert response.status_code == 200
    assert "cook-unavailable" not in video_ids(response)


@pytest.mark.es
async def test_search_loads_encoder_once(search_settings):
    app = create_app(search_settings)
    app.state.es = make_async_client(search_settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = await client.get("/v1/search", params={"q": "Guitar chords for songs"}, headers=READ)
            encoder = app.state.query_encoder
            second = await client.get("/v1/search", params={"q": "Piano scales"}, headers=READ)
    finally:
        await app.state.es.close()
    assert first.json()["degraded"] is False
    assert video_ids(first)[0] == "music-1"
    assert app.state.query_encoder is encoder
    assert second.status_code == 200
