"""GET /v1/users/{user_id}/recommendations against the real node, scored by the fixture scorer."""

import pytest
from fastapi.testclient import TestClient

from app.candidates.types import CHANNELS
from app.main import create_app
from tests.app.fixture_scorer import fixture_score
from tests.app.tcp_proxy import TcpProxy
from tests.app.recommend_catalog import N_VIDEOS, UNAVAILABLE, WATCHED, index_catalog
from tests.app.workers import FIXTURE_LOADER, free_port, start_workers

pytestmark = pytest.mark.es

READ = {"X-API-Key": "test-read-key"}


@pytest.fixture
def rec_settings(settings, es):
    index_catalog(es, settings)
    return settings.model_copy(update={"scorer_loader": FIXTURE_LOADER, "ranking_deadline_ms": 5000.0,
                                       "worker_timeout_ms": 2500.0})


def get(client, user_id="u1", **params):
    return client.get(f"/v1/users/{user_id}/recommendations", params=params, headers=READ)


def test_returns_k_distinct_eligible_by_score(rec_settings):
    with TestClient(create_app(rec_settings)) as client:
        response = get(client, k=20)
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["items"]
    ids = [item["video_id"] for item in items]
    assert len(ids) == 20
    assert len(set(ids)) == 20
    assert not set(ids) & set(WATCHED)
    assert not set(ids) & UNAVAILABLE
    assert [item["rank"] for item in items] == list(range(1, 21))
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx([fixture_score("fixture-v1", video_id) for video_id in ids], rel=1e-6)
    assert all(item["title"] == f"Video number {item['video_id'][1:]}" for item in items)
    assert body["model_version"] == "fixture-v1"
    assert body["cold_start"] is False
    assert body["degraded"] is False
    assert "sources" not in items[0]
    assert "msearch;dur=" in response.headers["server-timing"]


def test_top_k_is_best_of_candidates(rec_settings):
    # Every eligible video is a candidate in an 80-video catalog, so the top 10 are the 10 best eligible scores.
    with TestClient(create_app(rec_settings)) as client:
        items = get(client, k=10).json()["items"]
    eligible = [f"v{i}" for i in range(N_VIDEOS) if f"v{i}" not in set(WATCHED) | UNAVAILABLE]
    best = sorted(eligible, key=lambda video_id: -fixture_score("fixture-v1", video_id))[:10]
    assert [item["video_id"] for item in items] == best


def test_filters_and_exclude(rec_settings):
    with TestClient(create_app(rec_settings)) as client:
        response = get(client, k=15, category="drama", language="en", exclude="v7,v9")
    items = response.json()["items"]
    numbers = [int(item["video_id"][1:]) for item in items]
    assert len(items) == 15
    assert all(n % 2 == 1 for n in numbers)  # drama
    assert all(n % 3 != 0 for n in numbers)  # en
    assert 7 not in numbers
    assert 9 not in numbers


def test_explain_lists_sources(rec_settings):
    with TestClient(create_app(rec_settings)) as client:
        items = get(client, k=10, explain="true").json()["items"]
    for item in items:
        assert item["sources"], item
        assert {source["channel"] for source in item["sources"]} <= set(CHANNELS)
        assert all(source["rank"] >= 1 for source in item["sources"])
        assert item["fused_score"] > 0
    channels = {source["channel"] for item in items for source in item["sources"]}
    assert {"history_content", "popular_fresh"} <= channels


def test_unknown_user_gets_cold_start(rec_settings):
    with TestClient(create_app(rec_settings)) as client:
        body = get(client, user_id="nobody-42", k=5).json()
    assert body["cold_start"] is True
    assert body["degraded"] is False
    assert len(body["items"]) == 5


@pytest.mark.parametrize("k", ["-1", "0", "501", "1000000000000", "abc", "2.5"])
def test_invalid_k_gets_422(rec_settings, k):
    with TestClient(create_app(rec_settings)) as client:
        response = get(client, k=k)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["query", "k"]
    assert detail["input"] == k
    assert "from 1 to 500" in detail["msg"]


def test_missing_key_gets_401(rec_settings):
    with TestClient(create_app(rec_settings)) as client:
        response = client.get("/v1/users/u1/recommendations")
    assert response.status_code == 401


def test_impressions_written_once(rec_settings, es):
    with TestClient(create_app(rec_settings)) as client:
        body = get(client, k=12).json()
        impressions = client.app.state.impressions
        client.portal.call(impressions.flush)
        # The same items logged again (a retried write) map to the same ids.
        impressions.log(body["request_id"], "u1", body["model_version"],
                        [(item["video_id"], item["score"], []) for item in body["items"]])
        client.portal.call(impressions.flush)
    es.indices.refresh(index=rec_settings.alias("impressions"))
    hits = es.search(index=rec_settings.alias("impressions"), size=100,
                     query={"term": {"request_id": body["request_id"]}})["hits"]["hits"]
    assert len(hits) == 12
    assert sorted(hit["_source"]["position"] for hit in hits) == list(range(1, 13))
    by_video = {hit["_source"]["video_id"]: hit["_source"] for hit in hits}
    first = body["items"][0]
    assert by_video[first["video_id"]]["position"] == 1
    assert by_video[first["video_id"]]["score"] == pytest.approx(first["score"], rel=1e-6)
    assert by_video[first["video_id"]]["model_version"] == "fixture-v1"
    assert impressions.duplicates == 12


