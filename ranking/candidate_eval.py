"""Offline evaluation of candidate generation and search (`vidrec evaluate candidates`).

Candidate recall@N: in an evaluation world (:mod:`ranking.world`) each test user
makes one request at their request time. Recall@N is the share of the user's
held-out watches found in the top N. Each channel is measured alone, asking it
for N hits, and the union is the reciprocal-rank-fused top N of all channels.
Means over users carry a percentile bootstrap 95% confidence interval
(users resampled with replacement).

Search quality: the reddit-tomt validation queries whose answer movie is in
ml-latest-small (joined on IMDb id through links.csv) are run through BM25
alone, kNN alone and the hybrid; Recall@10, Recall@100 and MRR (reciprocal rank
of the target movie within the top 100, else 0). With a ranking model, the hybrid's
fused hits are also reranked as `GET /v1/search` reranks them
(:mod:`app.search_rerank`), once per blend weight. The queries are anonymous,
so the model scores them with an empty profile, as the route does. A
diagnostic set of rows gives that profile the query's embedding as its query
vector, which the route does not do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from elasticsearch import AsyncElasticsearch
from tqdm import tqdm

from app.candidates.channels import MAX_QUERY_CHARS, CandidateRequest
from app.candidates.merge import fuse
from app.candidates.retrieve import retrieve_candidates
from app.candidates.search import search_videos
from app.aggregator import Aggregator
from app.candidates.types import CHANNELS
from app.es_client import make_async_client, make_client
from app.search_rerank import blend_hits, score_hits, scoring_window
from app.settings import Settings
from indexing.embed import Embedder
from indexing.movielens import read_links
from ranking.world import World, build_world, delete_world, world_settings

logger = logging.getLogger(__name__)

RECALL_AT = (100, 500, 1000)
SEARCH_MODES = ("bm25", "knn", "hybrid")
RERANK_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
SEARCH_K = 100
# Time the in-process scorer gets per query: the evaluation measures quality, not the serving deadline.
EVALUATION_DEADLINE_MS = 60_000.0
CONCURRENT_REQUESTS = 4
TOMT_TAGS = re.compile(r"^\s*(\[[^\]]*\]\s*)+")
IMDB_ID = re.compile(r"tt\d+")


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, seed: int = 7) -> dict[str, float]:
    """Return the mean of ``values`` and its percentile bootstrap 95% interval (``low``, ``high``)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    return {"mean": float(data.mean()), "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5)), "n": int(data.size)}


def recall_at(ranked: Sequence[str], relevant: set[str], n: int) -> float:
    """Return the share of ``relevant`` ids within the first ``n`` of ``ranked``."""
    return len(relevant.intersection(ranked[:n])) / len(relevant) if relevant else 0.0


async def _user_lists(client: AsyncElasticsearch, world: World, user_id: str, size: int) -> dict[str, list[str]]:
    request = CandidateRequest(k=size // 2, now=world.request_time[user_id],
                               channel_sizes={channel: size for channel in CHANNELS})
    result = await retrieve_candidates(client, world.settings, user_id, request)
    lists = {channel: [video_id for video_id, _ in hits] for channel, hits in result.channel_hits.items()}
    fused = fuse(result.channel_hits, world.settings.candidates_rrf_k)
    lists["union"] = [candidate.video_id for candidate in fused]
    return lists


async def evaluate_recall(world: World, recall_at_n: Sequence[int] = RECALL_AT, max_users: int | None = None,
                          resamples: int = 1000) -> dict[str, Any]:
    """Return recall@N with bootstrap intervals per channel and for the union, over the world's test users."""
    users = sorted(world.test, key=lambda user: (len(user), user))[:max_users]
    size = max(recall_at_n)
    client = make_async_client(world.settings, request_timeout_s=60)
    semaphore = asyncio.Semaphore(CONCURRENT_REQUESTS)

    progress = tqdm(total=len(users), desc=f"recall {world.split}", unit="user")

    async def one(user_id: str) -> dict[str, list[str]]:
        async with semaphore:
            lists = await _user_lists(client, world, user_id, size)
        progress.update(1)
        return lists

    started = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(user) for user in users))
    finally:
        progress.close()
        await client.close()

    rows: dict[str, dict[str, Any]] = {}
    for name in (*CHANNELS, "union"):
        rows[name] = {}
        for n in recall_at_n:
            values = [recall_at(lists.get(name, []), set(world.test[user]), n) for user, lists in zip(users, results)]
            rows[name][str(n)] = bootstrap_ci(values, resamples)
        rows[name]["users_served"] = sum(1 for lists in results if lists.get(name))
    return {"split": world.split, "users": len(users), "cutoff": world.cutoff,
            "test_watches": sum(len(world.test[user]) for user in users), "train_watches": world.train_watches,
            "cf_model_version": world.cf_report.model_version if world.cf_report else None,
            "seconds": time.perf_counter() - started, "recall": rows}


