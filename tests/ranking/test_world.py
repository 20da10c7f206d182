"""Evaluation-world splits (pure) and one small world against the real node."""

import pytest

from indexing.records import WatchEvent, format_ts
from ranking.world import WorldError, split_watches, world_settings


def watches(user_id, count, start=0, step=1000):
    return [WatchEvent(user_id=user_id, video_id=f"v{n}", timestamp_ms=1_000_000_000_000 + start + n * step)
            for n in range(count)]


def test_per_user_split_holds_out_last_fifth():
    result = split_watches(watches("a", 10) + watches("b", 4), "per_user")
    assert result.test == {"a": ["v8", "v9"]}
    assert result.request_ms["a"] == 1_000_000_000_000 + 8000
    train_a = [event.video_id for event in result.train if event.user_id == "a"]
    assert train_a == [f"v{n}" for n in range(8)]
    assert len([event for event in result.train if event.user_id == "b"]) == 4  # too few: training only
    assert result.cutoff_ms is None


def test_per_user_split_keeps_one_test_watch():
    result = split_watches(watches("a", 5), "per_user", test_fraction=0.05)
    assert result.test == {"a": ["v4"]}


def test_per_user_split_sorts_by_time():
    events = list(reversed(watches("a", 5)))
    result = split_watches(events, "per_user")
    assert result.test == {"a": ["v4"]}
    assert max(event.timestamp_ms for event in result.train) < result.request_ms["a"]


def test_global_split_uses_one_cutoff():
    early = watches("early", 6, start=0)
    late = watches("late", 6, start=10_000)
    result = split_watches(early + late, "global", test_fraction=0.25)
    # 12 watches: the cutoff is the 10th time (index 9), so late's last 3 watches are held out.
    assert result.cutoff_ms == 1_000_000_000_000 + 10_000 + 3000
    assert result.test == {"late": ["v3", "v4", "v5"]}
    assert "early" not in result.test  # nothing after the cutoff
    assert all(event.timestamp_ms < result.cutoff_ms for event in result.train)
    assert result.request_ms == {"late": result.cutoff_ms}


def test_split_rejects_bad_arguments():
    with pytest.raises(WorldError, match="unknown split 'random'"):
        split_watches([], "random")
    with pytest.raises(WorldError, match="between 0 and 1, got 1.5"):
        split_watches([], "per_user", test_fraction=1.5)


def test_world_prefix_is_separate(settings):
    assert world_settings(settings, "per_user").index_prefix == settings.index_prefix + "eval-peruser-"
    assert world_settings(settings, "global").alias("videos") == settings.index_prefix + "eval-global-videos"


def write_movielens(folder):
    """A tiny ml-latest-small folder: 6 movies, users 1 and 2 with 10 and 5 ratings, one tag each."""
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        + "".join(f"{n},Movie {n} (199{n}),{'Comedy' if n % 2 else 'Drama'}\n" for n in range(1, 7)))
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n" + "".join(f"{n},011{n},{n}\n" for n in range(1, 7)))
    rows = [f"1,{1 + n % 6},4.0,{964_000_000 + n * 100}\n" for n in range(10)]
    rows += [f"2,{1 + n},3.0,{964_000_050 + n * 100}\n" for n in range(5)]
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(rows))
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,early tag,964000001\n"
                                     "1,2,late tag,964000950\n")
    return folder


@pytest.mark.es
def test_build_world_holds_only_training(es, settings, tmp_path):
    from ranking.world import build_world

    world = build_world(es, settings, write_movielens(tmp_path / "ml"), "per_user", show_progress=False)
    config = world.settings
    assert world.test == {"1": ["3", "4"], "2": ["5"]}
    assert world.train_watches == 12
    assert es.count(index=config.alias("watch-events"))["count"] == 12
    assert es.count(index=config.alias("videos"))["count"] == 6

    profile = es.get(index=config.alias("users"), id="1")["_source"]
    # User 1 watched movies 1..6, 1..4 in turn; the last two watches (3, 4) are held out.
    assert profile["watched_ids"][0] == "2"
    assert [query["text"] for query in profile["recent_queries"]] == ["early tag"]  # the late tag is after the split
    assert world.cf_report is not None
    assert world.cf_report.events == 12
    assert world.request_time["2"] == format_ts(964_000_450_000)

    again = build_world(es, settings, tmp_path / "ml", "per_user", reuse=True, cf=False, show_progress=False)
    assert again.cf_report is None  # found, not rebuilt
    assert again.test == world.test


@pytest.mark.es
def test_build_world_rebuilds_incomplete(es, settings, tmp_path):
    from ranking.world import build_world

    folder = write_movielens(tmp_path / "ml")
    first = build_world(es, settings, folder, "global", cf=False, show_progress=False)
    es.delete(index=first.settings.alias("users"), id="1", refresh=True)
    again = build_world(es, settings, folder, "global", reuse=True, cf=False, show_progress=False)
    assert es.exists(index=again.settings.alias("users"), id="1")  # a user was missing, so it was rebuilt
