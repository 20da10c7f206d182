import math
from datetime import datetime, timezone

import numpy as np
import pytest

from app.candidates.types import Candidate, ChannelHit
from ranking.feature_table import UNKNOWN_ROW, build_table
from ranking.features import (
    DYNAMIC_COLUMNS, PADDING_ID, UNKNOWN_ID, FeatureConfig, FeatureEncoder, FeatureStats, FeatureVocab,
    PopularityTimeline, Standardizer, TIME_COLUMNS, TablePopularity, location_bucket, normalize_gender,
    time_features, user_dense_columns,
)

DIMS = 4
T = datetime(2024, 7, 4, 15, 30, tzinfo=timezone.utc).timestamp()
HOUR = 3600.0
DAY = 86400.0


def ms(seconds: float) -> float:
    return seconds * 1000.0


@pytest.fixture
def table():
    return build_table([
        {"video_id": "a", "text_embedding": [1, 0, 0, 0], "category": "comedy", "duration_s": 99.0,
         "published_at": ms(T - 10 * DAY), "watch_count": 7},
        {"video_id": "b", "text_embedding": [0, 1, 0, 0], "category": "drama",
         "published_at": "2030-01-01T00:00:00Z"},
        {"video_id": "c", "text_embedding": [0.6, 0.8, 0, 0]},
    ], DIMS)


@pytest.fixture
def encoder(table):
    config = FeatureConfig(history_length=3, query_count=2, embedding_dims=DIMS)
    vocab = FeatureVocab(video_ids=["a", "b"], locations=["r:CA"], categories=["comedy"])
    return FeatureEncoder(config, vocab, None, table)


def column(name):
    return DYNAMIC_COLUMNS.index(name)


def user_column(name):
    return user_dense_columns(FeatureConfig(embedding_dims=DIMS)).index(name)


def test_time_features_known_holiday():
    values = dict(zip(TIME_COLUMNS, time_features(T, "US")))
    assert values["month_sin"] == pytest.approx(0.0, abs=1e-9)
    assert values["month_cos"] == pytest.approx(-1.0)
    assert values["dow_sin"] == pytest.approx(math.sin(2 * math.pi * 3 / 7))
    assert values["hour_cos"] == pytest.approx(math.cos(2 * math.pi * 15.5 / 24))
    assert values["week_sin"] == pytest.approx(math.sin(2 * math.pi * 26 / 53))
    assert values["holiday"] == 1.0
    assert values["country_missing"] == 0.0


def test_time_features_holiday_depends_on_country():
    assert dict(zip(TIME_COLUMNS, time_features(T, "FR")))["holiday"] == 0.0


@pytest.mark.parametrize("country", [None, "", "ZZ"])
def test_time_features_unknown_country(country):
    values = dict(zip(TIME_COLUMNS, time_features(T, country)))
    assert values["holiday"] == 0.0
    assert values["country_missing"] == 1.0


@pytest.mark.parametrize(("value", "expected"), [("female", "F"), ("m", "M"), ("x", "other"), (None, None), ("", None)])
def test_normalize_gender_cases(value, expected):
    assert normalize_gender(value) == expected


def test_location_bucket_precedence():
    assert location_bucket({"geohash": "9q8yyk", "region": "CA"}, 3) == "g:9q8"
    assert location_bucket({"region": "CA", "country": "US"}, 3) == "r:CA"
    assert location_bucket({"country": "US"}, 3) == "c:US"
    assert location_bucket({}, 3) is None


def test_user_age_gender_standardized(encoder):
    encoder.stats.user = Standardizer.identity(encoder.user_width)
    encoder.stats.user.mean[user_column("age")] = 20.0
    encoder.stats.user.std[user_column("age")] = 5.0
    user = encoder.encode_user({"age": 30, "gender": "F", "region": "CA"}, T)
    assert user.dense[user_column("age")] == pytest.approx(2.0)
    assert user.dense[user_column("age_missing")] == 0.0
    assert user.dense[user_column("gender_F")] == 1.0
    assert user.dense[user_column("gender_missing")] == 0.0
    assert user.location == 1


