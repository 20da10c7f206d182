"""Embedder: offline model load, dimension check, normalization and the vector cache."""

from __future__ import annotations

import numpy as np
import pytest

from app.settings import load_settings
from indexing.embed import Embedder, EmbeddingModelError, normalize_text, query_text, text_hash, video_text


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    cache_dir = tmp_path_factory.mktemp("embed-cache")
    return Embedder(load_settings(cache_dir=cache_dir), show_progress=False)


def test_normalize_text_collapses_whitespace_and_width():
    assert normalize_text("  Toy\tStory \n (1995) ") == "Toy Story (1995)"
    assert normalize_text("ＡＢＣ") == "ABC"


def test_video_text_orders_title_tags_description():
    text = video_text("Heat", ["Crime", "Thriller"], "A heist  movie.", max_chars=1000)
    assert text == "Heat. Crime, Thriller. A heist movie."


def test_video_text_cuts_to_max_chars():
    text = video_text("Heat", ["Crime"], "x" * 500, max_chars=20)
    assert len(text) <= 20
    assert text.startswith("Heat. Crime")


def test_query_text_matches_video_normalization():
    assert query_text("  Toy   Story ", 1000) == video_text("Toy Story", [], None, 1000)


def test_text_hash_depends_on_model():
    assert text_hash("model-a", "heat") != text_hash("model-b", "heat")


def test_encode_shape_dtype_and_norm(embedder):
    vectors = embedder.encode(["Toy Story", "Heat. Crime, Thriller", ""])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0, atol=1e-5)


def test_encode_similar_titles_closer(embedder):
    cat, kitten, tax = embedder.encode(["a cat sleeping", "a kitten napping", "income tax return forms"])
    assert float(cat @ kitten) > float(cat @ tax)


def test_cache_counts_hits_and_returns_same_vectors(embedder):
    before_hits = embedder.cache_stats.hits
    first = embedder.encode(["cache probe one", "cache probe two"])
    second = embedder.encode(["cache probe two", "cache probe one"])
    assert embedder.cache_stats.hits - before_hits == 2
    assert np.allclose(first[0], second[1])
    assert np.allclose(first[1], second[0])


def test_embedder_rejects_wrong_dimension(tmp_path):
    with pytest.raises(EmbeddingModelError) as error:
        Embedder(load_settings(cache_dir=tmp_path, embedding_dims=512), show_progress=False)
    assert "384" in str(error.value)
    assert "512" in str(error.value)


def test_embedder_missing_model_named(tmp_path):
    with pytest.raises(EmbeddingModelError) as error:
        Embedder(load_settings(cache_dir=tmp_path, embedding_model=str(tmp_path / "no-such-model")),
                 show_progress=False)
    assert "no-such-model" in str(error.value)
