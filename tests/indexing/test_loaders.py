"""ml-100k, ml-1m, YouTube trending and JSON Lines loaders against the real node, with bad rows."""

from __future__ import annotations

import csv
import json

import pytest

from app.settings import load_settings
from indexing.embed import Embedder
from indexing.jsonl import ingest_jsonl
from indexing.movielens import ingest_movielens
from indexing.records import RowError
from indexing.youtube import ingest_youtube, parse_tags

pytestmark = pytest.mark.es

GENRE_FLAGS_ACTION = "0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0"
GENRE_FLAGS_COMEDY = "0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0"


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    return Embedder(load_settings(cache_dir=tmp_path_factory.mktemp("cache")), show_progress=False)


def get_source(es, settings, name: str, doc_id: str) -> dict:
    return es.get(index=settings.alias(name), id=doc_id).body["_source"]


def test_ml100k_users_with_demographics(tmp_path, settings, es, embedder):
    (tmp_path / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{GENRE_FLAGS_COMEDY}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?GoldenEye%20(1995)|{GENRE_FLAGS_ACTION}\n",
        encoding="latin-1")
    (tmp_path / "u.user").write_text("1|24|M|technician|55455\n2|53|F|other|T8H1N\n3|x|F|writer|94043\n",
                                     encoding="latin-1")
    (tmp_path / "u.data").write_text("1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t878542960\n"
                                     "2\t99\t4\t878542960\n2\t1\n", encoding="latin-1")
    report = ingest_movielens(es, settings, tmp_path, embedder=embedder, show_progress=False)

    assert RowError("u.user", 3, "invalid age 'x', expected an integer") in report.row_errors
    assert RowError("u.data", 4, "movie id 99 is not in the movies file") in report.row_errors
    assert RowError("u.data", 5, "expected 4 fields separated by '\\t', got 2") in report.row_errors
    assert report.index_counts["watch-events"] == 3
    assert report.index_counts["videos"] == 2

    first = get_source(es, settings, "users", "1")
    assert first["age"] == 24
    assert first["gender"] == "M"
    assert first["occupation"] == "technician"
    assert first["region"] == "US-MN"
    assert first["location"]["lat"] == pytest.approx(44.97, abs=0.01)
    assert first["geohash"] == "9zvxy"
    assert first["watch_count"] == 2
    second = get_source(es, settings, "users", "2")
    assert second["age"] == 53
    assert "location" not in second
    video = get_source(es, settings, "videos", "1")
    assert video["tags"] == ["Comedy"]
    assert video["published_at"] == "1995-01-01T00:00:00.000Z"


def test_ml1m_age_bucket_and_occupation(tmp_path, settings, es, embedder):
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n", encoding="latin-1")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n", encoding="latin-1")
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n2::1::3::978300761\n", encoding="latin-1")
    report = ingest_movielens(es, settings, tmp_path, embedder=embedder, show_progress=False)
    assert report.row_errors == []
    first = get_source(es, settings, "users", "1")
    assert first["age"] == 1
    assert first["occupation"] == "K-12 student"
    assert first["region"] == "US-MI"
    second = get_source(es, settings, "users", "2")
    assert second["occupation"] == "self-employed"
    assert second["zip_code"] == "70072-1234"
    assert second["region"] == "US-LA"


def test_youtube_bad_rows_and_removed(tmp_path, settings, es, embedder, shared_data_dir):
    with (shared_data_dir / "youtube-trending-2017-early" / "USvideos.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:13]
    body[1][14] = "True"
    body[2][7] = "many"
    path = tmp_path / "USvideos.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(body)
        handle.write("short,row\r\n")
    report = ingest_youtube(es, settings, path, embedder=embedder, show_progress=False)

    reasons = {(error.line, error.reason) for error in report.row_errors}
    assert any(reason == "views must be an integer, got 'many'" for _, reason in reasons)
    assert any(reason == "expected 16 fields, got 2" for _, reason in reasons)
    unique_ids = {row[0] for index, row in enumerate(body) if index != 2}
    assert report.index_counts["videos"] == len(unique_ids)
    removed = get_source(es, settings, "videos", body[1][0])
    assert removed["available"] is False
    first = get_source(es, settings, "videos", body[0][0])
    assert first["title"] == body[0][2]
    assert first["language"] == "en"
    assert first["external_ids"] == {"youtube_id": body[0][0]}
    assert first["published_at"] == body[0][5]


def test_youtube_parse_tags():
    assert parse_tags('"a b"|"c"') == ["a b", "c"]
    assert parse_tags("[none]") == []


def test_jsonl_bad_lines_reported_good_loaded(tmp_path, settings, es, embedder):
    lines = [
        {"kind": "video", "video_id": "v1", "title": "Cooking pasta at home", "tags": ["food"]},
        {"kind": "video", "video_id": "v2", "title": "Street food in Bangkok", "published_at": "2023-01-05T10:00:00Z"},
        {"kind": "user", "user_id": "alice", "age": 31, "gender": "F", "zip_code": "10001"},
        {"type": "watch", "user_id": "alice", "video_id": "v1", "timestamp": 1_700_000_000_000, "completion": 1.0},
        {"type": "watch", "user_id": "alice", "video_id": "v2", "timestamp": "2023-11-14T22:20:00Z",
         "watch_seconds": 30},
        {"kind": "event", "type": "search", "user_id": "alice", "query": "thai noodles",
         "timestamp": "2023-11-14T22:00:00+01:00"},
        {"type": "impression", "user_id": "alice", "video_id": "v2", "request_id": "r1", "position": 3,
         "timestamp": 1_700_000_000_500},
        {"type": "watch", "user_id": "bob", "video_id": "v1", "timestamp": "last week", "completion": 0.5},
        {"kind": "playlist", "id": "p1"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    path = tmp_path / "platform.jsonl"
    path.write_text(text, encoding="utf-8")
    report = ingest_jsonl(es, settings, path, embedder=embedder, show_progress=False)

    assert [error.line for error in report.row_errors] == [8, 9, 10]
    assert "timestamp" in report.row_errors[0].reason
    assert "kind must be video, user or event" in report.row_errors[1].reason
    assert "invalid JSON" in report.row_errors[2].reason
    assert report.index_counts["videos"] == 2
    assert report.index_counts["watch-events"] == 2
    assert report.index_counts["search-queries"] == 1
    assert report.index_counts["impressions"] == 1
    alice = get_source(es, settings, "users", "alice")
    assert alice["age"] == 31
    assert alice["region"] == "US-NY"
    assert alice["watched_ids"] == ["v2", "v1"]
    assert alice["recent_queries"][0]["text"] == "thai noodles"
    assert alice["impressions"][0]["video_id"] == "v2"
    assert get_source(es, settings, "videos", "v1")["watch_count"] == 1

    again = ingest_jsonl(es, settings, path, embedder=embedder, show_progress=False)
    assert again.index_counts == report.index_counts
    assert sum(again.loaded.get(name, 0) for name in ("watch-events", "search-queries", "impressions")) == 0
    assert again.skipped["watch-events"] == 2
