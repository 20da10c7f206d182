"""MovieLens CSV loading against the real node: counts, reload, video fields and profiles."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.movielens import ingest_movielens, read_csv_rows, title_year
from indexing.records import RowError

pytestmark = pytest.mark.es

EXPECTED = {"videos": 9742, "users": 610, "watch-events": 100_836, "search-queries": 3683}


def counts(client, settings) -> dict[str, int]:
    found = {}
    for name in EXPECTED:
        client.indices.refresh(index=settings.alias(name))
        found[name] = client.count(index=settings.alias(name)).body["count"]
    return found


def test_title_year_cases():
    assert title_year("Toy Story (1995)") == 1995
    assert title_year("Death Note: Desu nôto (2006–2007)") == 2006
    assert title_year("Babylon 5") is None


def test_read_csv_rows_reports_bad_lines(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2\n\"2\",3,5.0,964982703\n")
    errors: list[RowError] = []
    rows = list(read_csv_rows(path, ["userId", "movieId", "rating", "timestamp"], errors))
    assert [line for line, _ in rows] == [2, 4]
    assert errors == [RowError("ratings.csv", 3, "expected 4 fields, got 2")]


def test_movielens_counts(es_session_client, movielens_settings):
    assert counts(es_session_client, movielens_settings) == EXPECTED
    watches = es_session_client.count(index=movielens_settings.alias("watch-events"),
                                      query={"term": {"event_type": "watch"}}).body["count"]
    assert watches == 100_836


def test_movielens_video_fields(es_session_client, movielens_settings):
    video = es_session_client.get(index=movielens_settings.alias("videos"), id="1",
                                  source_exclude_vectors=False).body["_source"]
    assert video["title"] == "Toy Story (1995)"
    assert video["year"] == 1995
    assert video["published_at"] == "1995-01-01T00:00:00.000Z"
    assert video["tags"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert video["category"] == video["tags"]
    assert video["external_ids"] == {"imdb_id": "tt0114709", "tmdb_id": "862"}
    assert video["language"] == "en"
    assert video["available"] is True
    assert video["watch_count"] == 215
    assert video["rating_count"] == 215
    assert video["rating_mean"] == pytest.approx(3.92093, abs=1e-4)
    assert video["popularity"] == pytest.approx(np.log1p(215))
    assert len(video["text_embedding"]) == 384


def test_movielens_profile_contract(es_session_client, movielens_settings):
    settings = movielens_settings
    # User 2 rated 29 movies and applied 9 tags.
    profile = es_session_client.get(index=settings.alias("users"), id="2").body["_source"]
    assert profile["user_id"] == "2"
    assert profile["watch_count"] == 29
    assert len(profile["watched_ids"]) == 29
    times = [watch["ts"] for watch in profile["recent_watches"]]
    assert times == sorted(times, reverse=True)
    assert profile["watched_ids"][0] == profile["recent_watches"][0]["video_id"]
    assert profile["recent_watches"][0]["rating"] is not None
    assert np.linalg.norm(profile["history_vector"]) == pytest.approx(1.0, abs=1e-4)
    assert len(profile["recent_queries"]) == 9
    assert len(profile["recent_queries"][0]["vector"]) == 384
    assert np.linalg.norm(profile["query_vector"]) == pytest.approx(1.0, abs=1e-4)
    assert profile["last_event_at"] == max(times[0], profile["recent_queries"][0]["ts"])


def test_movielens_profile_bounds(es_session_client, movielens_settings):
    settings = movielens_settings
    # User 414 has the most ratings in ml-latest-small (2,698).
    profile = es_session_client.get(index=settings.alias("users"), id="414").body["_source"]
    assert profile["watch_count"] == 2698
    assert len(profile["recent_watches"]) == settings.profile_recent_watches
    assert len(profile["watched_ids"]) == 2698


def test_movielens_reload_changes_nothing(es_session_client, movielens_settings, shared_data_dir):
    before = counts(es_session_client, movielens_settings)
    report = ingest_movielens(es_session_client, movielens_settings, shared_data_dir / "movielens-latest-small",
                              show_progress=False)
    assert counts(es_session_client, movielens_settings) == before
    assert report.loaded.get("watch-events", 0) == 0
    assert report.loaded.get("search-queries", 0) == 0
    assert report.loaded.get("videos", 0) == 0
    assert report.skipped["watch-events"] == 100_836
    assert report.skipped["search-queries"] == 3683
    assert report.skipped["videos"] == 9742
    assert report.cache_misses == 0
    assert report.bulk_failures == []
