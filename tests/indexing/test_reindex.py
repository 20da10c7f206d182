"""Reindex against the real node: concurrent searches, writes during the copy, vector reuse, rollback."""

from __future__ import annotations

import threading
import time

import pytest

from app.settings import load_settings
from indexing.bulk_load import bulk_write
from indexing.catalog import IngestReport, load_videos
from indexing.embed import Embedder
from indexing.indices import concrete_indices, create_all
from indexing.records import Video, format_ts
from indexing.reindex import ReindexError, reindex, rollback

pytestmark = pytest.mark.es

WORDS = ["cat", "dog", "piano", "guitar", "soccer", "tennis", "pasta", "sushi", "rocket", "planet"]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    return Embedder(load_settings(cache_dir=tmp_path_factory.mktemp("cache")), show_progress=False)


@pytest.fixture
def catalog(settings, es, embedder):
    """Fresh indices with 200 short videos."""
    create_all(es, settings)
    videos = [Video(video_id=f"v{number}", title=f"{WORDS[number % 10]} video {WORDS[number // 10 % 10]} {number}",
                    tags=[WORDS[number % 10]]) for number in range(200)]
    report = IngestReport(source="test")
    load_videos(es, settings, videos, embedder, report, show_progress=False)
    es.indices.refresh(index=settings.alias("videos"))
    assert report.loaded["videos"] == 200
    return settings


def search_loop(es, alias: str, vector: list[float], stop: threading.Event, outcome: dict) -> None:
    while not stop.is_set():
        try:
            text = es.search(index=alias, query={"match": {"title": "piano"}}, size=5)
            knn = es.search(index=alias, knn={"field": "text_embedding", "query_vector": vector, "k": 5,
                                              "num_candidates": 20}, size=5)
            if not text.body["hits"]["hits"] or not knn.body["hits"]["hits"]:
                outcome["empty"] += 1
            outcome["done"] += 1
        except Exception as error:  # every failed search is counted and reported by the test
            outcome["errors"].append(repr(error))


def test_reindex_under_concurrent_searches(catalog, es):
    settings = catalog
    alias = settings.alias("videos")
    old = concrete_indices(es, alias)[0]
    vector = es.get(index=alias, id="v3", source_exclude_vectors=False).body["_source"]["text_embedding"]
    stop = threading.Event()
    outcome: dict = {"done": 0, "empty": 0, "errors": []}
    threads = [threading.Thread(target=search_loop, args=(es, alias, vector, stop, outcome)) for _ in range(2)]
    for thread in threads:
        thread.start()

    def write_during_copy() -> None:
        # Both land in the old index through the alias, after the first copy.
        es.index(index=alias, id="late", require_alias=True, refresh=True,
                 document={"video_id": "late", "title": "late arrival", "available": True,
                           "updated_at": format_ts(int(time.time() * 1000))})
        es.update(index=alias, id="v5", doc={"title": "renamed during reindex",
                                             "updated_at": format_ts(int(time.time() * 1000))}, refresh=True)

    try:
        result = reindex(es, settings, "videos", show_progress=False, on_copied=write_during_copy)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert outcome["errors"] == []
    assert outcome["empty"] == 0
    assert outcome["done"] > 0
    assert concrete_indices(es, alias) == [result.new_index]
    assert result.old_index == old
    assert result.documents == 200
    assert result.recopied == 2
    # Only the late video, written without a vector, is embedded; the others keep theirs.
    assert result.embedded == 1
    assert es.count(index=alias).body["count"] == 201
    assert es.get(index=alias, id="late").body["_source"]["title"] == "late arrival"
    assert es.get(index=alias, id="v5").body["_source"]["title"] == "renamed during reindex"
    aliases = es.indices.get_alias(name=alias).body
    assert aliases[result.new_index]["aliases"][alias]["is_write_index"] is True
    assert es.indices.exists(index=old)


def test_reindex_reembeds_other_model(catalog, es):
    settings = catalog
    alias = settings.alias("videos")
    es.update(index=alias, id="v7", doc={"embedding_model": "some-older-model"}, refresh=True)
    result = reindex(es, settings, "videos", show_progress=False)
    assert result.embedded == 1
    assert es.get(index=alias, id="v7").body["_source"]["embedding_model"] == settings.embedding_model
    assert reindex(es, settings, "videos", show_progress=False, re_embed=True).embedded == 200


def test_rollback_restores_old_index(catalog, es):
    settings = catalog
    alias = settings.alias("videos")
    old = concrete_indices(es, alias)[0]
    result = reindex(es, settings, "videos", show_progress=False)
    assert concrete_indices(es, alias) == [result.new_index]
    moved_from, moved_to = rollback(es, settings, "videos")
    assert (moved_from, moved_to) == (result.new_index, old)
    assert concrete_indices(es, alias) == [old]
    assert es.indices.get_alias(name=alias).body[old]["aliases"][alias]["is_write_index"] is True
    with pytest.raises(ReindexError, match="no version older"):
        rollback(es, settings, "videos")


def test_write_to_missing_alias_creates_nothing(settings, es):
    alias = settings.alias("videos")
    actions = [{"_op_type": "index", "_index": alias, "_id": "x", "_source": {"video_id": "x"}}]
    result = bulk_write(es, actions, settings, show_progress=False)
    assert result.failed == 1
    assert "index_not_found" in result.failures[0].reason
    assert not es.indices.exists(index=alias)
