import hashlib

import numpy as np
import pytest

from app.settings import load_settings
from ranking.world_impressions import Watch, World, load_movielens, nested_splits, ranking_requests, split_users

DIMS = 8


class HashEmbedder:
    """Deterministic unit vectors from a text hash, so tests need no model."""

    dims = DIMS

    def encode(self, texts, description=""):
        out = np.zeros((len(texts), DIMS), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            vector = np.random.default_rng(seed).normal(size=DIMS)
            out[i] = vector / np.linalg.norm(vector)
        return out


@pytest.fixture
def movielens(tmp_path):
    movies = ["movieId,title,genres"] + [f"{i},Movie {i} (1999),{'Comedy' if i % 2 else 'Drama'}" for i in range(1, 31)]
    ratings = ["userId,movieId,rating,timestamp"]
    for user in range(1, 9):
        for k in range(10):
            ratings.append(f"{user},{(user * 3 + k) % 30 + 1},{1 + k % 5}.0,{964_000_000 + user * 10 + k * 1000}")
    (tmp_path / "movies.csv").write_text("\n".join(movies) + "\n")
    (tmp_path / "ratings.csv").write_text("\n".join(ratings) + "\n")
    (tmp_path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,2,funny,964000011\n1,3,later tag,964009999\n")
    settings = load_settings(cf_dims=4)
    return settings, load_movielens(tmp_path, settings, embedder=HashEmbedder())


def test_load_movielens_table(movielens):
    _, data = movielens
    table = data.table
    row = table.row("2")
    assert table.category[row] == "Drama"
    assert table.published_at[row] == pytest.approx(915148800.0)  # 1999-01-01 UTC
    assert table.popularity.sum() == 80
    assert len(data.watches["1"]) == 10


def test_split_users_holds_out_last_fraction():
    watches = {"u": [Watch(str(i), float(i), 4.0) for i in range(10)], "short": [Watch("a", 1.0, 3.0)]}
    splits = split_users(watches, 0.2, min_watches=5)
    assert list(splits) == ["u"]
    assert [w.video_id for w in splits["u"].future] == ["8", "9"]
    assert splits["u"].cutoff == 8.0
    assert len(splits["u"].history) == 8


def test_split_users_same_second_goes_to_future():
    watches = {"u": [Watch("a", 1.0, 4.0), Watch("b", 2.0, 4.0), Watch("c", 5.0, 4.0), Watch("d", 5.0, 4.0),
                     Watch("e", 6.0, 4.0)]}
    split = split_users(watches, 0.4, min_watches=5)["u"]
    assert split.cutoff == 5.0
    assert [w.video_id for w in split.history] == ["a", "b"]


def test_world_profile_uses_only_history(movielens):
    settings, data = movielens
    test_splits = split_users(data.watches, 0.2, 5)
    nested = nested_splits(test_splits, 0.2, 4)
    world = World(data, nested, settings, cf_iterations=2)
    profile = world.profile("1")
    cutoff_ms = nested["1"].cutoff * 1000
    assert profile["recent_watches"]
    assert all(w["ts"] < cutoff_ms for w in profile["recent_watches"])
    assert [q["text"] for q in profile["recent_queries"]] == ["funny"]
    assert set(profile["watched_ids"]) == {w.video_id for w in nested["1"].history}


def test_ranking_requests_label_future_watches(movielens):
    settings, data = movielens
    nested = nested_splits(split_users(data.watches, 0.2, 5), 0.2, 4)
    world = World(data, nested, settings, cf_iterations=2)
    requests = ranking_requests(world, cap=20)
    assert len(requests) == len(nested)
    for request in requests:
        split = nested[request.user_id]
        future = {w.video_id for w in split.future}
        history = {w.video_id for w in split.history}
        assert request.request_time == split.cutoff
        assert not {c.video_id for c in request.candidates} & history
        for candidate, label in zip(request.candidates, request.labels):
            assert label == (1 if candidate.video_id in future else 0)
    assert sum(sum(r.labels) for r in requests) > 0


def test_world_popularity_excludes_future(movielens):
    settings, data = movielens
    test_splits = split_users(data.watches, 0.2, 5)
    world = World(data, test_splits, settings, cf_iterations=2)
    total = world.popularity.counts(np.arange(data.table.size), 1e12).sum()
    assert total == sum(len(s.history) for s in test_splits.values())
    assert total < sum(len(w) for w in data.watches.values())
