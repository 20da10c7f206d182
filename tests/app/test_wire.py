from datetime import datetime, timezone

import msgpack
import numpy as np
import pytest

from app import wire
from app.candidates.types import Candidate, ChannelHit


def make_request(n: int = 3) -> wire.ScoreRequest:
    candidates = [Candidate(video_id=f"v{i}", fused_score=1.0 / (60 + i + 1),
                            sources=[ChannelHit("collaborative", i + 1, 0.5 + i),
                                     ChannelHit("popular_fresh", 2 * i + 1, 3.25)])
                  for i in range(n)]
    profile = {"user_id": "u1", "age": 31, "watched_ids": ["1", "2"], "history_vector": [0.25] * 384,
               "recent_queries": [{"text": "space", "vector": [0.5] * 384}]}
    return wire.ScoreRequest("req-1", "u1", profile, candidates,
                             datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc))


def test_request_round_trip_keeps_candidates():
    request = make_request()
    decoded = wire.decode_request(wire.encode_request(request))
    assert decoded.request_id == "req-1"
    assert decoded.user_id == "u1"
    assert decoded.request_time == request.request_time
    assert [c.video_id for c in decoded.candidates] == ["v0", "v1", "v2"]
    assert decoded.candidates[2].sources == [ChannelHit("collaborative", 3, 2.5),
                                             ChannelHit("popular_fresh", 5, 3.25)]
    assert decoded.candidates[1].fused_score == pytest.approx(1.0 / 62)


def test_request_round_trip_keeps_profile():
    decoded = wire.decode_request(wire.encode_request(make_request()))
    assert decoded.profile["age"] == 31
    assert decoded.profile["watched_ids"] == ["1", "2"]
    assert decoded.profile["history_vector"] == [0.25] * 384
    assert decoded.profile["recent_queries"][0]["vector"] == [0.5] * 384


def test_vectors_travel_as_float32_bytes():
    request = make_request(n=0)
    as_lists = msgpack.packb({"profile": request.profile}, use_bin_type=True)
    encoded = wire.encode_request(request)
    # Two 384-float vectors: 4 bytes a float as float32 bytes, 9 bytes as msgpack floats.
    assert len(encoded) < 0.55 * len(as_lists)


def test_unknown_channel_is_left_out():
    request = make_request(n=1)
    request.candidates[0].sources.append(ChannelHit("not_a_channel", 1, 1.0))
    decoded = wire.decode_request(wire.encode_request(request))
    assert [hit.channel for hit in decoded.candidates[0].sources] == ["collaborative", "popular_fresh"]


def test_response_round_trip():
    scores = np.array([0.1, 0.9, 0.5], dtype=np.float32)
    data = wire.encode_response(wire.ScoreResponse(scores, "m-2", "w1", 3.5))
    decoded = wire.decode_response(data, expected=3)
    np.testing.assert_array_equal(decoded.scores, scores)
    assert decoded.model_version == "m-2"
    assert decoded.worker_id == "w1"


def test_response_with_wrong_count_rejected():
    data = wire.encode_response(wire.ScoreResponse(np.zeros(2, dtype=np.float32), "m"))
    with pytest.raises(wire.WireError, match="2 scores for 3 candidates"):
        wire.decode_response(data, expected=3)


@pytest.mark.parametrize("body, message", [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb({"v": 99}), "v=1"),
    (msgpack.packb({"v": 1, "ids": []}), "lacks the field"),
])
def test_malformed_request_rejected(body, message):
    with pytest.raises(wire.WireError, match=message):
        wire.decode_request(body)
