"""What the API keeps in memory to answer without a round trip: video titles and the popular fallback list.

The popular list holds the ``VIDREC_POPULAR_FALLBACK_SIZE`` most popular
available videos. It is read from Elasticsearch at start and every
``POPULAR_REFRESH_S``, and saved as JSON under ``VIDREC_MODEL_DIR``, so an API
that starts while Elasticsearch is down still has the last list it saw and can
answer (marked degraded) instead of failing.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from elasticsearch import AsyncElasticsearch, ApiError, TransportError

from app.settings import Settings

logger = logging.getLogger(__name__)

POPULAR_REFRESH_S = 300.0
POPULAR_RETRY_S = 10.0
POPULAR_FIELDS = ["video_id", "title", "category", "language", "regions_allowed", "popularity"]
TITLE_CACHE_SIZE = 200_000


def popular_cache_path(settings: Settings) -> Path:
    """Return the file holding the last popular list read for this index prefix."""
    return settings.model_dir / "popular-fallback" / f"{settings.alias('videos')}.json"


class PopularFallback:
    """The popular fallback list: ``videos`` is a list of dicts with POPULAR_FIELDS, most popular first."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = popular_cache_path(settings)
        self.videos: list[dict[str, Any]] = []
        self.loaded_from: str | None = None  # "elasticsearch" or "disk"
        self.loaded_at: float | None = None
        self._task: asyncio.Task | None = None

    @property
    def loaded(self) -> bool:
        return bool(self.videos)

    def load_from_disk(self) -> bool:
        """Read the saved list; return whether one was found."""
        try:
            videos = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as error:
            logger.warning("popular fallback file %s is unreadable, ignoring it: %r", self.path, error)
            return False
        self.videos, self.loaded_from, self.loaded_at = list(videos), "disk", time.time()
        logger.info("popular fallback: %d videos from %s", len(self.videos), self.path)
        return True

    async def refresh(self, client: AsyncElasticsearch) -> bool:
        """Read the list from Elasticsearch and save it; return False (logged) when the node fails."""
        try:
            response = await client.options(request_timeout=3.0, max_retries=0).search(
                index=self.settings.alias("videos"),
                size=self.settings.popular_fallback_size,
                query={"bool": {"must_not": [{"term": {"available": False}}]}},
                sort=[{"popularity": {"order": "desc", "missing": "_last"}}, {"video_id": "asc"}],
                source=POPULAR_FIELDS,
                track_total_hits=False,
            )
        except (TransportError, ApiError) as error:
            logger.warning("popular fallback refresh from %s failed: %r", self.settings.alias("videos"), error)
            return False
        videos = [dict(hit["_source"]) for hit in response["hits"]["hits"]]
        for video, hit in zip(videos, response["hits"]["hits"]):
            video.setdefault("video_id", hit["_id"])
        if not videos:
            return False
        self.videos, self.loaded_from, self.loaded_at = videos, "elasticsearch", time.time()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(videos))
            tmp.replace(self.path)
        except OSError as error:
            logger.warning("could not save the popular fallback to %s: %r", self.path, error)
        return True

    def start(self, client: AsyncElasticsearch) -> None:
        """Refresh in the background: every POPULAR_REFRESH_S, or every POPULAR_RETRY_S while it fails."""
        async def loop() -> None:
            ok = self.loaded_from == "elasticsearch"
            while True:
                await asyncio.sleep(POPULAR_REFRESH_S if ok else POPULAR_RETRY_S)
                ok = await self.refresh(client)

        self._task = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def pick(self, k: int, exclude: Iterable[str] = (), language: str | None = None,
             category: str | None = None, region: str | None = None) -> list[dict[str, Any]]:
        """Return the first ``k`` listed videos that pass the filters."""
        excluded = set(exclude)
        chosen = []
        for video in self.videos:
            if video.get("video_id") in excluded:
                continue
            if language and video.get("language") != language:
                continue
            if category and video.get("category") != category:
                continue
            allowed = video.get("regions_allowed")
            if region and allowed and region not in allowed:
                continue
            chosen.append(video)
            if len(chosen) >= k:
                break
        return chosen


class TitleCache:
    """Video titles by id, least recently used evicted past TITLE_CACHE_SIZE; misses read with one _mget."""

    def __init__(self, settings: Settings, capacity: int = TITLE_CACHE_SIZE) -> None:
        self.index = settings.alias("videos")
        self.capacity = capacity
        self.titles: collections.OrderedDict[str, str] = collections.OrderedDict()

    async def preload(self, client: AsyncElasticsearch) -> int:
        """Read titles of up to ``capacity`` videos in the background, so requests rarely need an _mget.

        Returns the number read; a failure is logged and leaves the cache to fill per request.
        """
        from elasticsearch.helpers import async_scan

        read = 0
        try:
            async for hit in async_scan(client, index=self.index, query={"query": {"match_all": {}}},
                                        _source=["title"], size=5000, scroll="1m"):
                if hit["_id"] not in self.titles:
                    self._put(hit["_id"], str(hit["_source"].get("title") or ""))
                read += 1
                if read >= self.capacity:
                    break
        except (TransportError, ApiError) as error:
            logger.warning("preloading titles from %s stopped after %d: %r", self.index, read, error)
        logger.info("title cache preloaded with %d titles from %s", read, self.index)
        return read

    def put_many(self, videos: Iterable[dict[str, Any]]) -> None:
        for video in videos:
            if video.get("video_id") is not None:
                self._put(str(video["video_id"]), str(video.get("title") or ""))

    def _put(self, video_id: str, title: str) -> None:
        self.titles[video_id] = title
        self.titles.move_to_end(video_id)
        if len(self.titles) > self.capacity:
            self.titles.popitem(last=False)

    async def get_many(self, client: AsyncElasticsearch, video_ids: list[str]) -> dict[str, str]:
        """Return titles of ``video_ids``; ids missing from the index get an empty title."""
        missing = [video_id for video_id in video_ids if video_id not in self.titles]
        if missing:
            response = await client.mget(index=self.index, ids=missing, source=["title"])
            for doc in response["docs"]:
                if doc.get("found"):
                    self._put(doc["_id"], str(doc["_source"].get("title") or ""))
        return {video_id: self.titles.get(video_id, "") for video_id in video_ids}
