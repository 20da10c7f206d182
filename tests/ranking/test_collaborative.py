"""Collaborative factors: factorization checks, and training against the real node."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from app.candidates.channels import CandidateRequest
from app.candidates.retrieve import retrieve_candidates
from app.es_client import make_async_client
from indexing import indices
from ranking.collaborative import CFModelError, check_factors, factorize, train_cf
from tests.app.fixture_catalog import CF_DIMS, fixture_settings, load_catalog


def two_groups(users_per_group=6):
    """Watch matrix where the first half of users watch items 0-5 and the second half items 6-11."""
    rows, columns = [], []
    for user in range(2 * users_per_group):
        offset = 0 if user < users_per_group else 6
        for item in range(6):
            if (user + item) % 3:  # each user watches 4 of the group's 6 items
                rows.append(user)
                columns.append(offset + item)
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(2 * users_per_group, 12))


@pytest.mark.parametrize("algorithm", ["als", "bpr"])
def test_factorize_separates_groups(algorithm):
    iterations = {"als": 50, "bpr": 300}[algorithm]
    user_factors, item_factors = factorize(two_groups(), algorithm, factors=4, iterations=iterations,
                                           regularization=0.01, seed=1)
    assert user_factors.shape == (12, 4)
    assert item_factors.shape == (12, 4)
    scores = user_factors @ item_factors.T
    assert scores[0, :6].mean() > scores[0, 6:].mean()
    assert scores[11, 6:].mean() > scores[11, :6].mean()


def test_check_factors_rejects_nan():
    users = np.ones((3, 4), dtype=np.float32)
    items = np.ones((5, 4), dtype=np.float32)
    items[2, 1] = np.nan
    with pytest.raises(CFModelError, match="item factors contain 1 NaN or infinite values"):
        check_factors(users, items, 4)


def test_check_factors_rejects_inf_and_shape():
    users = np.full((3, 4), np.inf, dtype=np.float32)
    with pytest.raises(CFModelError, match="user factors contain 12 NaN"):
        check_factors(users, np.ones((2, 4), dtype=np.float32), 4)
    with pytest.raises(CFModelError, match=r"shape \(2, 3\), expected \(n, 4\)"):
        check_factors(np.ones((2, 4), dtype=np.float32), np.ones((2, 3), dtype=np.float32), 4)


def watch(user_id, video_id, day):
    return {"event_id": f"{user_id}-{video_id}", "@timestamp": f"2018-01-{day:02d}T00:00:00.000Z",
            "user_id": user_id, "video_id": video_id, "event_type": "watch"}


@pytest.fixture
def cf_world(es, settings):
    config = fixture_settings(settings)
    indices.create_all(es, config, names=("watch-events",))
    users = [{"user_id": f"cook-fan-{n}"} for n in range(6)] + [{"user_id": f"sport-fan-{n}"} for n in range(6)]
    users.append({"user_id": "newcomer", "watched_ids": ["cook-1", "cook-2"]})
    load_catalog(es, config, users=users)
    events = []
    for n in range(6):
        events += [watch(f"cook-fan-{n}", f"cook-{item}", item) for item in range(1, 7) if (n + item) % 3]
        events += [watch(f"sport-fan-{n}", f"sport-{item}", item) for item in range(1, 7) if (n + item) % 3]
    events += [watch("newcomer", "cook-1", 20), watch("newcomer", "cook-2", 21),
               watch("late-user", "music-1", 28)]
    operations = []
    for event in events:
        operations += [{"index": {"_index": config.alias("watch-events"), "_id": event["event_id"]}}, event]
    assert not es.bulk(operations=operations, refresh=True)["errors"]
    return config


@pytest.mark.es
def test_train_cf_writes_factors(es, cf_world):
    report = train_cf(es, cf_world, until="2018-01-25", iterations=30, show_progress=False)
    assert report.events == 50
    assert report.videos == 12
    assert report.videos_written == 12
    assert report.users == 13
    assert report.users_written == 13
    assert report.window_end == "2018-01-25"
    assert report.failures == []

    doc = es.get(index=cf_world.alias("videos"), id="cook-4", source_exclude_vectors=False)["_source"]
    assert len(doc["cf_embedding"]) == CF_DIMS
    assert doc["cf_model_version"] == report.model_version
    assert not es.exists(index=cf_world.alias("users"), id="late-user")  # after the window
    no_factor = es.get(index=cf_world.alias("videos"), id="music-1", source_exclude_vectors=False)["_source"]
    assert "cf_embedding" not in no_factor

    manifest = json.loads((cf_world.model_dir / "cf" / f"{report.model_version}.json").read_text())
    assert manifest["window_end"] == "2018-01-25"
    assert manifest["last_event"] == "2018-01-21T00:00:00.000Z"


@pytest.mark.es
def test_train_cf_reports_missing_user(es, cf_world):
    report = train_cf(es, cf_world, iterations=5, show_progress=False)
    assert report.users == 14
    assert report.users_written == 13
    assert len(report.failures) == 1
    assert "id=late-user status=404" in report.failures[0]


@pytest.mark.es
def test_train_cf_rejects_empty_window(es, cf_world):
    with pytest.raises(CFModelError, match="no watch events"):
        train_cf(es, cf_world, since="2019-01-01", show_progress=False)


@pytest.mark.es
async def test_collaborative_channel_follows_group(es, cf_world):
    train_cf(es, cf_world, until="2018-01-25", iterations=50, regularization=0.01, show_progress=False)
    client = make_async_client(cf_world)
    try:
        newcomer = await retrieve_candidates(client, cf_world, "newcomer", CandidateRequest(k=4))
        plain = await retrieve_candidates(client, cf_world, "sport-fan-0", CandidateRequest(k=4),
                                          channels=("collaborative",))
    finally:
        await client.close()
    collaborative = [video_id for video_id, _ in newcomer.channel_hits["collaborative"]]
    # The fans who watched cook-1 and cook-2, as the newcomer did, watched cook-4 and cook-5 too.
    assert set(collaborative[:2]) == {"cook-4", "cook-5"}
    assert "music-1" not in collaborative  # no factor: it was watched only after the window
    assert plain.channel_hits["collaborative"][0][0].startswith("sport-")


@pytest.mark.es
def test_train_cf_command(es, cf_world, monkeypatch, capsys):
    from app.cli import main

    monkeypatch.setenv("VIDREC_INDEX_PREFIX", cf_world.index_prefix)
    monkeypatch.setenv("VIDREC_CF_DIMS", str(CF_DIMS))
    monkeypatch.setenv("VIDREC_MODEL_DIR", str(cf_world.model_dir))
    assert main(["train", "cf", "--until", "2018-01-25", "--iterations", "5"]) == 0
    output = capsys.readouterr().out
    assert "13 users x 12 videos from 50 watches" in output
    assert main(["train", "cf", "--since", "2030-01-01"]) == 1
    assert "no watch events" in capsys.readouterr().out
