"""Shared fixtures. Tests marked ``es`` talk to the real node at VIDREC_ES_URL (default 127.0.0.1:9200).

`.ci/run` starts that node before pytest; locally, run `vidrec es start` first.
Each test gets its own index prefix, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from app.es_client import cluster_health, make_client  # noqa: E402
from app.settings import Settings, load_settings  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Folder of the real datasets: VIDREC_DATA_DIR, else ../shared/data beside the repository."""
    configured = os.environ.get("VIDREC_DATA_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = data_dir()
    if not path.is_dir():
        pytest.fail(f"dataset folder {path} not found: set VIDREC_DATA_DIR to the folder holding "
                    "movielens-latest-small/ and the other datasets")
    return path


@pytest.fixture(scope="session")
def es_url() -> str:
    return os.environ.get("VIDREC_ES_URL", "http://127.0.0.1:9200")


@pytest.fixture(scope="session")
def es_session_client(es_url: str):
    client = make_client(load_settings(es_url=es_url), request_timeout_s=60)
    if cluster_health(client, timeout_s=5) is None:
        pytest.fail(f"no Elasticsearch node answers at {es_url}: start one with `vidrec es start` "
                    "or point VIDREC_ES_URL at one")
    yield client
    client.close()


@pytest.fixture
def settings(es_url: str, tmp_path: Path) -> Settings:
    """Settings with a unique index prefix and private model and cache folders."""
    prefix = f"test-{uuid.uuid4().hex[:10]}-"
    return load_settings(
        es_url=es_url,
        index_prefix=prefix,
        model_dir=tmp_path / "models",
        local_dev=False,
        api_read_key="test-read-key",
        api_write_key="test-write-key",
    )


@pytest.fixture
def es(es_session_client, settings: Settings):
    """The shared node's client; deletes every index under this test's prefix afterwards."""
    yield es_session_client
    delete_prefixed_indices(es_session_client, settings.index_prefix)


def delete_prefixed_indices(client, prefix: str) -> None:
    """Delete every index whose name starts with ``prefix``; the server rejects wildcard deletes."""
    names = client.indices.get(index=f"{prefix}*", expand_wildcards="all", allow_no_indices=True).body
    for name in names:
        client.indices.delete(index=name, ignore_unavailable=True)


# One MovieLens load per test session, shared read-only by every test that requests it.
MOVIELENS_PREFIX = f"test-ml-{uuid.uuid4().hex[:8]}-"


@pytest.fixture(scope="session")
def movielens_settings(es_session_client, es_url: str, shared_data_dir: Path) -> Settings:
    """Settings whose indices hold ml-latest-small, ingested once per session; treat them as read-only.

    The indices are deleted at the end of the session.
    """
    from indexing.movielens import ingest_movielens

    ml_settings = load_settings(
        es_url=es_url,
        index_prefix=MOVIELENS_PREFIX,
        local_dev=False,
        api_read_key="test-read-key",
        api_write_key="test-write-key",
    )
    try:
        report = ingest_movielens(es_session_client, ml_settings, shared_data_dir / "movielens-latest-small",
                                  show_progress=False)
        if report.bulk_failures:
            pytest.fail(f"MovieLens load failed for {len(report.bulk_failures)} documents; "
                        f"first: {report.bulk_failures[0]}")
        yield ml_settings
    finally:
        delete_prefixed_indices(es_session_client, MOVIELENS_PREFIX)


@pytest.fixture(scope="session", autouse=True)
def thaw_frozen_objects_at_exit():
    """Unfreeze what app.heap froze, so the interpreter's final collection frees it.

    A test that loads the search model through a TestClient without its lifespan never runs the API's
    shutdown thaw, and extension modules then report the frozen objects as leaks at exit.
    """
    yield
    import gc

    gc.unfreeze()
