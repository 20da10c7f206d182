"""Unit tests of the channel query builders: bodies only, no node."""

import json

import pytest

from app.candidates import channels
from app.candidates.channels import CandidateRequest
from app.settings import load_settings

PROFILE = {
    "user_id": "u1",
    "age": 15,
    "region": "US",
    "watched_ids": ["v3", "v2", "v1"],
    "not_interested": ["v9"],
    "history_vector": [0.6, 0.8, 0.0],
    "query_vector": [0.0, 1.0, 0.0],
    "recent_queries": [{"text": "pasta (fresh)", "vector": [0.0, 1.0, 0.0]}, {"text": "  "}],
    "cf_embedding": [0.1, -0.2],
    "cf_model_version": "als-1",
}


@pytest.fixture
def config():
    return load_settings(candidates_history_size=50, candidates_exclude_in_query_max=3)


def walk(node):
    """Yield every dict in a nested body."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_history_content_filters_inside_knn(config):
    body = channels.history_content(PROFILE, CandidateRequest(language="en", category="cooking"), config)
    knn = body["knn"]
    assert knn["field"] == "text_embedding"
    assert knn["query_vector"] == [0.6, 0.8, 0.0]
    assert knn["k"] == 50 + 1  # one excluded id did not fit in the filter, so one more is fetched
    assert knn["num_candidates"] == 102
    assert "post_filter" not in body
    assert "_source" not in body
    assert body["stored_fields"] == "_none_"
    assert body["docvalue_fields"] == ["video_id"]
    filters = knn["filter"]["bool"]["filter"]
    assert {"term": {"language": "en"}} in filters
    assert {"term": {"category": "cooking"}} in filters


def test_filter_holds_age_region_availability(config):
    query = channels.eligibility_filter(PROFILE, CandidateRequest(), config)
    text = json.dumps(query)
    assert '{"range": {"min_age": {"lte": 15}}}' in text
    assert '{"term": {"regions_allowed": "US"}}' in text
    assert {"term": {"available": False}} in query["bool"]["must_not"]


def test_request_region_overrides_profile(config):
    text = json.dumps(channels.eligibility_filter(PROFILE, CandidateRequest(region="FR"), config))
    assert '"regions_allowed": "FR"' in text
    assert '"regions_allowed": "US"' not in text


def test_unknown_age_uses_setting(config):
    text = json.dumps(channels.eligibility_filter({}, CandidateRequest(), config))
    assert '{"range": {"min_age": {"lte": 0}}}' in text
    older = config.model_copy(update={"age_when_unknown": 18})
    assert '{"range": {"min_age": {"lte": 18}}}' in json.dumps(channels.eligibility_filter({}, CandidateRequest(), older))


def test_exclusions_order_and_split(config):
    request = CandidateRequest(exclude_ids=("x1", "v2"))
    assert channels.excluded_ids(PROFILE, request) == ["x1", "v2", "v9", "v3", "v1"]
    in_query, in_application = channels.split_exclusions(PROFILE, request, config)
    assert in_query == ["x1", "v2", "v9"]
    assert in_application == ["v3", "v1"]
    must_not = channels.eligibility_filter(PROFILE, request, config)["bool"]["must_not"]
    assert {"terms": {"video_id": ["x1", "v2", "v9"]}} in must_not


def test_collaborative_pins_model_version(config):
    body = channels.collaborative(PROFILE, CandidateRequest(), config)
    assert body["knn"]["field"] == "cf_embedding"
    assert {"term": {"cf_model_version": "als-1"}} in body["knn"]["filter"]["bool"]["filter"]


def test_query_text_uses_multi_match_only(config):
    body = channels.query_text(PROFILE, CandidateRequest(), config)
    should = body["query"]["bool"]["should"]
    assert should == [{"multi_match": {"query": "pasta (fresh)", "fields": ["title^3", "tags^2", "description"],
                                       "type": "best_fields"}}]
    assert body["query"]["bool"]["minimum_should_match"] == 1
    assert not any("query_string" in node or "simple_query_string" in node for node in walk(body))


def test_query_text_cuts_long_queries(config):
    profile = {"recent_queries": [{"text": "a" * 5000}]}
    body = channels.query_text(profile, CandidateRequest(), config)
    assert len(body["query"]["bool"]["should"][0]["multi_match"]["query"]) == channels.MAX_QUERY_CHARS


def test_query_semantic_falls_back_to_mean(config):
    profile = {"recent_queries": [{"text": "a", "vector": [1.0, 0.0]}, {"text": "b", "vector": [0.0, 1.0]}]}
    body = channels.query_semantic(profile, CandidateRequest(), config)
    assert body["knn"]["query_vector"] == [0.5, 0.5]


def test_popular_fresh_decay_without_scripts(config):
    body = channels.popular_fresh({}, CandidateRequest(now="2018-09-01"), config)
    function_score = body["query"]["function_score"]
    assert function_score["functions"][1]["exp"]["published_at"] == {
        "origin": "2018-09-01", "scale": "365d", "decay": 0.5}
    assert body["size"] == config.candidates_popular_size
    for node in walk(body):
        assert "script" not in node
        assert "script_score" not in node
        assert "rrf" not in node
        assert "post_filter" not in node


def test_missing_inputs_skip_channels(config):
    queries = channels.build_channel_queries({}, CandidateRequest(), config)
    assert [channel for channel, _ in queries] == ["popular_fresh"]
    full = channels.build_channel_queries(PROFILE, CandidateRequest(), config)
    assert [channel for channel, _ in full] == list(channels.CHANNELS)


def test_channel_sizes_override(config):
    body = channels.history_content(PROFILE, CandidateRequest(channel_sizes={"history_content": 7}), config)
    assert body["size"] == 8


def test_knn_respects_server_limit(config):
    body = channels.history_content(PROFILE, CandidateRequest(channel_sizes={"history_content": 20_000}), config)
    assert body["knn"]["k"] == channels.MAX_KNN_CANDIDATES
    assert body["knn"]["num_candidates"] == channels.MAX_KNN_CANDIDATES


def test_unknown_channel_raises(config):
    with pytest.raises(ValueError, match="unknown channel 'trending'"):
        channels.build_channel_queries(PROFILE, CandidateRequest(), config, channels=("trending",))
