"""Lifecycle of a local node. These tests run their own node on port 19250 with its own data
directory, never the node the rest of the test session shares."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

from app.settings import load_settings
from indexing import es_node

LIFECYCLE_PORT = 19250


def test_java_major_reads_release_file(tmp_path):
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    (home / "release").write_text('IMPLEMENTOR="x"\nJAVA_VERSION="21.0.4"\n')
    assert es_node.java_major(home) == 21


def test_java_major_none_without_binary(tmp_path):
    assert es_node.java_major(tmp_path) is None


def test_find_java_rejects_old_es_java_home(monkeypatch, tmp_path):
    home = tmp_path / "jdk17"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    (home / "release").write_text('JAVA_VERSION="17.0.2"\n')
    monkeypatch.setenv("ES_JAVA_HOME", str(home))
    with pytest.raises(es_node.EsNodeError) as caught:
        es_node.find_java()
    assert str(home) in str(caught.value)
    assert "21" in str(caught.value)


def test_find_java_returns_version_21_or_newer(monkeypatch):
    monkeypatch.delenv("ES_JAVA_HOME", raising=False)
    runtime = es_node.find_java()
    assert runtime.major >= 21
    assert (runtime.home / "bin" / "java").exists()


def test_start_rejects_port_in_use(tmp_path):
    settings = load_settings(cache_dir=tmp_path / "cache")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(es_node.EsNodeError) as caught:
            es_node.start(settings, port=port)
    assert f"Port {port}" in str(caught.value)
    assert "VIDREC_ES_PORT" in str(caught.value)


def test_checksum_mismatch_deletes_download(tmp_path, monkeypatch):
    settings = load_settings(cache_dir=tmp_path)
    (tmp_path / "downloads").mkdir()
    fake = tmp_path / "downloads" / "elasticsearch-9.2.0.zip"
    fake.write_bytes(b"not the real zip")
    fake_mvn = tmp_path / "mvn"
    fake_mvn.write_text("#!/bin/sh\nexit 0\n")
    fake_mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(es_node.EsNodeError) as caught:
        es_node.fetch_distribution(settings)
    assert "SHA-512" in str(caught.value)
    assert not fake.exists()


@pytest.mark.es
@pytest.mark.slow
def test_node_lifecycle_start_status_stop():
    # Reuses the shared download cache (VIDREC_CACHE_DIR) but its own port and data directory.
    settings = load_settings(es_port=LIFECYCLE_PORT, es_heap_mb=256)
    paths = es_node.node_paths(settings, LIFECYCLE_PORT)
    try:
        message = es_node.start(settings, LIFECYCLE_PORT)
        assert f"127.0.0.1:{LIFECYCLE_PORT}" in message
        health = es_node.http_health(LIFECYCLE_PORT)
        assert health is not None
        assert health["status"] in {"yellow", "green"}
        assert health["cluster_name"] == f"vidrec-{LIFECYCLE_PORT}"

        again = es_node.start(settings, LIFECYCLE_PORT)
        assert "already running" in again

        running, text = es_node.status(settings, LIFECYCLE_PORT)
        assert running
        assert "health" in text
        assert "network.host: 127.0.0.1" in (paths.config / "elasticsearch.yml").read_text()
        if os.geteuid() == 0:
            owner = subprocess.run(["ps", "-o", "user=", "-p", str(es_node.read_pid(paths))],
                                   capture_output=True, text=True).stdout.strip()
            assert owner == es_node.NODE_USER

        stopped = es_node.stop(settings, LIFECYCLE_PORT)
        assert "Stopped" in stopped
        assert es_node.http_health(LIFECYCLE_PORT) is None
        running, _ = es_node.status(settings, LIFECYCLE_PORT)
        assert not running
        assert "No vidrec Elasticsearch node" in es_node.stop(settings, LIFECYCLE_PORT)
    finally:
        if es_node.read_pid(paths) is not None:
            es_node.stop(settings, LIFECYCLE_PORT)
        import shutil

        shutil.rmtree(paths.node, ignore_errors=True)
