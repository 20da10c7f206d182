"""Candidate and search evaluation: metrics, bootstrap intervals and the reddit-tomt join."""

import pytest

from ranking.candidate_eval import bootstrap_ci, format_tables, recall_at, tomt_queries


def test_recall_at_counts_top_n():
    assert recall_at(["a", "b", "c"], {"c", "z"}, 2) == 0.0
    assert recall_at(["a", "b", "c"], {"c", "z"}, 3) == 0.5
    assert recall_at(["a"], set(), 10) == 0.0


def test_bootstrap_interval_brackets_mean():
    values = [0.0] * 50 + [1.0] * 50
    stats = bootstrap_ci(values, resamples=500, seed=1)
    assert stats["mean"] == 0.5
    assert 0.35 < stats["low"] < 0.5 < stats["high"] < 0.65
    assert stats["n"] == 100


def test_bootstrap_constant_values():
    stats = bootstrap_ci([0.25] * 10, resamples=100)
    assert stats["low"] == pytest.approx(0.25)
    assert stats["high"] == pytest.approx(0.25)


def test_tomt_join_finds_378(shared_data_dir):
    queries = tomt_queries(shared_data_dir)
    assert len(queries) == 378
    assert all(len(query["q"]) <= 2000 for query in queries)
    assert not any(query["q"].startswith("[") for query in queries)
    by_id = {query["id"]: query for query in queries}
    assert by_id["6a5044"]["video_id"] == "95875"  # imdb tt1386703 is Total Recall (2012), movieId 95875


def test_format_tables_lists_channels():
    cell = {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 2}
    results = {"recall": {"per_user": {"users": 2, "test_watches": 9, "recall": {
        "history_content": {"100": cell, "users_served": 2}, "union": {"100": cell, "users_served": 2}}}}}
    text = format_tables(results)
    assert "| history_content | 0.500 [0.400, 0.600] | 2 |" in text
    assert "per_user split: 2 users, 9 held-out watches" in text


@pytest.mark.es
def test_evaluate_command_writes_tables(es, settings, tmp_path, monkeypatch, capsys):
    import json

    from app.cli import main
    from tests.ranking.test_world import write_movielens

    (tmp_path / "data").mkdir()
    write_movielens(tmp_path / "data" / "movielens-latest-small")
    monkeypatch.setenv("VIDREC_INDEX_PREFIX", settings.index_prefix)
    monkeypatch.setenv("VIDREC_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("VIDREC_CF_DIMS", "4")
    output = tmp_path / "eval.json"
    code = main(["evaluate", "candidates", "--data-dir", str(tmp_path / "data"), "--splits", "per_user",
                 "--skip-search", "--bootstrap", "50", "--output", str(output)])
    assert code == 0
    assert "per_user split: 2 users, 3 held-out watches" in capsys.readouterr().out
    results = json.loads(output.read_text())
    union = results["recall"]["per_user"]["recall"]["union"]
    # User 2's held-out movie is found. User 1's held-out movies 3 and 4 were watched before the split
    # too, so they are excluded as watched: recall 0 for user 1.
    assert union["1000"]["mean"] == 0.5
    assert not es.indices.get(index=f"{settings.index_prefix}eval-*", allow_no_indices=True).body  # deleted
