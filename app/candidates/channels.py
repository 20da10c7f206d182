"""Query builders for the candidate channels, one pure function per channel.

Each builder takes the user's profile (the ``users`` document source, or an
empty dict for a user never seen), the request options and the settings, and
returns one ``_msearch`` body, or None when the profile lacks the channel's
input (no history vector, no factor, no recent queries). Bodies use only the
server core's query DSL: ``knn``, ``bool``, ``multi_match`` and
``function_score`` with a decay function, so no scripts and no server-side RRF.

Every filter (language, category, region, the user's age against a video's
``min_age``, availability, excluded ids) sits inside the kNN ``filter`` and
the query's ``bool`` filter, never in a ``post_filter``, so each channel returns
its full size of eligible videos. Hits carry scores and the ``video_id``
doc value only: no ``_id`` and no ``_source``, because reading the stored
``_id`` of 300 hits took about half of a kNN channel's time (6 of 13 ms per
search, ml-latest-small on the 2-core development machine).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from app.candidates.types import CHANNELS
from app.settings import Settings

# Longest query text sent to Elasticsearch, in characters.
MAX_QUERY_CHARS = 2000

# Largest k and num_candidates a kNN search accepts (Elasticsearch 9.2).
MAX_KNN_CANDIDATES = 10_000

TEXT_FIELDS = ("title^3", "tags^2", "description")


@dataclass(frozen=True)
class CandidateRequest:
    """Options of one candidate request.

    ``k`` is the number of results the caller wants; the merge keeps at least
    twice that many. ``region`` overrides the profile's region. ``now`` is the
    origin of popular-fresh's recency decay (an ISO date or date math; the
    evaluation sets it to the end of its training window). ``channel_sizes``
    overrides the per-channel sizes from Settings.
    """

    k: int = 100
    language: str | None = None
    category: str | None = None
    region: str | None = None
    exclude_ids: tuple[str, ...] = ()
    now: str = "now"
    channel_sizes: Mapping[str, int] = field(default_factory=dict)


def channel_size(channel: str, request: CandidateRequest, settings: Settings) -> int:
    """Return the number of hits ``channel`` asks for."""
    if channel in request.channel_sizes:
        return int(request.channel_sizes[channel])
    return {
        "history_content": settings.candidates_history_size,
        "collaborative": settings.candidates_collaborative_size,
        "query_text": settings.candidates_query_text_size,
        "query_semantic": settings.candidates_query_semantic_size,
        "popular_fresh": settings.candidates_popular_size,
    }[channel]


def excluded_ids(profile: Mapping[str, Any], request: CandidateRequest) -> list[str]:
    """Return every id the request must not return, caller's first, then not-interested, then watched.

    Watched ids come most recent first, so when the list is cut for the query
    filter, the ids left for the application are the oldest watches.
    """
    # dict.fromkeys keeps the first occurrence of each id, in order. This runs several times per request
    # on profiles with thousands of watched ids, so it stays a single C-level pass.
    return list(dict.fromkeys(map(str, itertools.chain(
        request.exclude_ids, profile.get("not_interested", ()), profile.get("watched_ids", ())))))


def split_exclusions(profile: Mapping[str, Any], request: CandidateRequest,
                     settings: Settings) -> tuple[list[str], list[str]]:
    """Split the excluded ids into (sent in the query filter, removed in the application)."""
    ids = excluded_ids(profile, request)
    limit = settings.candidates_exclude_in_query_max
    return ids[:limit], ids[limit:]


def eligibility_filter(profile: Mapping[str, Any], request: CandidateRequest, settings: Settings,
                       extra_excluded: Sequence[str] = ()) -> dict[str, Any]:
    """Return the bool query every channel's hits must match.

    A video without ``regions_allowed`` plays everywhere; one without
    ``min_age`` has no age limit; one without ``available`` counts as available.
    """
    filters: list[dict[str, Any]] = []
    if request.language:
        filters.append({"term": {"language": request.language}})
    if request.category:
        filters.append({"term": {"category": request.category}})

    region = request.region or profile.get("region")
    if region:
        filters.append({"bool": {"should": [
            {"term": {"regions_allowed": region}},
            {"bool": {"must_not": [{"exists": {"field": "regions_allowed"}}]}},
        ], "minimum_should_match": 1}})

    age = profile.get("age")
    age = settings.age_when_unknown if age is None else int(age)
    filters.append({"bool": {"should": [
        {"range": {"min_age": {"lte": age}}},
        {"bool": {"must_not": [{"exists": {"field": "min_age"}}]}},
    ], "minimum_should_match": 1}})

    must_not: list[dict[str, Any]] = [{"term": {"available": False}}]
    in_query, _ = split_exclusions(profile, request, settings)
    ids = [*in_query, *extra_excluded]
    if ids:
        must_not.append({"terms": {"video_id": ids}})
    return {"bool": {"filter": filters, "must_not": must_not}}


def ids_only(body: dict[str, Any]) -> dict[str, Any]:
    """Make ``body``'s hits carry only their score and the ``video_id`` doc value (see ``hit_id``)."""
    body.pop("_source", None)
    body["stored_fields"] = "_none_"
    body["docvalue_fields"] = ["video_id"]
    return body


def hit_id(hit: Mapping[str, Any]) -> str:
    """Return a hit's video id: its ``_id``, or the ``video_id`` doc value of an ``ids_only`` body."""
    if "_id" in hit:
        return str(hit["_id"])
    return str(hit["fields"]["video_id"][0])