def test_user_missing_values_explicit(encoder):
    user = encoder.encode_user({}, T)
    assert np.all(np.isfinite(user.dense))
    assert user.dense[user_column("age")] == 0.0
    assert user.dense[user_column("age_missing")] == 1.0
    assert user.dense[user_column("gender_missing")] == 1.0
    assert user.dense[user_column("query_missing")] == 1.0
    assert user.dense[user_column("history_empty")] == 1.0
    assert user.location == 0
    assert list(user.history) == [PADDING_ID] * 3


def test_user_history_last_n_most_recent_first(encoder):
    watches = [{"video_id": v, "ts": ms(T - k * HOUR)} for k, v in [(4, "b"), (1, "a"), (2, "zzz"), (3, "b")]]
    user = encoder.encode_user({"recent_watches": watches}, T)
    # a (1 h ago) -> index 2, zzz (unknown) -> UNKNOWN_ID, b -> index 3; the 4th is past N = 3.
    assert list(user.history) == [2, UNKNOWN_ID, 3]


def test_user_query_mean_of_last_m(encoder):
    queries = [{"text": "x", "ts": ms(T - 1 * HOUR), "vector": [1, 0, 0, 0]},
               {"text": "y", "ts": ms(T - 2 * HOUR), "vector": [0, 1, 0, 0]},
               {"text": "z", "ts": ms(T - 3 * HOUR), "vector": [0, 0, 1, 0]}]
    user = encoder.encode_user({"recent_queries": queries}, T)
    assert list(user.dense[:DIMS]) == pytest.approx([0.5, 0.5, 0, 0])
    assert user.dense[user_column("query_missing")] == 0.0


def test_dynamic_channels_impressions_age(encoder, table):
    profile = {"impressions": [{"video_id": "a", "count": 3, "last_shown": ms(T - 2 * HOUR)}],
               "history_vector": [1, 0, 0, 0]}
    user = encoder.encode_user(profile, T)
    candidates = [Candidate("a", [ChannelHit("collaborative", 4, 0.7), ChannelHit("no_such", 1, 9.0)], 0.02),
                  Candidate("b", [], 0.01), Candidate("c", [ChannelHit("query_text", 1, 12.5)], 0.0)]
    rows, dynamic = encoder.dynamic_raw(user, candidates, TablePopularity(table))
    assert list(rows) == [1, 2, 3]
    a, b, c = dynamic
    assert a[column("log_video_age_days")] == pytest.approx(math.log1p(10))
    assert b[column("video_age_missing")] == 1.0  # published after the request
    assert c[column("video_age_missing")] == 1.0  # no publish date
    assert a[column("log_popularity")] == pytest.approx(math.log1p(7))
    assert a[column("collaborative_flag")] == 1.0
    assert a[column("collaborative_inverse_rank")] == 0.25
    assert a[column("collaborative_score")] == pytest.approx(0.7)
    assert math.isnan(a[column("query_text_score")])
    assert c[column("query_text_score")] == 12.5
    assert a[column("log_impressions")] == pytest.approx(math.log1p(3))
    assert a[column("log_hours_since_impression")] == pytest.approx(math.log1p(2))
    assert a[column("never_shown")] == 0.0
    assert b[column("never_shown")] == 1.0
    assert a[column("history_similarity")] == pytest.approx(1.0)
    assert c[column("history_similarity")] == pytest.approx(0.6)
    assert a[column("history_missing")] == 0.0


def test_dynamic_unknown_candidate_default_row(encoder, table):
    user = encoder.encode_user({"history_vector": [1, 0, 0, 0]}, T)
    rows, dynamic = encoder.encode_candidates(user, [Candidate("not-in-table")], TablePopularity(table))
    assert rows[0] == UNKNOWN_ROW
    assert np.all(np.isfinite(dynamic))
    assert dynamic[0, column("video_age_missing")] == 1.0
    assert dynamic[0, column("history_similarity")] == 0.0


