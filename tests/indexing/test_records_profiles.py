"""Pure record and profile functions: time parsing, event ids, merging events into a profile."""

from __future__ import annotations

import numpy as np
import pytest

from app.settings import load_settings
from indexing.profiles import apply_events, history_vector
from indexing.records import event_id, format_ts, impression_id, parse_ts


@pytest.mark.parametrize("value,expected", [
    (1_714_557_600_000, 1_714_557_600_000),
    ("2024-05-01T10:00:00Z", 1_714_557_600_000),
    ("2024-05-01T12:00:00+02:00", 1_714_557_600_000),
    ("2024-05-01T10:00:00.250Z", 1_714_557_600_250),
])
def test_parse_ts_accepted_forms(value, expected):
    assert parse_ts(value) == expected


@pytest.mark.parametrize("value,message", [
    ("2024-05-01T10:00:00", "no UTC offset"),
    ("yesterday", "ISO 8601"),
    (1_714_557_600, "milliseconds, not seconds"),
    (True, "epoch milliseconds"),
])
def test_parse_ts_rejected_forms(value, message):
    with pytest.raises(ValueError, match=message):
        parse_ts(value)


def test_parse_ts_old_publication_date():
    assert format_ts(parse_ts("1950-06-01T00:00:00Z", event_time=False)) == "1950-06-01T00:00:00.000Z"
    with pytest.raises(ValueError, match="outside"):
        parse_ts("1950-06-01T00:00:00Z")


def test_format_ts_round_trip():
    assert format_ts(1_714_557_600_250) == "2024-05-01T10:00:00.250Z"
    assert parse_ts(format_ts(1_714_557_600_250)) == 1_714_557_600_250


def test_event_id_deterministic_and_distinct():
    assert event_id("watch", "u1", "v1", 1000) == event_id("watch", "u1", "v1", 1000)
    assert event_id("watch", "u1", "v1", 1000) != event_id("watch", "u1", "v1", 1001)
    assert event_id("search", "u1", "", 1000, "cats") != event_id("search", "u1", "", 1000, "dogs")
    assert impression_id("r1", "v1") != impression_id("r1", "v2")


def watch(video: str, ts_ms: int) -> dict:
    return {"event_type": "watch", "video_id": video, "ts": format_ts(ts_ms), "event_id": f"e-{video}-{ts_ms}",
            "completion": 1.0}


def test_apply_events_out_of_order_and_bounds():
    settings = load_settings(profile_recent_watches=3, profile_max_watched_ids=4)
    profile = {"user_id": "u"}
    for video, ts_ms in (("a", 5_000_000_000_000 // 10), ("c", 5_000_000_000_000 // 10 + 3000),
                         ("b", 5_000_000_000_000 // 10 + 1000), ("d", 5_000_000_000_000 // 10 + 4000),
                         ("e", 5_000_000_000_000 // 10 + 2000)):
        profile = apply_events(profile, settings, watches=[watch(video, ts_ms)])
    assert [item["video_id"] for item in profile["recent_watches"]] == ["d", "c", "e"]
    assert profile["watched_ids"] == ["d", "c", "e", "b"]
    assert profile["watch_count"] == 5


def test_history_vector_weights_recent_more():
    settings_days = 1.0
    day_ms = 86_400_000
    vectors = {"old": np.array([1.0, 0.0], dtype=np.float32), "new": np.array([0.0, 1.0], dtype=np.float32)}
    watches = [{"video_id": "new", "ts": format_ts(600_000_000_000 + 10 * day_ms)},
               {"video_id": "old", "ts": format_ts(600_000_000_000)}]
    vector = history_vector(watches, vectors, settings_days)
    assert vector[1] > 0.99
    assert np.linalg.norm(vector) == pytest.approx(1.0)
    assert history_vector(watches, {}, settings_days) is None
