"""Benchmark: excluding a user's watched videos inside the kNN filter or after over-fetching.

Generates a synthetic catalog of clustered unit vectors (default 100,000 videos x
384 dims in 200 clusters) and indexes it with the real ``videos`` mapping
(int8 HNSW, cosine) under its own prefix. For watch histories of 10, 1,000 and
10,000 videos it compares:

- filtered: one kNN search with ``must_not: terms video_id [history]`` inside
  the kNN ``filter``;
- over-fetch: kNN without the id filter, removing watched ids in the
  application, doubling k (from 2 x wanted, at most 10,000) until ``wanted``
  eligible videos remain.

A user's history is drawn from a few preferred clusters and the query vector
is the normalized mean of the history's vectors, as the history-content
channel does, so the nearest videos are mostly already watched. Each result
is checked against the exact top ``wanted`` eligible videos by brute force
(recall) and for the count it returned. The index is deleted at the end
unless ``--keep``.

Run: python bench/exclusion.py [--videos 100000] [--queries 30] [--keep]
Prints a table and writes bench/results/exclusion.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from elasticsearch import Elasticsearch
from elasticsearch.helpers import streaming_bulk
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.es_client import make_client  # noqa: E402
from app.settings import load_settings  # noqa: E402
from indexing import indices  # noqa: E402

HISTORIES = (10, 1000, 10_000)
MAX_K = 10_000


def make_catalog(videos: int, dims: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (unit vectors (videos, dims) float32, cluster of each video)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dims)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    assignment = rng.integers(0, clusters, size=videos)
    vectors = centers[assignment] + rng.normal(scale=0.6 / np.sqrt(dims), size=(videos, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), assignment


def index_catalog(client: Elasticsearch, settings, vectors: np.ndarray) -> float:
    """Index the catalog and return docs per second."""
    alias = settings.alias("videos")
    index = indices.create_all(client, settings, names=("videos",))[0][1]
    client.indices.put_settings(index=index, settings={"index": {"refresh_interval": "-1"}})

    def actions():
        for number, vector in enumerate(vectors):
            yield {"_index": alias, "_id": f"v{number}",
                   "_source": {"video_id": f"v{number}", "available": True, "text_embedding": vector.tolist()}}

    started = time.perf_counter()
    with tqdm(total=len(vectors), desc="indexing", unit="doc") as progress:
        for ok, item in streaming_bulk(client, actions(), chunk_size=1000, max_retries=5, raise_on_error=True):
            progress.update(1)
    client.indices.put_settings(index=index, settings={"index": {"refresh_interval": None}})
    client.indices.refresh(index=index)
    return len(vectors) / (time.perf_counter() - started)


def make_user(vectors: np.ndarray, assignment: np.ndarray, history: int, rng: np.random.Generator):
    """Return (history ids as ints, query vector): history from a few preferred clusters, query their mean."""
    per_cluster = np.bincount(assignment).mean()
    clusters = assignment.max() + 1
    preferred = rng.choice(clusters, size=min(clusters, max(2, int(np.ceil(history / per_cluster * 2)))),
                           replace=False)
    pool = np.flatnonzero(np.isin(assignment, preferred))
    ids = rng.choice(pool, size=min(history, len(pool)), replace=False)
    query = vectors[ids].mean(axis=0)
    return ids, query / np.linalg.norm(query)


def exact_top(vectors: np.ndarray, query: np.ndarray, excluded: np.ndarray, wanted: int) -> set[str]:
    scores = vectors @ query
    scores[excluded] = -np.inf
    return {f"v{i}" for i in np.argpartition(-scores, wanted)[:wanted]}


def knn(client, alias, query, k, filter_query=None):
    body = {"field": "text_embedding", "query_vector": query.tolist(), "k": k,
            "num_candidates": min(max(2 * k, k), MAX_K)}
    if filter_query is not None:
        body["filter"] = filter_query
    response = client.search(index=alias, knn=body, size=k, source=False, track_total_hits=False)
    return [hit["_id"] for hit in response["hits"]["hits"]]


def filtered(client, alias, query, history_ids, wanted):
    hits = knn(client, alias, query, wanted, {"bool": {"must_not": [{"terms": {"video_id": history_ids}}]}})
    return hits, 1


def over_fetch(client, alias, query, history_ids, wanted):
    excluded = set(history_ids)
    k = min(2 * wanted, MAX_K)
    rounds = 0
    while True:
        rounds += 1
        hits = [video_id for video_id in knn(client, alias, query, k) if video_id not in excluded]
        if len(hits) >= wanted or k >= MAX_K:
            return hits[:wanted], rounds
        k = min(2 * k, MAX_K)


def measure(client, alias, vectors, assignment, history, queries, wanted, seed):
    rng = np.random.default_rng(seed + history)
    rows = {}
    users = [make_user(vectors, assignment, history, rng) for _ in range(queries)]
    for name, strategy in (("filtered", filtered), ("over_fetch", over_fetch)):
        latencies, recalls, short, rounds = [], [], 0, []
        for ids, query in users[:3]:  # warm-up
            strategy(client, alias, query, [f"v{i}" for i in ids], wanted)
        for ids, query in users:
            history_ids = [f"v{i}" for i in ids]
            started = time.perf_counter()
            hits, used_rounds = strategy(client, alias, query, history_ids, wanted)
            latencies.append((time.perf_counter() - started) * 1000)
            rounds.append(used_rounds)
            short += len(hits) < wanted
            recalls.append(len(exact_top(vectors, query, ids, wanted) & set(hits)) / wanted)
            assert not set(hits) & set(history_ids), f"{name} returned a watched video"
        latencies.sort()
        rows[name] = {
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "mean_rounds": float(np.mean(rounds)), "short_results": short,
            "recall_vs_exact": float(np.mean(recalls)),
        }
    rows["over_fetch"]["p50_ratio_to_filtered"] = rows["over_fetch"]["p50_ms"] / rows["filtered"]["p50_ms"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--queries", type=int, default=30, help="users per history length")
    parser.add_argument("--wanted", type=int, default=300, help="candidates a request needs (default 300)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the index (and reuse it when it exists)")
    parser.add_argument("--output", type=Path, default=Path("bench/results/exclusion.json"))
    args = parser.parse_args()

    settings = load_settings(index_prefix=os.environ.get("VIDREC_INDEX_PREFIX", "vidrec-") + "bench-exclusion-",
                             embedding_dims=args.dims)
    client = make_client(settings, request_timeout_s=300)
    vectors, assignment = make_catalog(args.videos, args.dims, args.clusters, args.seed)
    alias = settings.alias("videos")
    docs_per_s = None
    existing = indices.concrete_indices(client, alias)
    if not (args.keep and existing and client.count(index=alias)["count"] == args.videos):
        indices.delete_all(client, settings)
        docs_per_s = index_catalog(client, settings, vectors)
    segments = len(client.cat.segments(index=alias, format="json"))

    results = {"videos": args.videos, "dims": args.dims, "clusters": args.clusters, "wanted": args.wanted,
               "queries_per_history": args.queries, "index_docs_per_s": docs_per_s, "segments": segments,
               "hardware": {"cpus": os.cpu_count(), "machine": platform.machine(),
                            "python": platform.python_version()},
               "histories": {}}
    try:
        for history in HISTORIES:
            results["histories"][str(history)] = measure(client, alias, vectors, assignment, history, args.queries,
                                                         args.wanted, args.seed)
    finally:
        if not args.keep:
            indices.delete_all(client, settings)

    print(f"{args.videos} videos x {args.dims} dims, {args.clusters} clusters, {segments} segments, "
          f"{args.wanted} wanted, {args.queries} queries per row")
    print("| history | strategy | p50 ms | p99 ms | rounds | short results | recall vs exact |")
    print("|---|---|---|---|---|---|---|")
    for history, rows in results["histories"].items():
        for name, row in rows.items():
            print(f"| {history} | {name} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['mean_rounds']:.1f} | "
                  f"{row['short_results']} | {row['recall_vs_exact']:.3f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
