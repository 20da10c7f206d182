"""Unit tests of the channel merge and reciprocal rank fusion."""

from app.candidates.merge import fuse, merge, merge_cap
from app.candidates.types import ChannelHit
from app.settings import load_settings


def test_fuse_sums_reciprocal_ranks():
    fused = fuse({"history_content": [("a", 0.9), ("b", 0.8)], "popular_fresh": [("b", 5.0), ("c", 4.0)]}, rrf_k=60)
    assert [candidate.video_id for candidate in fused] == ["b", "a", "c"]
    by_id = {candidate.video_id: candidate for candidate in fused}
    assert abs(by_id["b"].fused_score - (1 / 62 + 1 / 61)) < 1e-12
    assert by_id["b"].sources == [ChannelHit("history_content", 2, 0.8), ChannelHit("popular_fresh", 1, 5.0)]


def test_fuse_ranks_skip_excluded():
    fused = fuse({"query_text": [("watched", 9.0), ("a", 3.0)]}, rrf_k=60, excluded=["watched"])
    assert [candidate.video_id for candidate in fused] == ["a"]
    assert fused[0].sources == [ChannelHit("query_text", 1, 3.0)]


def test_fuse_keeps_first_duplicate():
    fused = fuse({"query_text": [("a", 3.0), ("a", 1.0), ("b", 0.5)]}, rrf_k=1)
    assert fused[0].sources == [ChannelHit("query_text", 1, 3.0)]
    assert fused[1].sources == [ChannelHit("query_text", 2, 0.5)]


def test_fuse_ties_break_on_id():
    fused = fuse({"history_content": [("z", 1.0)], "collaborative": [("y", 1.0)]}, rrf_k=60)
    assert [candidate.video_id for candidate in fused] == ["y", "z"]


def test_merge_cap_bounds():
    config = load_settings(candidates_cap=500, candidates_cap_max=1000)
    assert merge_cap(10, config) == 500
    assert merge_cap(400, config) == 800
    assert merge_cap(900, config) == 1000


def test_merge_truncates_to_cap():
    config = load_settings(candidates_cap=3)
    lists = {"history_content": [(str(i), 1.0) for i in range(10)]}
    assert len(merge(lists, config, k=1)) == 3
    assert len(merge(lists, config, k=4)) == 8
