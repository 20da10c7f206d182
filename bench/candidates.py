"""Benchmark: candidate-generation latency for real ml-latest-small users.

Builds (or reuses) the per-user evaluation world of ml-latest-small, then sends
``--requests`` candidate requests one after another, each for a user drawn at
random from the world's users, with the serving settings (channel sizes,
cap N = 500, k = 100). A request is the whole of ``retrieve_candidates``: the
profile GET, the one ``_msearch`` of all channels, the merge and any
popular-fresh top-up. The baseline, measured in the same run on the same
users, is the profile GET alone (one round trip to the node).

Run: python bench/candidates.py [--requests 2000] [--data-dir ../shared/data] [--keep]
Prints a table and writes bench/results/candidates_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.candidates.channels import CandidateRequest  # noqa: E402
from app.candidates.retrieve import fetch_profile, retrieve_candidates  # noqa: E402
from app.es_client import make_async_client, make_client  # noqa: E402
from app.settings import load_settings  # noqa: E402
from ranking.world import build_world, delete_world  # noqa: E402


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def run(world, users: list[str], requests: int, k: int, seed: int) -> dict:
    rng = random.Random(seed)
    order = [rng.choice(users) for _ in range(requests)]
    client = make_async_client(world.settings, request_timeout_s=60)
    timings: dict[str, list[float]] = {"profile_get": [], "retrieve_candidates": []}
    sizes: list[int] = []
    try:
        for user in order[:20]:  # warm-up: connections, caches
            await retrieve_candidates(client, world.settings, user, CandidateRequest(k=k))
        for user in tqdm(order, desc="requests", unit="request"):
            started = time.perf_counter()
            await fetch_profile(client, world.settings, user)
            timings["profile_get"].append((time.perf_counter() - started) * 1000)

            started = time.perf_counter()
            result = await retrieve_candidates(client, world.settings, user,
                                               CandidateRequest(k=k, now=world.request_time.get(user, "now")))
            timings["retrieve_candidates"].append((time.perf_counter() - started) * 1000)
            sizes.append(len(result.candidates))
    finally:
        await client.close()

    rows = {}
    for name, values in timings.items():
        values.sort()
        rows[name] = {"p50_ms": statistics.median(values), "p90_ms": percentile(values, 0.90),
                      "p99_ms": percentile(values, 0.99), "mean_ms": statistics.fmean(values), "n": len(values)}
    baseline = rows["profile_get"]["p50_ms"]
    for row in rows.values():
        row["p50_ratio_to_profile_get"] = row["p50_ms"] / baseline
    rows["retrieve_candidates"]["candidates_median"] = statistics.median(sizes)
    rows["retrieve_candidates"]["candidates_min"] = min(sizes)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--k", type=int, default=100, help="results the request asks for (default 100)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("VIDREC_DATA_DIR", "../shared/data")))
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the world's indices (and reuse them next time)")
    parser.add_argument("--output", type=Path, default=Path("bench/results/candidates_latency.json"))
    args = parser.parse_args()

    settings = load_settings()
    client = make_client(settings, request_timeout_s=120)
    world = build_world(client, settings, args.data_dir / "movielens-latest-small", "per_user", reuse=True,
                        show_progress=True)
    try:
        rows = asyncio.run(run(world, sorted(world.test), args.requests, args.k, args.seed))
    finally:
        if not args.keep:
            delete_world(client, world.settings)
        client.close()

    print(f"{args.requests} sequential requests, k={args.k}, users from ml-latest-small ({len(world.test)}), "
          f"{os.cpu_count()} CPUs shared with the Elasticsearch node")
    print("| operation | p50 ms | p90 ms | p99 ms | mean ms | p50 / profile GET |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['p99_ms']:.1f} | {row['mean_ms']:.1f} | "
              f"{row['p50_ratio_to_profile_get']:.1f} |")
    result = {"requests": args.requests, "k": args.k, "users": len(world.test), "rows": rows,
              "settings": {name: getattr(settings, name) for name in type(settings).model_fields
                           if name.startswith("candidates_")},
              "hardware": {"cpus": os.cpu_count(), "machine": platform.machine(),
                           "python": platform.python_version()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