def knn_body(vector: Sequence[float], vector_field: str, size: int, settings: Settings,
             filter_query: dict[str, Any], over_fetch: int = 0) -> dict[str, Any]:
    """Return a kNN search body for ``size`` hits plus ``over_fetch`` extra, within the kNN limits."""
    k = min(size + over_fetch, MAX_KNN_CANDIDATES)
    num_candidates = min(max(int(k * settings.candidates_num_candidates_factor), k), MAX_KNN_CANDIDATES)
    return {
        "knn": {
            "field": vector_field,
            "query_vector": [float(x) for x in vector],
            "k": k,
            "num_candidates": num_candidates,
            "filter": filter_query,
        },
        "size": k,
        "_source": False,
        "track_total_hits": False,
    }


def _over_fetch(profile: Mapping[str, Any], request: CandidateRequest, settings: Settings) -> int:
    _, in_application = split_exclusions(profile, request, settings)
    return len(in_application)


def history_content(profile: Mapping[str, Any], request: CandidateRequest, settings: Settings) -> dict | None:
    """kNN on ``text_embedding`` with the profile's recency-weighted history vector."""
    vector = profile.get("history_vector")
    if not vector:
        return None
    return ids_only(knn_body(vector, "text_embedding", channel_size("history_content", request, settings), settings,
                             eligibility_filter(profile, request, settings), _over_fetch(profile, request, settings)))


def collaborative(profile: Mapping[str, Any], request: CandidateRequest, settings: Settings) -> dict | None:
    """kNN on ``cf_embedding`` with the user's factor, among videos of the same factor model version."""
    vector = profile.get("cf_embedding")
    if not vector:
        return None
    filter_query = eligibility_filter(profile, request, settings)
    version = profile.get("cf_model_version")
    if version:
        # Factors of two trainings live in different spaces, so their inner product means nothing.
        filter_query["bool"]["filter"].append({"term": {"cf_model_version": version}})
    return ids_only(knn_body(vector, "cf_embedding", channel_size("collaborative", request, settings), settings,
                             filter_query, _over_fetch(profile, request, settings)))


def recent_query_texts(profile: Mapping[str, Any], settings: Settings) -> list[str]:
    """Return the profile's most recent non-empty query texts, each cut to MAX_QUERY_CHARS."""
    texts = []
    for query in profile.get("recent_queries", ())[: settings.candidates_recent_queries]:
        text = str(query.get("text") or "").strip()
        if text:
            texts.append(text[:MAX_QUERY_CHARS])
    return texts


def query_text(profile: Mapping[str, Any], request: CandidateRequest, settings: Settings) -> dict | None:
    """BM25 ``multi_match`` over title^3, tags^2 and description, one clause per recent query."""
    texts = recent_query_texts(profile, settings)
    if not texts:
        return None
    size = min(channel_size("query_text", request, settings) + _over_fetch(profile, request, settings),
               MAX_KNN_CANDIDATES)
    query = eligibility_filter(profile, request, settings)
    query["bool"]["should"] = [
        {"multi_match": {"query": text, "fields": list(TEXT_FIELDS), "type": "best_fields"}} for text in texts
    ]
    query["bool"]["minimum_should_match"] = 1
    return ids_only({"query": query, "size": size, "track_total_hits": False})


def query_semantic(profile: Mapping[str, Any], request: CandidateRequest, settings: Settings) -> dict | None:
    """kNN on ``text_embedding`` with the profile's mean recent-query vector."""
    vector = profile.get("query_vector")
    if not vector:
        vectors = [query["vector"] for query in profile.get("recent_queries", ()) if query.get("vector")]
        if not vectors:
            return None
        vector = [sum(values) / len(vectors) for values in zip(*vectors)]
    return ids_only(knn_body(vector, "text_embedding", channel_size("query_semantic", request, settings), settings,
                             eligibility_filter(profile, request, settings), _over_fetch(profile, request, settings)))


def popular_fresh(profile: Mapping[str, Any], request: CandidateRequest, settings: Settings,
                  extra_excluded: Sequence[str] = (), size: int | None = None) -> dict:
    """Popularity times an exponential recency decay on ``published_at``; never None.

    The score is ``log10(2 + popularity) * 0.5 ** (age_days / popular_fresh_scale_days)``.
    A video without ``published_at`` gets no decay (Elasticsearch's decay
    functions return 1 for a missing field). Hits are in score order and equal
    scores keep index order: a ``video_id`` tie-break sort cost 3.4 of 8 ms per
    search on ml-latest-small, so the merge breaks fused-score ties by id instead.
    """
    if size is None:
        size = channel_size("popular_fresh", request, settings) + _over_fetch(profile, request, settings)
    return ids_only({
        "query": {"function_score": {
            "query": eligibility_filter(profile, request, settings, extra_excluded),
            "functions": [
                {"field_value_factor": {"field": "popularity", "modifier": "log2p", "missing": 0}},
                {"exp": {"published_at": {
                    "origin": request.now,
                    "scale": f"{settings.popular_fresh_scale_days:g}d",
                    "decay": 0.5,
                }}},
            ],
            "score_mode": "multiply",
            "boost_mode": "replace",
        }},
        "size": min(size, MAX_KNN_CANDIDATES),
        "track_total_hits": False,
    })


BUILDERS = {
    "history_content": history_content,
    "collaborative": collaborative,
    "query_text": query_text,
    "query_semantic": query_semantic,
    "popular_fresh": popular_fresh,
}
assert tuple(BUILDERS) == CHANNELS


def build_channel_queries(profile: Mapping[str, Any], request: CandidateRequest, settings: Settings,
                          channels: Sequence[str] = CHANNELS) -> list[tuple[str, dict]]:
    """Return (channel, body) for each requested channel that has its input in the profile."""
    queries = []
    for channel in channels:
        if channel not in BUILDERS:
            raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
        body = BUILDERS[channel](profile, request, settings)
        if body is not None:
            queries.append((channel, body))
    return queries
