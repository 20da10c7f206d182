"""Evaluation-world splits (pure) and one small world against the real node."""

import pytest

from indexing.records import WatchEvent
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
