"""Personalized search: BM25 and kNN on the query's embedding, fused with reciprocal rank fusion.

The query text reaches Elasticsearch only inside ``multi_match``, which
analyzes it as plain text, so characters such as ``/``, ``(``, ``"``, ``\\`` and
``+`` carry no query syntax. With a known user, a third list ranks the videos
that match the query text by closeness to the user's history vector, and the
user's age, region and not-interested marks filter every list. Watched videos
stay searchable. ``app.search_rerank`` reranks the fused hits with the ranking
model.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

import numpy as np
from elasticsearch import AsyncElasticsearch

from app.candidates.channels import MAX_QUERY_CHARS, TEXT_FIELDS, CandidateRequest, eligibility_filter, knn_body
from app.candidates.merge import fuse
from app.candidates.retrieve import fetch_profile, read_whole_profile
from app.candidates.types import Candidate
from app.settings import Settings

logger = logging.getLogger(__name__)

SearchMode = Literal["bm25", "knn", "hybrid"]

# Weight of the personal list in the fusion; the query's own lists weigh 1.
PERSONAL_WEIGHT = 0.5


class QueryEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class SearchResult:
    """Fused search hits (``Candidate.sources`` name the lists: bm25, knn, personal) and titles by id.

    ``items`` is the top k of ``fused``, the whole fused list. ``profile`` is the
    profile the search read ({} when anonymous or unknown). ``query_vector`` is
    the query's embedding, None when the search ran without one.
    """

    request_id: str
    user_id: str | None
    cold_start: bool
    degraded: bool
    items: list[Candidate]
    titles: dict[str, str] = field(default_factory=dict)
    took_ms: float = 0.0
    fused: list[Candidate] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    query_vector: np.ndarray | None = None


def search_filter(profile: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Return the eligibility filter of a search: the candidate filter without excluding watched videos."""
    searchable = {key: value for key, value in profile.items() if key != "watched_ids"}
    return eligibility_filter(searchable, CandidateRequest(), settings)


def text_body(q: str, size: int, filter_query: dict[str, Any]) -> dict[str, Any]:
    """Return a BM25 body: ``multi_match`` on title^3, tags^2, description inside a filtered bool."""
    query = {"bool": {**filter_query["bool"],
                      "must": [{"multi_match": {"query": q, "fields": list(TEXT_FIELDS), "type": "best_fields"}}]}}
    return {"query": query, "size": size, "_source": ["title"], "track_total_hits": False}


def vector_body(vector: Sequence[float], size: int, settings: Settings, filter_query: dict[str, Any]) -> dict[str, Any]:
    """Return a kNN body on ``text_embedding`` that also returns each hit's title."""
    body = knn_body(vector, "text_embedding", size, settings, filter_query)
    body["_source"] = ["title"]
    return body


def personal_body(q: str, history_vector: Sequence[float], size: int, settings: Settings,
                  filter_query: dict[str, Any]) -> dict[str, Any]:
    """Return a kNN body on the user's history vector among the videos that match the query text."""
    matching = {"bool": {**filter_query["bool"], "must": [
        {"multi_match": {"query": q, "fields": list(TEXT_FIELDS), "type": "best_fields"}}]}}
    return vector_body(history_vector, size, settings, matching)


def check_query(q: str) -> str:
    """Return ``q`` stripped; raise ValueError when it is empty or longer than MAX_QUERY_CHARS."""
    text = q.strip()
    if not text:
        raise ValueError("q must contain at least one non-space character")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"q has {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    return text


async def search_videos(client: AsyncElasticsearch, settings: Settings, encoder: QueryEncoder | None, q: str,
                        k: int = 10, user_id: str | None = None, mode: SearchMode = "hybrid",
                        request_id: str | None = None, window: int | None = None,
                        whole_profile: bool = False) -> SearchResult:
    """Return the top ``k`` videos for ``q``; ``mode`` picks BM25 alone, kNN alone or both fused.

    Each list fetches ``window`` hits (default max(2k, 100)) before the fusion.
    Without an encoder, or when encoding fails, hybrid search falls back to BM25
    and the result is marked degraded. With ``whole_profile`` the user's whole
    profile is read, as the ranking model needs it to rerank the hits.
    """
    text = check_query(q)
    request_id = request_id or uuid.uuid4().hex
    started = time.perf_counter()
    window = window or min(max(2 * k, 100), 1000)

    profile: dict[str, Any] = {}
    if user_id is not None:
        read = read_whole_profile if whole_profile else fetch_profile
        profile = await read(client, settings, user_id) or {}
    filter_query = search_filter(profile, settings)

    degraded = False
    vector = None
    if mode in ("knn", "hybrid"):
        try:
            if encoder is None:
                raise RuntimeError("no query encoder is loaded")
            vector = (await asyncio.to_thread(encoder.encode, [text]))[0]
        except Exception as error:  # the model is optional at serving time because BM25 still returns results
            if mode == "knn":
                raise
            logger.warning("query embedding failed for request %s, returning BM25 results only: %s", request_id, error)
            degraded = True

    lists: list[tuple[str, dict[str, Any]]] = []
    if mode in ("bm25", "hybrid"):
        lists.append(("bm25", text_body(text, window, filter_query)))
    if vector is not None:
        lists.append(("knn", vector_body(vector, window, settings, filter_query)))
    if mode == "hybrid" and profile.get("history_vector"):
        lists.append(("personal", personal_body(text, profile["history_vector"], window, settings, filter_query)))

    searches: list[dict[str, Any]] = []
    for _, body in lists:
        searches.extend(({}, body))
    response = await client.msearch(index=settings.alias("videos"), searches=searches)

    ranked: dict[str, list[tuple[str, float]]] = {}
    titles: dict[str, str] = {}
    for (name, _), item in zip(lists, response["responses"]):
        if "error" in item:
            degraded = True
            logger.warning("search list %s failed for request %s: %s", name, request_id, item["error"])
            continue
        ranked[name] = []
        for hit in item["hits"]["hits"]:
            ranked[name].append((hit["_id"], float(hit["_score"] or 0.0)))
            titles.setdefault(hit["_id"], (hit.get("_source") or {}).get("title", ""))

    fused = fuse(ranked, settings.candidates_rrf_k, weights={"personal": PERSONAL_WEIGHT})
    return SearchResult(request_id=request_id, user_id=user_id, cold_start=user_id is not None and not profile,
                        degraded=degraded, items=fused[:k], titles=titles,
                        took_ms=(time.perf_counter() - started) * 1000, fused=fused, profile=profile,
                        query_vector=vector)
