"""Candidate retrieval against the real node with the fixture catalog."""

import pytest

from app.candidates.channels import CandidateRequest
from app.candidates.retrieve import parse_hits, retrieve_candidates
from app.es_client import make_async_client
from tests.app.fixture_catalog import CHEF, fixture_settings, load_catalog, unit

pytestmark = pytest.mark.es


@pytest.fixture
def catalog_settings(es, settings):
    config = fixture_settings(settings)
    load_catalog(es, config, users=[CHEF, {"user_id": "teen", "age": 13, "watched_ids": ["sport-1"],
                                           "history_vector": unit(1)}])
    return config


async def retrieve(config, user_id, **options):
    client = make_async_client(config)
    try:
        return await retrieve_candidates(client, config, user_id, CandidateRequest(**options))
    finally:
        await client.close()


def ids(result):
    return [candidate.video_id for candidate in result.candidates]


async def test_cooking_history_gets_cooking(catalog_settings):
    result = await retrieve(catalog_settings, "chef", k=3)
    history = [video_id for video_id, _ in result.channel_hits["history_content"]]
    # Every eligible cooking video, nearest first; the rest are far from the cooking axis.
    assert history[:4] == ["cook-adult", "cook-4", "cook-5", "cook-6"]
    assert not any(video_id.startswith("cook-") for video_id in history[4:])
    assert result.cold_start is False


async def test_excluded_videos_never_return(catalog_settings):
    result = await retrieve(catalog_settings, "chef", k=50, exclude_ids=("sport-2",))
    found = set(ids(result))
    for hits in result.channel_hits.values():
        found.update(video_id for video_id, _ in hits)
    assert "cook-1" not in found  # watched
    assert "cook-3" not in found  # not interested
    assert "cook-unavailable" not in found
    assert "sport-2" not in found  # the caller's exclusion
    assert "cook-french" not in found  # region FR only, the user is in US


async def test_exclusion_in_application(catalog_settings):
    config = catalog_settings.model_copy(update={"candidates_exclude_in_query_max": 1})
    result = await retrieve(config, "chef", k=50)
    assert not {"cook-1", "cook-2", "cook-3"} & set(ids(result))
    # 20 videos minus the unavailable one, the FR-only one and the 3 excluded.
    assert len(ids(result)) == 15


async def test_filtered_request_returns_k(catalog_settings):
    config = catalog_settings.model_copy(update={"candidates_history_size": 2, "candidates_popular_size": 1})
    result = await retrieve(config, "chef", k=6, category="sports")
    assert len(ids(result)) == 6
    assert all(video_id.startswith("sport-") for video_id in ids(result))


async def test_filtered_request_stops_when_exhausted(catalog_settings):
    result = await retrieve(catalog_settings, "chef", k=10, category="music")
    assert sorted(ids(result)) == ["music-1", "music-2", "music-3", "music-4"]


async def test_age_filter_hides_adult_video(catalog_settings):
    teen = await retrieve(catalog_settings, "teen", k=50)
    assert "cook-adult" not in ids(teen)
    chef = await retrieve(catalog_settings, "chef", k=50)
    assert "cook-adult" in ids(chef)


async def test_language_filter(catalog_settings):
    result = await retrieve(catalog_settings, "teen", k=50, language="fr", region="FR")
    assert ids(result) == ["cook-french"]


async def test_unknown_user_gets_popular_fresh(catalog_settings):
    result = await retrieve(catalog_settings, "never-seen", k=5, now="2018-09-01")
    assert result.cold_start is True
    assert list(result.channel_hits) == ["popular_fresh"]
    assert ids(result)[0] == "sport-fresh"
    assert len(ids(result)) >= 5
    assert all(source.channel == "popular_fresh" for candidate in result.candidates for source in candidate.sources)


async def test_cold_user_with_queries(catalog_settings, es):
    es.index(index=catalog_settings.alias("users"), id="searcher", refresh=True, document={
        "user_id": "searcher", "recent_queries": [{"text": "guitar chords", "vector": unit(2)}]})
    result = await retrieve(catalog_settings, "searcher", k=5)
    assert result.cold_start is True
    assert set(result.channel_hits) == {"query_text", "query_semantic", "popular_fresh"}
    assert result.channel_hits["query_text"][0][0] == "music-1"
    assert ids(result)[0] == "music-1"


async def test_sources_name_channels(catalog_settings):
    result = await retrieve(catalog_settings, "chef", k=5)
    top = result.candidates[0]
    assert {source.channel for source in top.sources} == {"history_content", "popular_fresh"}
    assert all(source.rank >= 1 for source in top.sources)


def test_parse_hits_reads_doc_value_ids():
    response = {"hits": {"hits": [{"_score": 2.5, "fields": {"video_id": ["v7"]}},
                                  {"_id": "v3", "_score": None}]}}
    assert parse_hits(response) == [("v7", 2.5), ("v3", 0.0)]


def test_parse_hits_without_hits_key():
    # filter_path drops "hits" from a search response that found nothing.
    assert parse_hits({"status": 200}) == []
