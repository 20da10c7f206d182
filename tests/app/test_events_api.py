"""Event, video and user routes against the real node: idempotence, concurrency, order, keys."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from indexing.embed import Embedder
from indexing.indices import create_all

pytestmark = pytest.mark.es

WRITE = {"X-API-Key": "test-write-key"}
READ = {"X-API-Key": "test-read-key"}
VIDEOS = {
    "v1": {"title": "Cats playing piano", "tags": ["cats", "music"]},
    "v2": {"title": "Learning Rust in one hour", "description": "A programming tutorial."},
    "v3": {"title": "Mountain biking in the Alps", "tags": ["sport"]},
}


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    from app.settings import load_settings

    return Embedder(load_settings(cache_dir=tmp_path_factory.mktemp("cache")), show_progress=False)


@pytest.fixture
def api(settings, es, embedder):
    """A TestClient on fresh indices holding the three VIDEOS."""
    create_all(es, settings)
    app = create_app(settings)
    app.state.query_encoder = embedder
    with TestClient(app) as client:
        for video_id, body in VIDEOS.items():
            assert client.put(f"/v1/videos/{video_id}", json=body, headers=WRITE).status_code == 200
        yield client


def watch(user: str, video: str, timestamp, **extra) -> dict:
    return {"type": "watch", "user_id": user, "video_id": video, "timestamp": timestamp, "completion": 0.9, **extra}


def profile(api, user: str) -> dict:
    response = api.get(f"/v1/users/{user}", headers=READ)
    assert response.status_code == 200, response.text
    return response.json()


def test_same_event_twice_stored_once(api, es, settings):
    event = watch("u1", "v1", "2024-05-01T12:00:00+02:00")
    first = api.post("/v1/events", json={"events": [event]}, headers=WRITE)
    second = api.post("/v1/events", json={"events": [event]}, headers=WRITE)
    assert first.status_code == 200
    assert first.json()["results"][0]["status"] == "created"
    assert second.json()["results"][0]["status"] == "duplicate"
    assert second.json()["results"][0]["event_id"] == first.json()["results"][0]["event_id"]
    es.indices.refresh(index=settings.alias("watch-events"))
    assert es.count(index=settings.alias("watch-events")).body["count"] == 1
    stored = profile(api, "u1")
    assert stored["watch_count"] == 1
    assert len(stored["recent_watches"]) == 1
    assert stored["recent_watches"][0]["ts"] == "2024-05-01T10:00:00.000Z"
    assert len(stored["history_vector"]) == 384


def test_concurrent_posts_reach_profile(api):
    events = [watch("u2", video, 1_714_560_000_000 + step * 1000) for step, video in enumerate(["v1", "v2", "v3"] * 2)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda event: api.post("/v1/events", json={"events": [event]}, headers=WRITE),
                                  events))
    assert [response.status_code for response in responses] == [200] * 6
    stored = profile(api, "u2")
    assert stored["watch_count"] == 6
    assert len(stored["recent_watches"]) == 6
    assert sorted(stored["watched_ids"]) == ["v1", "v2", "v3"]


def test_out_of_order_watch_lands_in_place(api):
    for timestamp, video in ((3_000, "v3"), (1_000, "v1"), (2_000, "v2")):
        response = api.post("/v1/events", json={"events": [watch("u3", video, 1_714_560_000_000 + timestamp)]},
                            headers=WRITE)
        assert response.status_code == 200
    stored = profile(api, "u3")
    assert [item["video_id"] for item in stored["recent_watches"]] == ["v3", "v2", "v1"]
    assert stored["watched_ids"] == ["v3", "v2", "v1"]
    assert stored["last_event_at"] == "2024-05-01T10:40:03.000Z"


def test_invalid_event_422_valid_still_stored(api, es, settings):
    events = [watch("u4", "v1", 1_714_560_000_000), watch("u4", "v2", "yesterday"), {"type": "like"}]
    response = api.post("/v1/events", json={"events": events}, headers=WRITE)
    assert response.status_code == 422
    body = response.json()
    assert [result["status"] for result in body["results"]] == ["created", "rejected", "rejected"]
    assert ["body", "events", 1, "timestamp"] in [item["loc"] for item in body["detail"]]
    assert ["body", "events", 2, "type"] in [item["loc"] for item in body["detail"]]
    assert "yesterday" in body["results"][1]["error"]
    assert profile(api, "u4")["watch_count"] == 1


def test_watch_without_engagement_rejected(api):
    event = {"type": "watch", "user_id": "u5", "video_id": "v1", "timestamp": 1_714_560_000_000}
    response = api.post("/v1/events", json={"events": [event]}, headers=WRITE)
    assert response.status_code == 422
    assert "watch_seconds or completion" in response.json()["results"][0]["error"]


def test_search_and_impression_events(api):
    search = {"type": "search", "user_id": "u6", "query": "cat videos", "timestamp": "2024-05-01T10:00:00Z"}
    shown = {"type": "impression", "user_id": "u6", "video_id": "v2", "request_id": "r-1", "position": 0,
             "timestamp": "2024-05-01T10:00:01Z"}
    shown_again = dict(shown, timestamp="2024-05-01T10:00:05Z")
    mark = {"type": "not_interested", "user_id": "u6", "video_id": "v3", "timestamp": "2024-05-01T10:00:02Z"}
    response = api.post("/v1/events", json={"events": [search, shown, mark, shown_again]}, headers=WRITE)
    assert [result["status"] for result in response.json()["results"]] == ["created", "created", "created",
                                                                         "duplicate"]
    stored = profile(api, "u6")
    assert stored["recent_queries"][0]["text"] == "cat videos"
    assert len(stored["recent_queries"][0]["vector"]) == 384
    assert len(stored["query_vector"]) == 384
    assert stored["impressions"] == [{"video_id": "v2", "count": 1, "last_shown": "2024-05-01T10:00:01.000Z"}]
    assert stored["not_interested"] == ["v3"]
    assert "watch_count" not in stored


def test_video_put_get_delete(api):
    assert api.get("/v1/videos/v1", headers=READ).json()["title"] == "Cats playing piano"
    deleted = api.delete("/v1/videos/v1", headers=WRITE)
    assert deleted.status_code == 200
    assert api.get("/v1/videos/v1", headers=READ).json()["available"] is False
    missing = api.get("/v1/videos/nope", headers=READ)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "video nope not found"
    assert api.delete("/v1/videos/nope", headers=WRITE).status_code == 404


def test_user_delete_removes_profile_and_events(api, es, settings):
    api.post("/v1/events", json={"events": [watch("u7", "v1", 1_714_560_000_000),
                                            watch("u8", "v1", 1_714_560_000_000)]}, headers=WRITE)
    response = api.delete("/v1/users/u7", headers=WRITE)
    assert response.status_code == 200
    assert response.json()["events_deleted"]["watch-events"] == 1
    assert api.get("/v1/users/u7", headers=READ).status_code == 404
    es.indices.refresh(index=settings.alias("watch-events"))
    assert es.count(index=settings.alias("watch-events"), query={"term": {"user_id": "u7"}}).body["count"] == 0
    assert es.count(index=settings.alias("watch-events"), query={"term": {"user_id": "u8"}}).body["count"] == 1
    assert api.delete("/v1/users/u7", headers=WRITE).json()["detail"] == "user u7 not found"


@pytest.mark.parametrize("method,path", [
    ("post", "/v1/events"), ("put", "/v1/videos/v1"), ("delete", "/v1/videos/v1"),
    ("get", "/v1/videos/v1"), ("get", "/v1/users/u1"), ("delete", "/v1/users/u1"),
])
def test_routes_without_key_401(api, method, path):
    response = getattr(api, method)(path, **({"json": {}} if method in {"post", "put"} else {}))
    assert response.status_code == 401


def test_read_key_cannot_write(api):
    response = api.post("/v1/events", json={"events": [watch("u9", "v1", 1_714_560_000_000)]}, headers=READ)
    assert response.status_code == 401
