"""CPU cost of one recommendation request: API process and Elasticsearch, requests sent one at a time.

The serving benchmark (bench/serving.py) measures latency under an open-loop
load, where queueing hides what each request costs. This script builds the API
in its own process (its lifespan, with in-process scoring), calls the
recommender one request at a time for real MovieLens users, and reports per
request:

- the CPU seconds of this process (the API's work: JSON, fusion, features and
  model, impression logging), from ``time.process_time``;
- the CPU seconds of the Elasticsearch node's process over the same span, from
  psutil (anything else that queries the node in that time is counted too);
- the wall time and the stage times the recommender records.

Run it on a quiet machine against the data and model that `vidrec demo` builds.
``--compare-tree`` runs the same measurement on another checkout (for example an
older commit made with ``git worktree add``) in alternating rounds, so both sides
see the same machine conditions.

    python bench/request_cost.py --data ../shared/data/movielens-latest-small --requests 300

Writes a table to stdout and JSON to bench/results/request_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
# A child that has not finished by then is stuck; it prints its pending tasks and exits.
CHILD_TIMEOUT_S = 300.0
SHUTDOWN_TIMEOUT_S = 30.0
STAGES = ("profile", "msearch", "merge", "scoring", "titles", "total")


def read_users(folder: Path) -> list[str]:
    with (folder / "ratings.csv").open() as handle:
        return sorted({row["userId"] for row in csv.DictReader(handle)}, key=int)


def process_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def measure(users: list[str], requests: int, warmup: int, seed: int, es_pid: int) -> dict:
    """Run ``requests`` recommendations (k=100) one after another; return costs per request in ms."""
    from app.main import create_app
    from app.recommend import RecommendOptions

    # The API's own lifespan builds the serving state, so startup steps of the checkout (model load,
    # caches, heap freezing) are part of what is measured.
    api = create_app()
    lifespan = api.router.lifespan_context(api)
    await lifespan.__aenter__()
    try:
        recommender = api.state.recommender
        rng = random.Random(seed)
        for user_id in rng.sample(users, min(warmup, len(users))):
            await recommender.recommend(user_id, RecommendOptions(k=100))
        stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
        cpu_before, es_before, wall_before = time.process_time(), process_cpu_s(es_pid), time.perf_counter()
        for _ in range(requests):
            result = await recommender.recommend(rng.choice(users), RecommendOptions(k=100))
            for stage in STAGES:
                if stage in result.timings_ms:
                    stages[stage].append(result.timings_ms[stage])
        api_ms = (time.process_time() - cpu_before) / requests * 1000
        es_ms = (process_cpu_s(es_pid) - es_before) / requests * 1000
        wall_ms = (time.perf_counter() - wall_before) / requests * 1000
    finally:
        # A shutdown that never finishes (an older checkout's impression writer could hang there) must
        # not cost the measurement: it is reported and the child exits anyway.
        shutdown = asyncio.ensure_future(lifespan.__aexit__(None, None, None))
        done, _ = await asyncio.wait({shutdown}, timeout=SHUTDOWN_TIMEOUT_S)
        shutdown_ok = bool(done)
        if not shutdown_ok:
            print(f"the API's shutdown did not finish within {SHUTDOWN_TIMEOUT_S:.0f} s", file=sys.stderr)
    import app

    return {"app_path": str(Path(app.__file__).parent), "requests": requests, "api_cpu_ms": api_ms,
            "es_cpu_ms": es_ms, "wall_ms": wall_ms, "shutdown_ok": shutdown_ok,
            "stage_p50_ms": {s: float(np.percentile(v, 50)) for s, v in stages.items() if v},
            "stage_p99_ms": {s: float(np.percentile(v, 99)) for s, v in stages.items() if v}}


async def guarded(coroutine, timeout_s: float):  # type: ignore[no-untyped-def]
    """Await ``coroutine``; past ``timeout_s``, print every pending task's stack to stderr and exit 3."""
    task = asyncio.ensure_future(coroutine)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if task in done:
        return task.result()
    print(f"no result after {timeout_s:.0f} s; pending tasks:", file=sys.stderr)
    for pending in asyncio.all_tasks():
        pending.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)