def tomt_queries(data_dir: Path) -> list[dict[str, str]]:
    """Return the reddit-tomt validation queries whose target movie is in ml-latest-small: ``q`` and ``video_id``.

    The query is the post title without its leading ``[TOMT]``-style tags, then the
    post text, cut to the search limit of MAX_QUERY_CHARS characters.
    """
    errors: list = []
    links = read_links(data_dir / "movielens-latest-small" / "links.csv", errors)
    by_imdb = {ids["imdb_id"]: movie_id for movie_id, ids in links.items() if "imdb_id" in ids}
    queries = []
    with (data_dir / "reddit-tomt-movie-queries" / "validation.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            match = IMDB_ID.search(record.get("imdb_url") or "")
            if not match or match.group(0) not in by_imdb:
                continue
            text = f"{TOMT_TAGS.sub('', record.get('title') or '')}\n{record.get('text') or ''}".strip()
            queries.append({"id": record["id"], "q": text[:MAX_QUERY_CHARS], "video_id": by_imdb[match.group(0)]})
    return queries


# Profiles the reranked rows score the anonymous queries with: empty, as `GET /v1/search` does for an
# anonymous search, and with the query's embedding as the profile's query vector (a diagnostic row).
RERANK_PROFILES = ("empty", "query vector")


def rerank_mode(weight: float, profile: str = "empty") -> str:
    name = f"hybrid + rerank w={weight:g}"
    return name if profile == "empty" else f"{name}, {profile} in profile"


class SearchMetrics:
    """Per-query Recall@10, Recall@100 and reciprocal rank (0 past the top 100) of one search mode."""

    def __init__(self) -> None:
        self.recall10: list[float] = []
        self.recall100: list[float] = []
        self.reciprocal: list[float] = []
        self.seconds = 0.0

    def add(self, ranked: Sequence[str], target: str) -> None:
        rank = ranked.index(target) + 1 if target in ranked[:SEARCH_K] else None
        self.recall10.append(1.0 if rank is not None and rank <= 10 else 0.0)
        self.recall100.append(1.0 if rank is not None else 0.0)
        self.reciprocal.append(1.0 / rank if rank is not None else 0.0)

    def row(self, resamples: int) -> dict[str, Any]:
        return {"recall@10": bootstrap_ci(self.recall10, resamples),
                "recall@100": bootstrap_ci(self.recall100, resamples),
                "mrr": bootstrap_ci(self.reciprocal, resamples), "seconds": self.seconds}

    def paired_difference(self, baseline: "SearchMetrics", resamples: int) -> dict[str, Any]:
        """Return the mean per-query difference from ``baseline`` (same queries, same order) with its
        bootstrap interval, for Recall@10 and MRR."""
        return {"recall@10": bootstrap_ci(np.subtract(self.recall10, baseline.recall10), resamples),
                "mrr": bootstrap_ci(np.subtract(self.reciprocal, baseline.reciprocal), resamples)}


def _rerank_profile(profile: str, query_vector: Any) -> dict[str, Any]:
    if profile == "query vector" and query_vector is not None:
        return {"query_vector": [float(value) for value in query_vector]}
    return {}


async def evaluate_search(settings: Settings, data_dir: Path, embedder: Embedder, resamples: int = 1000,
                          scorer: Any = None, rerank_weights: Sequence[float] = RERANK_WEIGHTS) -> dict[str, Any]:
    """Return Recall@10, Recall@100 and MRR with bootstrap intervals per search mode on reddit-tomt.

    With ``scorer`` (a loaded ranking model), the hybrid's fused hits are
    reranked at each of ``rerank_weights``, once per profile of
    RERANK_PROFILES. The model scores each query's hits once per profile,
    in-process through the aggregator, and every weight blends the same
    scores, so a rerank row's ``seconds`` is the scoring time alone. Each
    rerank row also has ``vs_hybrid``: the paired per-query difference from the
    hybrid with its bootstrap interval. A query whose scoring is degraded keeps
    the fused order in the rerank rows, and ``rerank_degraded`` counts them.
    """
    queries = tomt_queries(data_dir)
    client = make_async_client(settings, request_timeout_s=60)
    ranker = None
    if scorer is not None:
        ranker = Aggregator(settings.model_copy(update={"worker_urls": [],
                                                        "ranking_deadline_ms": EVALUATION_DEADLINE_MS}), scorer)
    rows: dict[str, Any] = {}
    degraded = 0
    try:
        for mode in SEARCH_MODES:
            metrics = SearchMetrics()
            reranked: dict[tuple[str, float], SearchMetrics] = {}
            if ranker is not None and mode == "hybrid":
                reranked = {(profile, weight): SearchMetrics()
                            for profile in RERANK_PROFILES for weight in rerank_weights}
            for query in tqdm(queries, desc=f"search {mode}", unit="query"):
                started = time.perf_counter()
                result = await search_videos(client, settings, embedder, query["q"], k=SEARCH_K, mode=mode)
                metrics.seconds += time.perf_counter() - started
                metrics.add([item.video_id for item in result.items], query["video_id"])

                window = scoring_window(len(result.fused), SEARCH_K, settings.search_rerank_window)
                for profile in RERANK_PROFILES if reranked else ():
                    started = time.perf_counter()
                    scores, _ = await score_hits(ranker, result.fused[:window],
                                                 _rerank_profile(profile, result.query_vector),
                                                 result.request_id, None, settings.now())
                    scoring_s = time.perf_counter() - started
                    degraded += scores is None
                    for weight in rerank_weights:
                        if scores is None:
                            ranked = [item.video_id for item in result.items]
                        else:
                            hits = blend_hits(result.fused, scores, weight, settings.candidates_rrf_k, SEARCH_K)
                            ranked = [hit.candidate.video_id for hit in hits]
                        reranked[profile, weight].add(ranked, query["video_id"])
                        reranked[profile, weight].seconds += scoring_s
            rows[mode] = metrics.row(resamples)
            for (profile, weight), weight_metrics in reranked.items():
                rows[rerank_mode(weight, profile)] = dict(weight_metrics.row(resamples),
                                                          vs_hybrid=weight_metrics.paired_difference(metrics,
                                                                                                     resamples))
    finally:
        await client.close()
    results: dict[str, Any] = {"queries": len(queries), "modes": rows}
    if scorer is not None:
        results.update({"model_version": scorer.model_version, "rerank_window": settings.search_rerank_window,
                        "rerank_degraded": degraded, "anonymous": True,
                        "request_time": settings.now().isoformat() if settings.as_of else "wall clock"})
    return results


def hardware() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "processor": platform.processor() or platform.uname().machine}


