import numpy as np
import pytest

from indexing.indices import ensure_index
from ranking.feature_table import UNKNOWN_ROW, VideoFeatureTable, build_table, export_table, parse_timestamp


def test_parse_timestamp_forms():
    assert parse_timestamp("1970-01-02T00:00:00Z") == 86400.0
    assert parse_timestamp("1970-01-02T00:00:00") == 86400.0
    assert parse_timestamp(86_400_000) == 86400.0
    assert parse_timestamp(None) is None


def test_build_table_rows_and_default():
    table = build_table([{"video_id": "x", "text_embedding": [3, 4], "category": ["Comedy", "Drama"],
                          "duration_s": 60, "watch_count": 5},
                         {"video_id": "y"}], 2)
    assert table.size == 3
    assert list(table.rows(["y", "x", "nope"])) == [2, 1, UNKNOWN_ROW]
    assert table.category[1] == "Comedy"
    assert table.text_norm[1] == pytest.approx(5.0)
    assert table.text_norm[2] == 0.0
    assert np.isnan(table.duration_s[2])
    assert table.popularity[UNKNOWN_ROW] == 0.0


def test_build_table_rejects_wrong_dims():
    with pytest.raises(ValueError, match="video v1: text_embedding has 3 dims, expected 2"):
        build_table([{"video_id": "v1", "text_embedding": [1, 2, 3]}], 2)


def test_table_save_load_and_live_popularity(tmp_path):
    table = build_table([{"video_id": "x", "text_embedding": [1, 0], "published_at": "2020-01-01T00:00:00Z"}], 2)
    table.save(tmp_path / "t")
    loaded = VideoFeatureTable.load(tmp_path / "t")
    assert loaded.video_ids == ["x"]
    assert isinstance(loaded.text_embedding, np.memmap)
    assert loaded.published_at[1] == table.published_at[1]
    assert loaded.set_popularity({"x": 12, "unknown": 3}) == 1
    assert loaded.popularity[1] == 12.0


@pytest.mark.es
def test_export_table_from_videos_index(es, settings):
    index, _ = ensure_index(es, "videos", settings)
    vector = [0.0] * settings.embedding_dims
    vector[0] = 1.0
    es.index(index=settings.alias("videos"), id="m1", document={
        "video_id": "m1", "title": "One", "category": ["Drama"], "text_embedding": vector,
        "duration_s": 5400.0, "published_at": "1999-01-01T00:00:00.000Z", "watch_count": 7}, refresh=True)
    es.index(index=settings.alias("videos"), id="m2", document={"video_id": "m2", "title": "Two"}, refresh=True)
    table = export_table(es, settings.alias("videos"), settings.embedding_dims)
    assert sorted(table.video_ids) == ["m1", "m2"]
    row = table.row("m1")
    assert table.text_embedding[row][0] == 1.0
    assert table.category[row] == "Drama"
    assert table.popularity[row] == 7.0
    assert table.duration_s[row] == 5400.0
    assert table.text_norm[table.row("m2")] == 0.0


@pytest.mark.es
def test_read_popularity_from_videos_index(es, settings):
    from ranking.feature_table import read_popularity

    ensure_index(es, "videos", settings)
    es.index(index=settings.alias("videos"), id="m1", document={"video_id": "m1", "watch_count": 9}, refresh=True)
    es.index(index=settings.alias("videos"), id="m2", document={"video_id": "m2"}, refresh=True)
    assert read_popularity(es, settings.alias("videos")) == {"m1": 9.0}
