"""The aggregator against real `vidrec worker` processes serving the fixture scorer."""

import asyncio
import logging
import time
from datetime import datetime, timezone

import httpx
import numpy as np
import pytest

from app import wire
from app.aggregator import Aggregator
from app.candidates.types import Candidate, ChannelHit
from app.settings import load_settings
from tests.app.fixture_scorer import FixtureScorer, fixture_score
from tests.app.workers import free_port, start_workers

SLOW_MS = 1000.0
NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
PROFILE = {"user_id": "u1", "watched_ids": ["1"], "history_vector": [0.1] * 384}


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory):
    return {"VIDREC_MODEL_DIR": str(tmp_path_factory.mktemp("models")), "VIDREC_API_WRITE_KEY": "test-write-key",
            "VIDREC_API_READ_KEY": "test-read-key"}


@pytest.fixture(scope="module")
def workers(worker_env):
    """Two prompt workers and one that sleeps SLOW_MS per batch."""
    started = start_workers(worker_env, [0, 0, SLOW_MS])
    yield started
    for worker in started:
        worker.stop()


def candidates(n: int, prefix: str = "v") -> list[Candidate]:
    return [Candidate(f"{prefix}{i}", [ChannelHit("popular_fresh", i + 1, 1.0)], 1.0 / (61 + i)) for i in range(n)]


def aggregator_for(urls, **overrides) -> Aggregator:
    # Generous timings: the test machine's two cores are shared with Elasticsearch and other tests.
    options = {"worker_urls": urls, "local_dev": True, "worker_timeout_ms": 1500.0,
               "ranking_deadline_ms": 4000.0, "worker_min_batch": 100, **overrides}
    return Aggregator(load_settings(**options))


def served(worker) -> int:
    return worker.status()["served"]


async def rank(aggregator: Aggregator, n: int = 50, user_id: str = "u1", request_id: str = "r"):
    return await aggregator.rank(request_id, user_id, PROFILE, candidates(n), NOW)


async def test_batches_split_and_scores_in_order(workers):
    fast_a, fast_b, _ = workers
    aggregator = aggregator_for([fast_a.url, fast_b.url])
    await aggregator.start()
    before = [served(fast_a), served(fast_b)]
    try:
        result = await rank(aggregator, n=250)
    finally:
        await aggregator.close()
    assert not result.degraded
    assert result.model_version == "fixture-v1"
    expected = [fixture_score("fixture-v1", f"v{i}") for i in range(250)]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6)
    # 250 candidates and a minimum batch of 100: two batches, one per worker.
    assert [served(fast_a) - before[0], served(fast_b) - before[1]] == [1, 1]


async def test_small_request_is_one_batch(workers):
    fast_a, fast_b, _ = workers
    aggregator = aggregator_for([fast_a.url, fast_b.url])
    await aggregator.start()
    before = served(fast_a) + served(fast_b)
    try:
        result = await rank(aggregator, n=60)
    finally:
        await aggregator.close()
    assert len(result.workers) == 1
    assert served(fast_a) + served(fast_b) - before == 1


async def test_round_robin_alternates_workers(workers):
    fast_a, fast_b, _ = workers
    aggregator = aggregator_for([fast_a.url, fast_b.url], worker_policy="round_robin")
    await aggregator.start()
    before = [served(fast_a), served(fast_b)]
    try:
        for i in range(6):
            assert not (await rank(aggregator, request_id=f"r{i}")).degraded
    finally:
        await aggregator.close()
    assert [served(fast_a) - before[0], served(fast_b) - before[1]] == [3, 3]


async def test_least_loaded_avoids_slow_worker(workers):
    fast, _, slow = workers
    aggregator = aggregator_for([slow.url, fast.url], worker_policy="least_loaded")
    await aggregator.start()
    before = [served(fast), served(slow)]

    async def one(i: int):
        await asyncio.sleep(0.05 * i)  # open loop: 20 requests a second
        return await rank(aggregator, request_id=f"r{i}")

    try:
        results = await asyncio.gather(*(one(i) for i in range(20)))
    finally:
        await aggregator.close()
    assert not any(result.degraded for result in results)
    to_fast, to_slow = served(fast) - before[0], served(slow) - before[1]
    assert to_fast + to_slow >= 20
    assert to_slow <= 3, f"slow worker got {to_slow} of {to_fast + to_slow} batches"


