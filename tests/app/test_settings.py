from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, load_settings


def test_settings_defaults_point_at_loopback(monkeypatch):
    monkeypatch.delenv("VIDREC_ES_URL", raising=False)
    monkeypatch.delenv("VIDREC_INDEX_PREFIX", raising=False)
    settings = load_settings()
    assert settings.es_url == "http://127.0.0.1:9200"
    assert settings.alias("videos") == "vidrec-videos"


def test_settings_read_prefixed_environment(monkeypatch):
    monkeypatch.setenv("VIDREC_ES_URL", "http://127.0.0.1:9300/")
    monkeypatch.setenv("VIDREC_INDEX_PREFIX", "staging-")
    monkeypatch.setenv("VIDREC_CACHE_DIR", "~/somewhere")
    monkeypatch.setenv("VIDREC_WORKER_URLS", "http://127.0.0.1:8101, http://127.0.0.1:8102/")
    settings = load_settings()
    assert settings.es_url == "http://127.0.0.1:9300"
    assert settings.alias("users") == "staging-users"
    assert settings.cache_dir == Path("~/somewhere").expanduser()
    assert settings.worker_urls == ["http://127.0.0.1:8101", "http://127.0.0.1:8102"]


@pytest.mark.parametrize(
    ("variable", "value", "expected_text"),
    [
        ("VIDREC_ES_URL", "localhost:9200", "http://"),
        ("VIDREC_ES_HEAP_MB", "lots", "valid integer"),
        ("VIDREC_ES_PORT", "80", "greater than or equal to 1024"),
        ("VIDREC_INDEX_PREFIX", "Upper-", "lowercase"),
        ("VIDREC_WORKER_POLICY", "random", "round_robin"),
    ],
)
def test_invalid_setting_names_variable(monkeypatch, variable, value, expected_text):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message
    assert repr(value) in message
    assert expected_text in message


def test_password_without_username_rejected():
    with pytest.raises(SettingsError, match="VIDREC_ES_USERNAME"):
        load_settings(es_password="pw")


def test_api_keys_required_outside_local_dev():
    settings = Settings(api_read_key=None, api_write_key="changeme", local_dev=False)
    with pytest.raises(SettingsError) as caught:
        settings.require_api_keys()
    assert "VIDREC_API_READ_KEY" in str(caught.value)
    assert "VIDREC_API_WRITE_KEY" in str(caught.value)
    assert "VIDREC_LOCAL_DEV" in str(caught.value)


def test_local_dev_allows_missing_keys():
    Settings(api_read_key=None, api_write_key=None, local_dev=True).require_api_keys()


def test_as_of_sets_serving_clock(monkeypatch):
    from datetime import datetime, timezone

    monkeypatch.setenv("VIDREC_AS_OF", "2018-09-25T10:00:00")
    settings = load_settings()
    assert settings.as_of == datetime(2018, 9, 25, 10, tzinfo=timezone.utc)
    assert settings.now() == settings.as_of


def test_serving_clock_defaults_to_wall_clock(monkeypatch):
    from datetime import datetime, timezone

    monkeypatch.delenv("VIDREC_AS_OF", raising=False)
    before = datetime.now(timezone.utc)
    now = load_settings().now()
    assert before <= now <= datetime.now(timezone.utc)
