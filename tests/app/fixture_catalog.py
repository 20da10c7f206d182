"""A small video catalog with hand-made vectors where the right candidates are known.

Vectors have 8 dimensions: cooking videos point along axis 0, sports along
axis 1, music along axis 2, each with a small per-video tilt so ranks differ.
"""

from __future__ import annotations

import math

from elasticsearch import Elasticsearch

from app.settings import Settings
from indexing import indices

DIMS = 8
CF_DIMS = 4
AXES = {"cooking": 0, "sports": 1, "music": 2}


def unit(axis: int, tilt: float = 0.0, tilt_axis: int = 7) -> list[float]:
    vector = [0.0] * DIMS
    vector[axis] = 1.0
    vector[tilt_axis] = tilt
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def video(video_id: str, category: str, title: str, number: int, **extra) -> dict:
    doc = {
        "video_id": video_id,
        "title": title,
        "description": f"A {category} video number {number}.",
        "tags": [category],
        "category": category,
        "language": "en",
        "available": True,
        "popularity": float(100 - number),
        "published_at": "2018-01-01",
        "text_embedding": unit(AXES[category], tilt=0.05 * number),
    }
    doc.update(extra)
    return doc


COOKING_TITLES = [
    "Pasta carbonara in ten minutes", "Sourdough bread for beginners", "Thai green curry at home",
    "Perfect roast chicken", "Knife skills every cook needs", "Chocolate lava cake",
]
SPORTS_TITLES = [
    "Marathon training plan", "Basketball dribbling drills", "Football tactics explained",
    "Tennis serve technique", "Cycling up steep hills", "Swimming freestyle basics",
]
MUSIC_TITLES = ["Guitar chords for songs", "Piano scales warm up", "Drum grooves in 4/4", "Singing with vibrato"]


def catalog() -> list[dict]:
    docs = []
    for number, title in enumerate(COOKING_TITLES, start=1):
        docs.append(video(f"cook-{number}", "cooking", title, number))
    for number, title in enumerate(SPORTS_TITLES, start=1):
        docs.append(video(f"sport-{number}", "sports", title, number))
    for number, title in enumerate(MUSIC_TITLES, start=1):
        docs.append(video(f"music-{number}", "music", title, number))
    docs.append(video("cook-unavailable", "cooking", "Removed risotto recipe", 0, available=False, popularity=1000.0))
    docs.append(video("cook-adult", "cooking", "Cocktails after midnight", 0, min_age=18))
    docs.append(video("cook-french", "cooking", "Soupe a l'oignon", 0, language="fr", regions_allowed=["FR"]))
    docs.append(video("sport-fresh", "sports", "Esports finals highlights", 9, published_at="2018-08-30",
                      popularity=80.0))
    return docs


def fixture_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"embedding_dims": DIMS, "cf_dims": CF_DIMS})


def load_catalog(client: Elasticsearch, settings: Settings, users: list[dict] = ()) -> list[dict]:
    """Create the indices under the settings' prefix and index the fixture catalog and ``users``."""
    indices.create_all(client, settings, names=("videos", "users"))
    docs = catalog()
    operations: list[dict] = []
    for doc in docs:
        operations.extend(({"index": {"_index": settings.alias("videos"), "_id": doc["video_id"]}}, doc))
    for user in users:
        operations.extend(({"index": {"_index": settings.alias("users"), "_id": user["user_id"]}}, user))
    response = client.bulk(operations=operations, refresh=True)
    assert not response["errors"], response
    return docs


CHEF = {
    "user_id": "chef",
    "age": 30,
    "region": "US",
    "watched_ids": ["cook-1", "cook-2"],
    "not_interested": ["cook-3"],
    "history_vector": unit(0),
}