def load_search_scorer(settings: Settings) -> tuple[Any, str | None]:
    """Load the configured ranking model for the search rerank rows; return (scorer, None) or (None, error)."""
    from app.worker import ScorerLoadError, load_warm_scorer

    try:
        return load_warm_scorer(settings, None), None
    except ScorerLoadError as error:
        logger.warning("search rerank rows left out: %s", error)
        return None, str(error)


def evaluate_candidates(settings: Settings, data_dir: Path, splits: Sequence[str] = ("per_user", "global"),
                        bootstrap: int = 1000, max_users: int | None = None, search: bool = True,
                        keep: bool = False, output: Path | None = None, recall: bool = True,
                        rerank: bool = True) -> dict[str, Any]:
    """Build each split's world, measure candidate recall (and search quality once), and return the tables.

    Without ``recall`` no world is built, and search quality is measured on the
    indices of ``settings.index_prefix``, which are only read. With ``rerank``,
    the search rows include the hybrid reranked by the model that
    ``settings.ranker_version`` names. With ``output``, the results so far are
    written there as JSON after each step.
    """
    embedder = Embedder(settings, show_progress=False)
    results: dict[str, Any] = {"hardware": hardware(), "bootstrap_resamples": bootstrap, "recall": {}}
    scorer = None
    if search and rerank:
        scorer, error = load_search_scorer(settings)
        if error:
            results["search_rerank_error"] = error
    if not recall:
        if search:
            results["search"] = asyncio.run(evaluate_search(settings, data_dir, embedder, bootstrap, scorer))
            results["search"]["index_prefix"] = settings.index_prefix
            _save(results, output)
        return results

    client = make_client(settings, request_timeout_s=120)
    try:
        for split in splits:
            world = build_world(client, settings, data_dir / "movielens-latest-small", split, embedder=embedder,
                                reuse=keep, show_progress=False)
            try:
                results["recall"][split] = asyncio.run(evaluate_recall(world, max_users=max_users,
                                                                       resamples=bootstrap))
                results["recall"][split]["build_seconds"] = world.build_seconds
                _save(results, output)
                if search and "search" not in results:
                    results["search"] = asyncio.run(evaluate_search(world.settings, data_dir, embedder, bootstrap,
                                                                    scorer))
                    results["search"]["index_prefix"] = world.settings.index_prefix
                    _save(results, output)
            finally:
                if not keep:
                    delete_world(client, world_settings(settings, split))
    finally:
        client.close()
    return results


