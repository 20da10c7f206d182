import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import SettingsError


@pytest.mark.es
def test_healthz_and_readyz_with_live_node(settings):
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["dependencies"]["elasticsearch"] in {"yellow", "green"}


def test_readyz_unready_without_node(settings):
    # Port 9 (discard) has no HTTP server on loopback.
    dead = settings.model_copy(update={"es_url": "http://127.0.0.1:9", "es_max_retries": 0})
    with TestClient(create_app(dead)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["dependencies"]["elasticsearch"] == "unreachable"


def test_app_refuses_start_without_keys(settings):
    with pytest.raises(SettingsError, match="VIDREC_API_READ_KEY"):
        create_app(settings.model_copy(update={"api_read_key": None}))


def test_oversized_body_gets_413(settings):
    small = settings.model_copy(update={"max_body_bytes": 1024})
    with TestClient(create_app(small)) as client:
        response = client.post("/v1/events", content=b"x" * 2048, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "1024" in response.json()["detail"]
