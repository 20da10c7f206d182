"""`vidrec ingest` and `vidrec reindex` commands against the real node."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from indexing.indices import concrete_indices

pytestmark = pytest.mark.es


def test_ingest_jsonl_and_reindex_commands(tmp_path, settings, es, monkeypatch, capsys):
    monkeypatch.setenv("VIDREC_INDEX_PREFIX", settings.index_prefix)
    monkeypatch.setenv("VIDREC_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"kind": "video", "video_id": "v1", "title": "Cats playing piano"}) + "\n"
                    + json.dumps({"type": "watch", "user_id": "u1", "video_id": "v1",
                                  "timestamp": "2024-05-01T10:00:00Z", "completion": 1}) + "\n"
                    + "[1, 2]\n")

    assert main(["ingest", "jsonl", str(path), "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert "loaded:   3 (users 1, videos 1, watch-events 1)" in output
    assert "rejected: 1 (1 input rows, 0 documents refused by Elasticsearch)" in output
    assert "data.jsonl:3: expected a JSON object, got list" in output
    assert "documents per second" in output

    assert main(["reindex", "videos", "--no-progress"]) == 0
    assert concrete_indices(es, settings.alias("videos")) == [f"{settings.alias('videos')}-000002"]
    assert main(["reindex", "rollback", "videos"]) == 0
    assert concrete_indices(es, settings.alias("videos")) == [f"{settings.alias('videos')}-000001"]
    assert main(["reindex", "rollback"]) == 2


def test_ingest_missing_path_exit_2(tmp_path, settings, es, monkeypatch, capsys):
    monkeypatch.setenv("VIDREC_INDEX_PREFIX", settings.index_prefix)
    assert main(["ingest", "movielens", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "is not a folder" in capsys.readouterr().out