async def test_round_robin_does_not_avoid_slow_worker(workers):
    # The contrast to least_loaded: turn-taking sends every other batch to the slow worker.
    fast, _, slow = workers
    aggregator = aggregator_for([slow.url, fast.url], worker_policy="round_robin")
    await aggregator.start()
    before = served(slow)
    try:
        results = [await rank(aggregator, request_id=f"r{i}") for i in range(4)]
    finally:
        await aggregator.close()
    assert not any(result.degraded for result in results)
    assert served(slow) - before == 2


async def test_hash_sends_user_to_one_worker(workers):
    fast_a, fast_b, _ = workers
    aggregator = aggregator_for([fast_a.url, fast_b.url], worker_policy="hash")
    await aggregator.start()
    used_by_user: dict[str, set[str]] = {}
    try:
        for user in [f"user-{i}" for i in range(8)]:
            for attempt in range(3):
                result = await rank(aggregator, n=250, user_id=user, request_id=f"{user}-{attempt}")
                assert not result.degraded
                used_by_user.setdefault(user, set()).update(result.workers)
    finally:
        await aggregator.close()
    # Two batches per request, both on the user's worker, every time.
    assert all(len(used) == 1 for used in used_by_user.values()), used_by_user
    assert {url for used in used_by_user.values() for url in used} == {fast_a.url, fast_b.url}


async def test_killed_worker_retried_on_other(worker_env, workers):
    fast = workers[0]
    (doomed,) = start_workers(worker_env, [0])
    aggregator = aggregator_for([doomed.url, fast.url], worker_policy="round_robin")
    await aggregator.start()
    doomed.stop()
    try:
        results = [await rank(aggregator, request_id=f"r{i}") for i in range(6)]
    finally:
        await aggregator.close()
    assert not any(result.degraded for result in results)
    assert all(result.workers == [fast.url] for result in results)
    assert results[0].retries == 1 or results[1].retries == 1


async def test_status_failures_logged_once_per_change(worker_env, workers, caplog):
    fast = workers[0]
    (doomed,) = start_workers(worker_env, [0])
    missing = f"http://127.0.0.1:{free_port()}"
    aggregator = aggregator_for([doomed.url, fast.url, missing])
    with caplog.at_level(logging.INFO, logger="app.aggregator"):
        await aggregator.start()
        await aggregator.poll_status()
        doomed.stop()
        await aggregator.poll_status()
        await aggregator.poll_status()
        await aggregator.close()
    records = [(record.levelname, record.getMessage()) for record in caplog.records]
    not_yet = [message for level, message in records if f"worker {missing} is not responding" in message]
    stopped = [(level, message) for level, message in records if f"worker {doomed.url} /status failed" in message]
    assert len(not_yet) == 1
    assert [level for level, _ in stopped] == ["WARNING"]
    assert not any(missing in message and level == "WARNING" for level, message in records)
    assert any("3 workers (2 responding to /status)" in message for _, message in records)


async def test_missing_worker_degrades_to_fused_order():
    aggregator = aggregator_for([f"http://127.0.0.1:{free_port()}"])
    await aggregator.start()
    try:
        result = await rank(aggregator)
    finally:
        await aggregator.close()
    assert result.degraded
    assert result.scores is None


async def test_slow_worker_past_deadline_degrades(workers):
    slow = workers[2]
    aggregator = aggregator_for([slow.url], worker_timeout_ms=100.0, ranking_deadline_ms=200.0)
    await aggregator.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        result = await rank(aggregator)
    finally:
        await aggregator.close()
    assert result.degraded
    assert result.scores is None
    assert loop.time() - started < SLOW_MS / 1000


async def test_slow_worker_hedged_to_other(workers):
    fast, _, slow = workers
    aggregator = aggregator_for([slow.url, fast.url], worker_policy="round_robin", worker_timeout_ms=150.0,
                                ranking_deadline_ms=5000.0)
    await aggregator.start()
    try:
        results = [await rank(aggregator, request_id=f"r{i}") for i in range(2)]
    finally:
        await aggregator.close()
    assert not any(result.degraded for result in results)
    assert sorted(result.retries for result in results) == [0, 1]
    assert all(result.workers == [fast.url] for result in results)


