import pytest
from elasticsearch import BadRequestError

from indexing import indices

pytestmark = pytest.mark.es


def test_load_mapping_fills_vector_dims(settings):
    body = indices.load_mapping("videos", settings)
    properties = body["mappings"]["properties"]
    assert properties["text_embedding"]["dims"] == settings.embedding_dims
    assert properties["cf_embedding"]["dims"] == settings.cf_dims
    assert properties["cf_embedding"]["similarity"] == "max_inner_product"
    assert body["mappings"]["dynamic"] == "strict"


def test_every_mapping_is_strict(settings):
    for name in indices.INDEX_NAMES:
        assert indices.load_mapping(name, settings)["mappings"]["dynamic"] == "strict", name


def test_load_mapping_rejects_unknown_name(settings):
    with pytest.raises(ValueError, match="unknown index 'movies'"):
        indices.load_mapping("movies", settings)


def test_create_all_is_idempotent(es, settings):
    first = indices.create_all(es, settings)
    assert [created for _, _, created in first] == [True] * len(indices.INDEX_NAMES)
    assert first[0] == (settings.alias("videos"), settings.alias("videos") + "-000001", True)
    second = indices.create_all(es, settings)
    assert [created for _, _, created in second] == [False] * len(indices.INDEX_NAMES)
    assert [index for _, index, _ in second] == [index for _, index, _ in first]


def test_mapping_rejects_unknown_field(es, settings):
    indices.create_all(es, settings)
    with pytest.raises(BadRequestError) as caught:
        es.index(index=settings.alias("videos"), id="v1", document={"video_id": "v1", "titel": "typo"})
    assert "strict_dynamic_mapping_exception" in str(caught.value)


def test_custom_cf_dims_reach_the_index(es, settings):
    custom = settings.model_copy(update={"cf_dims": 8})
    indices.create_all(es, custom, names=("videos",))
    mapping = es.indices.get_mapping(index=custom.alias("videos")).body
    (body,) = mapping.values()
    assert body["mappings"]["properties"]["cf_embedding"]["dims"] == 8


def test_list_indices_reports_alias_docs(es, settings):
    indices.create_all(es, settings)
    es.index(index=settings.alias("videos"), id="v1", document={"video_id": "v1", "title": "A title"},
             refresh=True)
    rows = {row.alias: row for row in indices.list_indices(es, settings)}
    assert set(rows) == {settings.alias(name) for name in indices.INDEX_NAMES}
    videos = rows[settings.alias("videos")]
    assert videos.index == settings.alias("videos") + "-000001"
    assert videos.docs == 1
    assert videos.size_bytes > 0
    assert rows[settings.alias("users")].docs == 0


def test_list_indices_marks_missing(es, settings):
    rows = indices.list_indices(es, settings)
    assert all(row.index is None for row in rows)


def test_concrete_index_on_alias_name_rejected(es, settings):
    es.indices.create(index=settings.alias("videos"))
    with pytest.raises(indices.IndexLifecycleError) as caught:
        indices.ensure_index(es, "videos", settings)
    assert settings.alias("videos") in str(caught.value)


def test_next_version_counts_up(es, settings):
    indices.create_all(es, settings, names=("users",))
    assert indices.next_version(es, settings.alias("users")) == settings.alias("users") + "-000002"