def run_tree(tree: Path, args: argparse.Namespace, es_pid: int) -> dict:
    """Measure in a child process whose imports come from ``tree``; returns its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data.resolve()), "--requests",
               str(args.requests), "--warmup", str(args.warmup), "--seed", str(args.seed), "--es-pid", str(es_pid),
               "--child", str(tree)]
    env = {**os.environ, "PYTHONPATH": str(tree), "VIDREC_LOCAL_DEV": "true", "HF_HUB_OFFLINE": "1"}
    env.pop("VIDREC_WORKER_URLS", None)  # in-process scoring: the API's CPU then includes the model
    env.pop("VIDREC_API_READ_KEY", None)
    env.pop("VIDREC_API_WRITE_KEY", None)
    completed = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"measuring {tree} failed with exit code {completed.returncode}:\n"
                           f"{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def describe(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="MovieLens latest-small folder (for user ids)")
    parser.add_argument("--requests", type=int, default=300, help="measured requests per round (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per checkout; medians are reported")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--compare-tree", type=Path, help="another checkout to measure in alternating rounds")
    parser.add_argument("--es-pid", type=int, help="pid of the Elasticsearch node (default: the local node's)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "request_cost.json")
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(args.child))
        result = asyncio.run(guarded(measure(read_users(args.data), args.requests, args.warmup, args.seed,
                                             args.es_pid), timeout_s=CHILD_TIMEOUT_S))
        print(json.dumps(result), flush=True)
        os._exit(0)  # skip asyncio.run's cleanup, which waits on a hung shutdown's tasks

    sys.path.insert(0, str(REPO_ROOT))
    from app.settings import load_settings
    from indexing import es_node

    es_pid = args.es_pid or es_node.read_pid(es_node.node_paths(load_settings()))
    if es_pid is None:
        print("error: no running local Elasticsearch node; start it with `vidrec es start` or pass --es-pid",
              file=sys.stderr)
        return 2
    trees = [REPO_ROOT] + ([args.compare_tree.resolve()] if args.compare_tree else [])
    rounds: dict[str, list[dict]] = {str(tree): [] for tree in trees}
    for number in range(args.rounds):
        for tree in trees:
            result = run_tree(tree, args, es_pid)
            rounds[str(tree)].append(result)
            print(f"round {number + 1}, {describe(tree)}: API {result['api_cpu_ms']:.1f} ms CPU, "
                  f"Elasticsearch {result['es_cpu_ms']:.1f} ms CPU, wall {result['wall_ms']:.1f} ms"
                  f"{'' if result['shutdown_ok'] else ', shutdown hung'}", flush=True)

    summary = {}
    for tree, results in rounds.items():
        summary[tree] = {
            "commit": describe(Path(tree)),
            **{key: float(np.median([r[key] for r in results])) for key in ("api_cpu_ms", "es_cpu_ms", "wall_ms")},
            "stage_p50_ms": {s: float(np.median([r["stage_p50_ms"].get(s, np.nan) for r in results])) for s in STAGES},
            "stage_p99_ms": {s: float(np.median([r["stage_p99_ms"].get(s, np.nan) for r in results])) for s in STAGES},
        }
    baseline = summary[str(trees[-1])]
    print(f"\n{args.rounds} rounds of {args.requests} sequential requests (k=100, in-process scoring); medians "
          f"over rounds. {psutil.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
          f"{platform.python_version()}. The last row is the baseline of the ratio column.\n")
    print("| checkout | API CPU ms | ES CPU ms | total CPU / baseline | wall ms | msearch p50 | merge p50 "
          "| scoring p50 | total p50 | total p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tree in trees:
        row = summary[str(tree)]
        ratio = (row["api_cpu_ms"] + row["es_cpu_ms"]) / (baseline["api_cpu_ms"] + baseline["es_cpu_ms"])
        p50, p99 = row["stage_p50_ms"], row["stage_p99_ms"]
        print(f"| {row['commit'][:48]} | {row['api_cpu_ms']:.1f} | {row['es_cpu_ms']:.1f} | {ratio:.2f} | "
              f"{row['wall_ms']:.1f} | {p50['msearch']:.1f} | {p50['merge']:.1f} | {p50['scoring']:.1f} | "
              f"{p50['total']:.1f} | {p99['total']:.1f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rounds": rounds, "summary": summary, "cpus": psutil.cpu_count(),
                                       "requests_per_round": args.requests}, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
