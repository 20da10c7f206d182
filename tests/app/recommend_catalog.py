"""A small catalog and two user profiles indexed into a test's own indices, for endpoint tests."""

from __future__ import annotations

import numpy as np
from elasticsearch import helpers

from indexing.indices import create_all

N_VIDEOS = 80
WATCHED = ["v1", "v2", "v3", "v4", "v5"]
UNAVAILABLE = {"v10", "v11"}


def video_doc(i: int, rng: np.random.Generator) -> dict:
    vector = rng.normal(size=384)
    return {
        "video_id": f"v{i}",
        "title": f"Video number {i}",
        "description": f"A test video about topic {i % 7}",
        "category": "drama" if i % 2 else "comedy",
        "language": "en" if i % 3 else "fr",
        "popularity": float(N_VIDEOS - i),
        "watch_count": N_VIDEOS - i,
        "available": f"v{i}" not in UNAVAILABLE,
        "published_at": f"20{10 + i % 14}-01-01T00:00:00Z",
        "text_embedding": (vector / np.linalg.norm(vector)).tolist(),
    }


def index_catalog(es, settings) -> dict:
    """Create the test's indices, load N_VIDEOS videos and user ``u1``; return u1's profile."""
    create_all(es, settings)
    rng = np.random.default_rng(7)
    docs = [video_doc(i, rng) for i in range(N_VIDEOS)]
    helpers.bulk(es, ({"_index": settings.alias("videos"), "_id": doc["video_id"], "_source": doc} for doc in docs))
    history = np.mean([docs[i]["text_embedding"] for i in range(1, 6)], axis=0)
    profile = {"user_id": "u1", "age": 30, "watched_ids": WATCHED, "watch_count": len(WATCHED),
               "history_vector": (history / np.linalg.norm(history)).tolist()}
    es.index(index=settings.alias("users"), id="u1", document=profile)
    es.indices.refresh(index=[settings.alias("videos"), settings.alias("users")])
    return profile