def _save(results: dict[str, Any], output: Path | None) -> None:
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")


def _cell(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def format_tables(results: dict[str, Any]) -> str:
    """Return the recall and search tables as Markdown text."""
    lines: list[str] = []
    for split, table in results.get("recall", {}).items():
        ns = [key for key in table["recall"]["union"] if key.isdigit()]
        lines.append(f"\nCandidate recall@N, {split} split: {table['users']} users, {table['test_watches']} "
                     f"held-out watches, mean [95% bootstrap CI]")
        lines.append("| channel | " + " | ".join(f"recall@{n}" for n in ns) + " | users served |")
        lines.append("|---|" + "---|" * (len(ns) + 1))
        for name, row in table["recall"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(row[n]) for n in ns) + f" | {row['users_served']} |")
    if "search" in results:
        search = results["search"]
        lines.append(f"\nSearch on reddit-tomt validation queries joined to ml-latest-small ({search['queries']} "
                     "queries), mean [95% bootstrap CI]")
        if "model_version" in search:
            lines.append(f"Rerank rows: model {search['model_version']}, anonymous queries, window "
                         f"{search['rerank_window']}, request time {search.get('request_time', 'wall clock')}, "
                         f"{search['rerank_degraded']} scorings degraded. The last two columns are paired per-query "
                         "differences from the hybrid.")
        lines.append("| mode | Recall@10 | Recall@100 | MRR | Recall@10 - hybrid | MRR - hybrid |")
        lines.append("|---|---|---|---|---|---|")
        for mode, row in search["modes"].items():
            paired = row.get("vs_hybrid")
            differences = f"{_cell(paired['recall@10'])} | {_cell(paired['mrr'])}" if paired else " | "
            lines.append(f"| {mode} | {_cell(row['recall@10'])} | {_cell(row['recall@100'])} | {_cell(row['mrr'])} "
                         f"| {differences} |")
    if "search_rerank_error" in results:
        lines.append(f"Rerank rows left out: {results['search_rerank_error']}")
    return "\n".join(lines)
