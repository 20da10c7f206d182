"""One recommendation request, stage by stage, and the serving state the API keeps for it.

Stages of ``Recommender.recommend``, each timed into ``timings_ms``:

1. ``profile``: GET the user's profile (one round trip); no profile means cold start.
2. ``msearch``: every candidate channel in one ``_msearch``, then popular-fresh top-ups
   while fewer than k eligible candidates remain.
3. ``merge``: reciprocal rank fusion, exclusions, cap at N.
4. ``ranking``: the aggregator scores the candidates (``scoring`` inside the scorer,
   ``dispatch`` the rest: encoding, HTTP, waiting); without scores the fused order is kept.
5. ``titles``: titles of the top k (in-memory cache, one ``_mget`` for misses).

When Elasticsearch fails at stage 1 or 2, the answer comes from the popular
fallback list, marked degraded. Scores are never NaN: the aggregator replaces
non-finite scores, and fused scores are finite by construction.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError
from fastapi import FastAPI

from app.aggregator import Aggregator
from app.candidates import channels as channel_builders
from app.candidates.channels import CandidateRequest
from app.candidates.merge import fuse, merge_cap
from app.candidates.retrieve import MAX_FILL_ROUNDS, fill_popular, read_whole_profile, run_msearch
from app.candidates.types import Candidate
from app.fallback import PopularFallback, TitleCache
from app.impressions_log import ImpressionLogger
from app.settings import Settings

logger = logging.getLogger(__name__)

SHED_LOG_INTERVAL_S = 10.0
# A shed request reads only watched and not-interested ids. Past this timeout it serves the list without them.
SHED_PROFILE_TIMEOUT_S = 0.05


@dataclass(frozen=True)
class RecommendOptions:
    k: int = 100
    language: str | None = None
    category: str | None = None
    region: str | None = None
    exclude: tuple[str, ...] = ()
    explain: bool = False


@dataclass
class Recommendation:
    """A response body (``body``) plus the stage timings and the workers used, for logs and benchmarks."""

    body: dict[str, Any]
    timings_ms: dict[str, float] = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)


class Recommender:
    def __init__(self, settings: Settings, es: AsyncElasticsearch, aggregator: Aggregator,
                 impressions: ImpressionLogger, popular: PopularFallback, titles: TitleCache) -> None:
        self.settings = settings
        self.es = es
        self.aggregator = aggregator
        self.impressions = impressions
        self.popular = popular
        self.titles = titles
        self.inflight = 0  # requests inside _recommend now
        self.shed_count = 0
        self.shed_without_profile = 0
        self._last_shed_log = 0.0

    async def recommend(self, user_id: str, options: RecommendOptions, request_id: str | None = None) -> Recommendation:
        """Return up to ``options.k`` videos for ``user_id``.

        A worker failure gives the fused order and an Elasticsearch failure the popular list, both marked
        degraded. While ``max_inflight_recommendations`` requests are already in progress, a new one is
        shed: it gets the popular list minus the user's watched videos, marked degraded. Raises
        FallbackUnavailable when Elasticsearch fails and no popular list is loaded.
        """
        request_id = request_id or uuid.uuid4().hex
        limit = self.settings.max_inflight_recommendations
        if limit and self.inflight >= limit and self.popular.loaded:
            return await self._shed(request_id, user_id, options)
        self.inflight += 1
        try:
            return await self._recommend(user_id, options, request_id)
        finally:
            self.inflight -= 1

    async def _recommend(self, user_id: str, options: RecommendOptions, request_id: str) -> Recommendation:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        request_time = self.settings.now()
        # With a fixed serving clock, popular-fresh's recency decay starts from it too, not from the node's clock.
        origin = request_time.strftime("%Y-%m-%dT%H:%M:%SZ") if self.settings.as_of else "now"
        request = CandidateRequest(k=options.k, language=options.language, category=options.category,
                                   region=options.region, exclude_ids=options.exclude, now=origin)
        try:
            profile_doc = await read_whole_profile(self.es, self.settings, user_id)
            timings["profile"] = _ms_since(started)
            cold_start = not profile_doc or not profile_doc.get("watched_ids")
            profile = profile_doc or {}

            mark = time.perf_counter()
            hits, failed = await run_msearch(
                self.es, self.settings, channel_builders.build_channel_queries(profile, request, self.settings),
                request_id)
            timings["msearch"] = _ms_since(mark)

            mark = time.perf_counter()
            candidates = await self._merge(profile, request, hits, request_id)
            timings["merge"] = _ms_since(mark)  # popular-fresh top-ups included
        except (TransportError, ApiError) as error:
            logger.warning("request_id=%s user_id=%s: Elasticsearch failed (%r); answering from the popular "
                           "fallback list", request_id, user_id, error)
            return self._from_popular(request_id, user_id, options, timings, started)

        mark = time.perf_counter()
        ranked = await self.aggregator.rank(request_id, user_id, profile, candidates,
                                            request_time, hash_key=self._hash_key(user_id, options))
        timings["ranking"] = _ms_since(mark)
        timings["scoring"] = ranked.scoring_ms
        timings["dispatch"] = ranked.dispatch_ms

        if ranked.scores is not None:
            scored = sorted(zip(candidates, ranked.scores.tolist()), key=lambda pair: (-pair[1], pair[0].video_id))
        else:
            scored = [(candidate, candidate.fused_score) for candidate in candidates]
        top = scored[: options.k]

        mark = time.perf_counter()
        try:
            titles = await self.titles.get_many(self.es, [candidate.video_id for candidate, _ in top])
        except (TransportError, ApiError) as error:
            logger.warning("request_id=%s: reading titles failed, answering without them: %r", request_id, error)
            titles = {}
        timings["titles"] = _ms_since(mark)

        items = []
        for rank, (candidate, score) in enumerate(top, start=1):
            item: dict[str, Any] = {"video_id": candidate.video_id, "rank": rank, "score": _finite(score),
                                    "title": titles.get(candidate.video_id, "")}
            if options.explain:
                item["sources"] = [{"channel": hit.channel, "rank": hit.rank, "score": _finite(hit.score)}
                                   for hit in candidate.sources]
                item["fused_score"] = _finite(candidate.fused_score)
            items.append(item)

        degraded = ranked.degraded or bool(failed)
        # Without scores the order is the fusion's, so neither the response nor the impressions (future
        # training data) name a model.
        model_version = ranked.model_version if ranked.scores is not None else None
        body = {"request_id": request_id, "user_id": user_id, "model_version": model_version,
                "cold_start": cold_start, "degraded": degraded, "items": items}
        self.impressions.log(request_id, user_id, model_version,
                             ((c.video_id, s, [hit.channel for hit in c.sources]) for c, s in top))
        timings["total"] = _ms_since(started)
        logger.debug("recommendations request_id=%s user_id=%s n=%d timings_ms=%s", request_id, user_id,
                     len(items), timings)
        return Recommendation(body, timings, ranked.workers)

    async def _merge(self, profile: dict[str, Any], request: CandidateRequest,
                     hits: dict[str, list[tuple[str, float]]], request_id: str) -> list[Candidate]:
        excluded = channel_builders.excluded_ids(profile, request)
        cap = merge_cap(request.k, self.settings)
        candidates = fuse(hits, self.settings.candidates_rrf_k, excluded)[:cap]
        wanted = min(request.k, cap)
        for _ in range(MAX_FILL_ROUNDS):
            if len(candidates) >= wanted:
                break
            more = await fill_popular(self.es, self.settings, profile, request,
                                      [candidate.video_id for candidate in candidates],
                                      wanted - len(candidates), request_id)
            if not more:
                break
            hits.setdefault("popular_fresh", []).extend(more)
            candidates = fuse(hits, self.settings.candidates_rrf_k, excluded)[:cap]
        return candidates

    def _hash_key(self, user_id: str, options: RecommendOptions) -> str:
        key = self.settings.worker_hash_key
        value = user_id if key == "user_id" else getattr(options, key)
        return str(value or "")

    async def _shed(self, request_id: str, user_id: str, options: RecommendOptions) -> Recommendation:
        """Serve a request past the in-flight limit from the popular list, minus the profile's exclusions.

        Shedding keeps the latency of the requests already in progress from growing without bound
        when requests arrive faster than Elasticsearch and the scorer serve them.
        """
        started = time.perf_counter()
        self.shed_count += 1
        now = time.monotonic()
        if now - self._last_shed_log >= SHED_LOG_INTERVAL_S:
            self._last_shed_log = now
            logger.warning("request_id=%s user_id=%s shed: %d recommendation requests in progress (limit %d), "
                           "answering from the popular list; %d shed since start, %d of them without the "
                           "profile's exclusions", request_id, user_id, self.inflight,
                           self.settings.max_inflight_recommendations, self.shed_count, self.shed_without_profile)
        excluded = list(options.exclude)
        try:
            response = await self.es.options(request_timeout=SHED_PROFILE_TIMEOUT_S, max_retries=0).get(
                index=self.settings.alias("users"), id=user_id, source_includes=["watched_ids", "not_interested"])
            source = response["_source"]
            excluded += [str(video_id) for video_id in (*source.get("not_interested", ()),
                                                        *source.get("watched_ids", ()))]
        except NotFoundError:
            pass
        except (TransportError, ApiError) as error:
            # Counted and reported in the rate-limited shed warning; one line per request would flood an
            # overloaded service's log.
            self.shed_without_profile += 1
            logger.debug("request_id=%s user_id=%s: profile read of a shed request failed, the popular "
                         "list may hold watched videos: %r", request_id, user_id, error)
        timings = {"shed": 0.0, "profile": _ms_since(started)}
        shed_options = RecommendOptions(k=options.k, language=options.language, category=options.category,
                                        region=options.region, exclude=tuple(excluded), explain=options.explain)
        return self._from_popular(request_id, user_id, shed_options, timings, started)

    def _from_popular(self, request_id: str, user_id: str, options: RecommendOptions,
                      timings: dict[str, float], started: float) -> Recommendation:
        if not self.popular.loaded:
            raise FallbackUnavailable(
                f"Elasticsearch is unavailable and no popular fallback list is loaded (request {request_id})")
        videos = self.popular.pick(options.k, options.exclude, options.language, options.category, options.region)
        count = max(1, len(videos))
        items = []
        for rank, video in enumerate(videos, start=1):
            item: dict[str, Any] = {"video_id": str(video["video_id"]), "rank": rank,
                                    "score": _finite(1.0 - (rank - 1) / count), "title": str(video.get("title") or "")}
            if options.explain:
                item["sources"] = [{"channel": "popular_fallback", "rank": rank, "score": item["score"]}]
            items.append(item)
        self.impressions.log(request_id, user_id, None,
                             ((item["video_id"], item["score"], ["popular_fallback"]) for item in items))
        timings["total"] = _ms_since(started)
        body = {"request_id": request_id, "user_id": user_id, "model_version": None, "cold_start": False,
                "degraded": True, "items": items}
        return Recommendation(body, timings, [])


class FallbackUnavailable(RuntimeError):
    """Elasticsearch failed and there is no popular list to answer from."""


def _ms_since(mark: float) -> float:
    return (time.perf_counter() - mark) * 1000


def _finite(value: float) -> float:
    value = float(value)
    return value if value == value and abs(value) != float("inf") else 0.0


async def start_recommender(app: FastAPI) -> None:
    """Build the serving state on ``app.state``: aggregator (and local scorer), impressions, fallback, titles."""
    import asyncio

    from app.worker import ScorerLoadError, load_warm_scorer

    settings: Settings = app.state.settings
    es: AsyncElasticsearch = app.state.es
    local_scorer = None
    if not settings.worker_urls:
        try:
            local_scorer = await asyncio.to_thread(load_warm_scorer, settings, None)
            logger.info("in-process scorer loaded: model_version=%s", local_scorer.model_version)
        except ScorerLoadError as error:
            logger.warning("no in-process scorer, responses keep the fused order: %s", error)
    aggregator = Aggregator(settings, local_scorer)
    await aggregator.start()

    popular = PopularFallback(settings)
    if not await popular.refresh(es):
        popular.load_from_disk()
    popular.start(es)
    titles = TitleCache(settings)
    titles.put_many(popular.videos)
    preload = asyncio.create_task(titles.preload(es))

    impressions = ImpressionLogger(es, settings)
    impressions.start()
    app.state.aggregator = aggregator
    app.state.popular = popular
    app.state.impressions = impressions
    app.state.recommender = Recommender(settings, es, aggregator, impressions, popular, titles)
    app.state.title_preload = preload


async def stop_recommender(app: FastAPI) -> None:
    """Flush impressions and close the aggregator's connections."""
    app.state.title_preload.cancel()
    await app.state.popular.close()
    await app.state.impressions.close()
    await app.state.aggregator.close()
