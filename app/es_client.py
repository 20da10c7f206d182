"""The one place that builds Elasticsearch clients, sync and async, from Settings.

Both clients retry a request on HTTP 429 and on connection errors and timeouts,
up to ``es_max_retries`` times, each on the next node in the pool (one node
here). Bulk loads add their own capped exponential backoff on top (see
``indexing.bulk_load``).

The local node built from the integ-test zip has no ``GET /`` endpoint, so
``ping()`` and ``info()`` fail there: use ``cluster_health`` to check a node.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from elasticsearch import AsyncElasticsearch, Elasticsearch
from elasticsearch import ApiError, TransportError
from elasticsearch.serializer import NdjsonSerializer, OrjsonSerializer

from app.settings import Settings

logger = logging.getLogger(__name__)

RETRY_ON_STATUS = (429,)


def _client_options(settings: Settings, request_timeout_s: float | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "hosts": [settings.es_url],
        "request_timeout": request_timeout_s or settings.es_request_timeout_s,
        "max_retries": settings.es_max_retries,
        "retry_on_status": RETRY_ON_STATUS,
        "retry_on_timeout": True,
    }
    if settings.es_api_key:
        options["api_key"] = settings.es_api_key
    elif settings.es_username:
        options["basic_auth"] = (settings.es_username, settings.es_password or "")
    return options


class OrjsonNdjsonSerializer(NdjsonSerializer):
    """NDJSON bodies (``_bulk``, ``_msearch``) encoded and decoded with orjson, line by line."""

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY)

    def json_loads(self, data: bytes) -> Any:
        return orjson.loads(data)


def make_client(settings: Settings, request_timeout_s: float | None = None) -> Elasticsearch:
    """Build a synchronous client for CLI commands, loaders and tests."""
    return Elasticsearch(**_client_options(settings, request_timeout_s))


def make_async_client(settings: Settings, request_timeout_s: float | None = None) -> AsyncElasticsearch:
    """Build an asyncio client for the API process, with orjson for request and response bodies.

    The standard library's json took about 10 ms of the API's CPU per recommendation request, for the
    profile's vectors, the channel bodies and the impression bulk lines. orjson does the same in a fraction.
    orjson writes NaN as null where json writes NaN, so callers keep checking values before they write.
    """
    serializers = {OrjsonSerializer.mimetype: OrjsonSerializer(),
                   OrjsonNdjsonSerializer.mimetype: OrjsonNdjsonSerializer()}
    return AsyncElasticsearch(**_client_options(settings, request_timeout_s), serializers=serializers)


def cluster_health(client: Elasticsearch, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """Return the cluster health body, or None when the node does not answer within ``timeout_s``."""
    try:
        return dict(client.options(request_timeout=timeout_s, max_retries=0).cluster.health())
    except (TransportError, ApiError) as error:
        logger.debug("cluster health failed: %s", error)
        return None


async def async_cluster_health(client: AsyncElasticsearch, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """Async twin of :func:`cluster_health`."""
    try:
        return dict(await client.options(request_timeout=timeout_s, max_retries=0).cluster.health())
    except (TransportError, ApiError) as error:
        logger.debug("cluster health failed: %s", error)
        return None