def test_unreachable_es_answers_from_popular_list(rec_settings):
    # A first app saves the popular list; a second one points at a port with no node.
    with TestClient(create_app(rec_settings)) as client:
        assert get(client, k=5).status_code == 200
    dead = rec_settings.model_copy(update={"es_url": f"http://127.0.0.1:{free_port()}", "es_max_retries": 0})
    with TestClient(create_app(dead)) as client:
        ready = client.get("/readyz")
        response = get(client, k=10, exclude="v0")
        cold = get(client, user_id="nobody", k=3)
    assert ready.status_code == 200
    assert ready.json()["down"] == ["elasticsearch"]
    assert response.status_code == 200
    body = response.json()
    assert body["degraded"] is True
    # The popular list is ordered by popularity, which falls with the video number; v10 and v11 are unavailable.
    assert [item["video_id"] for item in body["items"]] == [f"v{i}" for i in range(1, 10)] + ["v12"]
    assert body["items"][0]["title"] == "Video number 1"
    assert cold.status_code == 200


def test_overload_sheds_to_popular_unwatched(rec_settings):
    limited = rec_settings.model_copy(update={"max_inflight_recommendations": 2})
    with TestClient(create_app(limited)) as client:
        recommender = client.app.state.recommender
        recommender.inflight = 2  # two requests in progress: the limit is reached
        shed = get(client, k=10)
        recommender.inflight = 1
        served = get(client, k=10)
        shed_count = recommender.shed_count
    assert shed.status_code == 200
    body = shed.json()
    assert body["degraded"] is True
    assert body["model_version"] is None
    assert "shed;dur=" in shed.headers["server-timing"]
    ids = [item["video_id"] for item in body["items"]]
    assert len(ids) == 10
    assert not set(ids) & set(WATCHED)
    assert not set(ids) & UNAVAILABLE
    assert served.json()["degraded"] is False
    assert "shed;dur=" not in served.headers["server-timing"]
    assert shed_count == 1


def test_recovers_when_node_returns(rec_settings):
    proxy = TcpProxy("127.0.0.1", int(rec_settings.es_url.rsplit(":", 1)[1]))
    proxy.start()
    through_proxy = rec_settings.model_copy(update={"es_url": proxy.url, "es_max_retries": 0})
    try:
        with TestClient(create_app(through_proxy)) as client:
            before = get(client, k=5).json()
            proxy.stop()
            during = get(client, k=5)
            ready_during = client.get("/readyz")
            proxy.start()
            after = get(client, k=5).json()
            ready_after = client.get("/readyz").json()
    finally:
        proxy.stop()
    assert before["degraded"] is False
    assert during.status_code == 200
    assert during.json()["degraded"] is True
    assert ready_during.status_code == 200
    assert after["degraded"] is False
    assert after["items"] == before["items"]
    assert ready_after["down"] == []


def test_unreachable_es_without_list_not_ready(rec_settings, tmp_path):
    dead = rec_settings.model_copy(update={"es_url": f"http://127.0.0.1:{free_port()}", "es_max_retries": 0,
                                           "model_dir": tmp_path / "empty"})
    with TestClient(create_app(dead)) as client:
        ready = client.get("/readyz")
        response = get(client, k=10)
    assert ready.status_code == 503
    assert response.status_code == 503
    assert "no popular fallback list" in response.json()["detail"]


def test_two_workers_score_requests(rec_settings):
    workers = start_workers({"VIDREC_MODEL_DIR": str(rec_settings.model_dir)}, [0, 0])
    try:
        with_workers = rec_settings.model_copy(update={"worker_urls": [w.url for w in workers],
                                                       "worker_min_batch": 20})
        with TestClient(create_app(with_workers)) as client:
            body = get(client, k=30).json()
            ready = client.get("/readyz").json()
        served = [worker.status()["served"] for worker in workers]
    finally:
        for worker in workers:
            worker.stop()
    assert body["degraded"] is False
    assert body["model_version"] == "fixture-v1"
    assert served == [1, 1]
    assert ready["dependencies"]["workers"] == {w.url: "fixture-v1" for w in workers}
    ids = [item["video_id"] for item in body["items"]]
    assert [item["score"] for item in body["items"]] == pytest.approx(
        [fixture_score("fixture-v1", video_id) for video_id in ids], rel=1e-6)


def test_late_worker_answer_names_no_model(rec_settings):
    # The worker reports fixture-v1 on /status but scores after the ranking deadline.
    workers = start_workers({"VIDREC_MODEL_DIR": str(rec_settings.model_dir)}, [3000])
    try:
        late = rec_settings.model_copy(update={"worker_urls": [workers[0].url], "ranking_deadline_ms": 300.0,
                                               "worker_timeout_ms": 200.0,
                                               "impressions_flush_interval_s": 60.0})
        with TestClient(create_app(late)) as client:
            body = get(client, k=10).json()
            impressions = client.app.state.impressions
            logged = [doc["model_version"] for doc in impressions.buffer]
    finally:
        workers[0].stop()
    assert body["degraded"] is True
    assert body["model_version"] is None
    assert logged
    assert set(logged) == {"none"}


def test_missing_workers_answer_in_fused_order(rec_settings):
    no_listener = rec_settings.model_copy(update={"worker_urls": [f"http://127.0.0.1:{free_port()}"]})
    with TestClient(create_app(no_listener)) as client:
        body = get(client, k=10, explain="true").json()
    assert body["degraded"] is True
    assert body["model_version"] is None
    fused = [item["fused_score"] for item in body["items"]]
    assert fused == sorted(fused, reverse=True)
    assert [item["score"] for item in body["items"]] == fused