async def test_model_swap_under_load_drops_nothing(worker_env):
    pair = start_workers(worker_env, [0, 0])
    # Long timings, so only the swap (not a busy test machine) could fail a request.
    aggregator = aggregator_for([worker.url for worker in pair], worker_policy="least_loaded",
                                worker_timeout_ms=5000.0, ranking_deadline_ms=10000.0)
    await aggregator.start()

    async def one(i: int):
        await asyncio.sleep(0.05 * i)
        return await rank(aggregator, n=150, request_id=f"r{i}")

    async def swap():
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=30) as client:
            for worker in pair:
                response = await client.post(f"{worker.url}/reload", json={"version": "fixture-v2"},
                                             headers={"X-API-Key": "test-write-key"})
                assert response.status_code == 200, response.text
                assert response.json()["model_version"] == "fixture-v2"

    try:
        *results, _ = await asyncio.gather(*(one(i) for i in range(40)), swap())
        statuses = [worker.status()["model_version"] for worker in pair]
        after = await rank(aggregator, n=150, request_id="after")
    finally:
        await aggregator.close()
        for worker in pair:
            worker.stop()
    assert not any(result.degraded for result in results)
    assert results[0].model_version == "fixture-v1"
    assert statuses == ["fixture-v2", "fixture-v2"]
    assert after.model_version == "fixture-v2"
    assert not after.degraded


async def test_reload_rejects_bad_version_and_keeps_serving(workers):
    fast = workers[0]
    async with httpx.AsyncClient(timeout=30) as client:
        no_key = await client.post(f"{fast.url}/reload", json={"version": "fixture-v3"})
        broken = await client.post(f"{fast.url}/reload", json={"version": "broken"},
                                   headers={"X-API-Key": "test-write-key"})
    assert no_key.status_code == 401
    assert broken.status_code == 422
    assert "broken" in broken.json()["detail"]
    assert fast.status()["model_version"] == "fixture-v1"


async def test_differing_versions_logged(worker_env, caplog):
    pair = start_workers(worker_env, [0, 0])
    try:
        httpx.post(f"{pair[1].url}/reload", json={"version": "fixture-v9"},
                   headers={"X-API-Key": "test-write-key"}, timeout=30).raise_for_status()
        aggregator = aggregator_for([worker.url for worker in pair])
        with caplog.at_level(logging.WARNING, logger="app.aggregator"):
            await aggregator.start()
            await aggregator.close()
    finally:
        for worker in pair:
            worker.stop()
    assert "different model versions" in caplog.text
    assert "fixture-v9" in caplog.text


async def test_in_process_without_workers():
    aggregator = Aggregator(load_settings(worker_urls=[], local_dev=True, ranking_deadline_ms=4000.0),
                            FixtureScorer("local-1"))
    await aggregator.start()
    result = await rank(aggregator, n=30)
    assert result.workers == ["in-process"]
    assert result.model_version == "local-1"
    np.testing.assert_allclose(result.scores, [fixture_score("local-1", f"v{i}") for i in range(30)], rtol=1e-6)


async def test_in_process_without_model_degrades():
    aggregator = Aggregator(load_settings(worker_urls=[], local_dev=True))
    await aggregator.start()
    result = await rank(aggregator)
    assert result.degraded
    assert result.scores is None


async def test_worker_without_model_until_reload(worker_env, workers):
    (empty,) = start_workers({**worker_env, "VIDREC_RANKER_VERSION": "broken"}, [0])
    try:
        assert empty.status()["model_version"] is None
        body = wire.encode_request(wire.ScoreRequest("r0", "u1", PROFILE, candidates(3), NOW))
        direct = httpx.post(f"{empty.url}/score", content=body, timeout=10)
        aggregator = aggregator_for([empty.url, workers[0].url], worker_policy="round_robin")
        await aggregator.start()
        try:
            results = [await rank(aggregator, request_id=f"r{i}") for i in range(2)]
        finally:
            await aggregator.close()
        reloaded = httpx.post(f"{empty.url}/reload", json={"version": "fixture-v1"},
                              headers={"X-API-Key": "test-write-key"}, timeout=30)
        status = empty.status()
    finally:
        empty.stop()
    assert direct.status_code == 503
    assert "no model loaded" in direct.json()["detail"]
    assert not any(result.degraded for result in results)
    assert reloaded.status_code == 200
    assert status["model_version"] == "fixture-v1"


def test_watching_worker_swaps_changed_model(tmp_path):
    model_dir = tmp_path / "watched-models"
    model_dir.mkdir()
    (worker,) = start_workers({"VIDREC_MODEL_DIR": str(model_dir)}, [0], extra_args=("--watch-s", "0.2"))
    try:
        assert worker.status()["model_version"] == "fixture-v1"
        (model_dir / "fixture-version").write_text("fixture-v5")
        deadline = time.monotonic() + 30
        while worker.status()["model_version"] != "fixture-v5" and time.monotonic() < deadline:
            time.sleep(0.2)
        version = worker.status()["model_version"]
    finally:
        worker.stop()
    assert version == "fixture-v5"