def test_video_block_category_and_duration(encoder):
    video = encoder.video_raw()
    width = DIMS + 1
    assert video.shape == (4, width + 2 + 2)
    assert list(video[1, width: width + 2]) == [0.0, 1.0]  # "comedy" is in the vocabulary
    assert list(video[2, width: width + 2]) == [1.0, 0.0]  # "drama" is not
    assert video[1, -2] == pytest.approx(math.log1p(99.0))
    assert video[2, -1] == 1.0  # duration missing
    assert video[0, DIMS] == 1.0  # default row has no text embedding


def test_popularity_timeline_counts_strictly_before():
    timeline = PopularityTimeline(np.array([1, 1, 1, 2]), np.array([10.0, 20.0, 30.0, 5.0]), 3)
    assert list(timeline.counts(np.array([1, 2, 0]), 20.0)) == [1, 1, 0]
    assert list(timeline.counts(np.array([1, 2]), 31.0)) == [3, 1]
    assert list(timeline.counts(np.array([1, 2]), -1e9)) == [0, 0]
    assert list(timeline.counts(np.array([2, 1]), 1e12)) == [1, 3]


def test_no_leakage_from_events_after_t(encoder, table):
    profile = {
        "recent_watches": [{"video_id": "a", "ts": ms(T - HOUR)}],
        "recent_queries": [{"text": "q", "ts": ms(T - HOUR), "vector": [0, 1, 0, 0]}],
        "impressions": [{"video_id": "a", "count": 1, "last_shown": ms(T - DAY)}],
        "history_vector": [1, 0, 0, 0],
    }
    timeline = PopularityTimeline(np.array([1, 2]), np.array([T - DAY, T - HOUR]), table.size)
    candidates = [Candidate("a"), Candidate("b"), Candidate("c")]

    def encode(p, popularity):
        user = encoder.encode_user(p, T)
        return user.dense, user.history, encoder.encode_candidates(user, candidates, popularity)[1]

    before = encode(profile, timeline)
    planted = dict(profile)
    planted["recent_watches"] = profile["recent_watches"] + [{"video_id": "b", "ts": ms(T + HOUR)}]
    planted["recent_queries"] = profile["recent_queries"] + [{"text": "later", "ts": ms(T), "vector": [0, 0, 1, 0]}]
    planted["impressions"] = profile["impressions"] + [{"video_id": "c", "count": 5, "last_shown": ms(T + DAY)}]
    later_timeline = PopularityTimeline(np.array([1, 2, 1, 3]), np.array([T - DAY, T - HOUR, T, T + 1]), table.size)
    after = encode(planted, later_timeline)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)


def test_standardizer_fit_ignores_missing():
    raw = np.array([[1.0, 5.0], [3.0, np.nan], [np.nan, 7.0]])
    fitted = Standardizer.fit(raw, [0])
    assert fitted.mean == [2.0, 0.0]
    assert fitted.std == [1.0, 1.0]
    out = fitted.apply(raw)
    assert list(out[:, 0]) == [-1.0, 1.0, 0.0]
    assert list(out[:, 1]) == [5.0, 0.0, 7.0]


def test_encoder_round_trips_through_dict(encoder, table):
    encoder.stats = FeatureStats(Standardizer.identity(encoder.user_width), Standardizer.identity(encoder.video_width),
                                 Standardizer.fit(np.arange(2.0 * len(DYNAMIC_COLUMNS)).reshape(2, -1), [0]))
    copy = FeatureEncoder.from_dict(encoder.to_dict(), table)
    assert copy.vocab.video_index("b") == encoder.vocab.video_index("b") == 3
    assert copy.stats.dynamic.mean[0] == encoder.stats.dynamic.mean[0] == pytest.approx(len(DYNAMIC_COLUMNS) / 2)
