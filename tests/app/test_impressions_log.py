import asyncio
import logging

import pytest
from elasticsearch import TransportError

from app.es_client import make_async_client
from app.impressions_log import ImpressionLogger, impression_id
from indexing.indices import create_all
from tests.app.tcp_proxy import TcpProxy
from tests.app.workers import free_port


def items(n: int):
    return [(f"v{i}", 1.0 - i / 100, ["collaborative"]) for i in range(n)]


def test_impression_id_depends_on_request_and_video():
    assert impression_id("r1", "v1") == impression_id("r1", "v1")
    assert impression_id("r1", "v1") != impression_id("r2", "v1")
    assert impression_id("r1", "v1") != impression_id("r1", "v2")


async def test_full_buffer_drops_counted_and_logged(settings, caplog):
    client = make_async_client(settings.model_copy(update={"es_url": f"http://127.0.0.1:{free_port()}"}))
    small = settings.model_copy(update={"impressions_buffer_size": 5})
    impressions = ImpressionLogger(client, small)
    with caplog.at_level(logging.WARNING, logger="app.impressions_log"):
        accepted = impressions.log("req-9", "u1", "m1", items(8))
    await client.close()
    assert accepted == 5
    assert impressions.dropped == 3
    assert len(impressions.buffer) == 5
    assert "dropped impressions of request_id=req-9" in caplog.text


async def test_unreachable_node_keeps_buffer(settings):
    dead = settings.model_copy(update={"es_url": f"http://127.0.0.1:{free_port()}", "es_max_retries": 0})
    client = make_async_client(dead)
    impressions = ImpressionLogger(client, dead)
    impressions.log("req-1", "u1", "m1", items(4))
    with pytest.raises(TransportError):
        await impressions.flush()
    await client.close()
    assert len(impressions.buffer) == 4
    assert [doc["position"] for doc in impressions.buffer] == [1, 2, 3, 4]


@pytest.mark.es
async def test_outage_then_recovery_writes_all_once(settings, es):
    create_all(es, settings, names=("impressions",))
    proxy = TcpProxy("127.0.0.1", int(settings.es_url.rsplit(":", 1)[1]))
    through_proxy = settings.model_copy(update={"es_url": proxy.url, "es_max_retries": 0})
    client = make_async_client(through_proxy)
    impressions = ImpressionLogger(client, through_proxy)
    try:
        impressions.log("req-a", "u1", "m1", items(3))
        with pytest.raises(TransportError):
            await impressions.flush()  # the node is unreachable: nothing written, nothing lost
        proxy.start()
        impressions.log("req-b", "u1", "m1", items(2))
        written = await impressions.flush()
    finally:
        proxy.stop()
        await client.close()
    assert written == 5
    assert not impressions.buffer
    es.indices.refresh(index=settings.alias("impressions"))
    assert es.count(index=settings.alias("impressions"))["count"] == 5


async def test_close_returns_while_flush_timer_fires(settings):
    # A 1 ms flush interval makes the background task's timer fire around every close() call.
    # NOTE: the shutdown hang this guards against was intermittent, and this loop passed against the old
    # code too. That code cancelled the task inside asyncio.wait_for just as its timeout fired.
    fast = settings.model_copy(update={"impressions_flush_interval_s": 0.001})
    client = make_async_client(fast)
    try:
        for _ in range(200):
            impressions = ImpressionLogger(client, fast)
            impressions.start()
            await asyncio.sleep(0.001)
            await asyncio.wait_for(impressions.close(timeout_s=2.0), timeout=5.0)
            assert impressions._task is None
    finally:
        await client.close()


async def test_close_writes_buffered_impressions(settings, es):
    create_all(es, settings)
    client = make_async_client(settings)
    impressions = ImpressionLogger(client, settings.model_copy(update={"impressions_flush_interval_s": 60.0}))
    impressions.start()
    impressions.log("req-close", "u1", "m1", items(3))
    await impressions.close()
    await client.close()
    es.indices.refresh(index=settings.alias("impressions"))
    assert es.count(index=settings.alias("impressions"), query={"term": {"request_id": "req-close"}})["count"] == 3
