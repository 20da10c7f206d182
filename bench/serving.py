"""Serving benchmark: open-loop load on GET /v1/users/{id}/recommendations against a local API.

For each configuration the script starts the API on 127.0.0.1, with ranking
workers it started itself. It sends requests for real MovieLens users at a
fixed rate, whatever their latency (open loop: request i leaves at
t0 + i / rate). Per request it records the status, the latency, the degraded
flag and the stage times of the Server-Timing header. Configurations:

- scoring in the API process, on one worker, on two workers (same rate);
- each worker policy with two workers, one of them slowed by ``--slow-ms`` per
  batch: the share of batches each worker got, and the p99.

Elasticsearch, the API, the workers and this load generator share the
machine's cores; the CPU seconds each used per configuration come from
psutil. The data must be loaded and a ranker trained first (`vidrec demo`). ``--max-inflight``
sets the API's load-shedding limit; one configuration runs without shedding for comparison.

    python bench/serving.py --data ../shared/data/movielens-latest-small --rate 20 --duration 30

Writes a table to stdout and JSON to bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from app.demo import wait_for  # noqa: E402
from app.settings import load_settings  # noqa: E402
from indexing import es_node  # noqa: E402

STAGES = ("profile", "msearch", "merge", "scoring", "dispatch", "titles", "total")


@dataclass
class Config:
    name: str
    workers: list[str]  # keys into the started workers: "a", "b", "slow", "doomed"
    policy: str = "round_robin"
    kill: str | None = None  # worker stopped (SIGTERM) halfway through the measured time
    max_inflight: int | None = None  # VIDREC_MAX_INFLIGHT_RECOMMENDATIONS; None keeps --max-inflight


@dataclass
class RunResult:
    config: str
    requests: int
    errors: int
    degraded: int
    shed: int
    latency_ms: dict[str, float]
    stage_p50_ms: dict[str, float]
    stage_p99_ms: dict[str, float]
    worker_share: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    achieved_rate: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_users(folder: Path) -> list[str]:
    with (folder / "ratings.csv").open() as handle:
        return sorted({row["userId"] for row in csv.DictReader(handle)}, key=int)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "app.cli", *command], cwd=REPO_ROOT, env=env,
                            stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return times.user + times.system


def worker_served(url: str) -> int | None:
    """Return the batches a worker has scored, or None when its /status fails (a killed worker)."""
    try:
        return int(httpx.get(f"{url}/status", timeout=5).json()["served"])
    except httpx.HTTPError:
        return None


def parse_server_timing(header: str) -> dict[str, float]:
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            stages[name] = float(duration)
    return stages


async def open_loop(url: str, users: list[str], rate: float, duration_s: float, k: int, seed: int,
                    warmup_s: float) -> tuple[list[dict], float]:
    """Send requests at ``rate`` per second for ``duration_s`` after ``warmup_s``; return the measured ones."""
    rng = random.Random(seed)
    total = int((warmup_s + duration_s) * rate)
    warmup = int(warmup_s * rate)
    records: list[dict] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
        async def one(index: int, user_id: str, send_at: float) -> None:
            await asyncio.sleep(max(0.0, send_at - time.perf_counter()))
            started = time.perf_counter()
            try:
                response = await client.get(f"{url}/v1/users/{user_id}/recommendations", params={"k": k})
                ok = response.status_code == 200
                body = response.json() if ok else {}
                stages = parse_server_timing(response.headers.get("server-timing", ""))
                status = response.status_code
            except httpx.HTTPError as error:
                ok, body, stages, status = False, {}, {}, repr(error)
            latency = (time.perf_counter() - started) * 1000
            if index >= warmup:
                records.append({"latency_ms": latency, "ok": ok, "status": status,
                                "degraded": bool(body.get("degraded")), "stages": stages,
                                "lag_ms": (started - send_at) * 1000})

        t0 = time.perf_counter() + 0.2
        tasks = [asyncio.create_task(one(i, rng.choice(users), t0 + i / rate)) for i in range(total)]
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0 - warmup_s
    return records, (len(records) / elapsed if elapsed > 0 else 0.0)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    array = np.asarray(values)
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 95, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="MovieLens latest-small folder (for user ids)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    parser.add_argument("--k", type=int, default=100, help="videos per request (default 100)")
    parser.add_argument("--slow-ms", type=float, default=60.0, help="delay of the slowed worker (default 60)")
    parser.add_argument("--only", help="comma-separated configuration names to run")
    parser.add_argument("--max-inflight", type=int, default=None,
                        help="recommendation requests the API serves in full at once before it sheds to the "
                        "popular list (default: the API's VIDREC_MAX_INFLIGHT_RECOMMENDATIONS)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "serving.json")
    args = parser.parse_args()

    settings = load_settings()
    users = read_users(args.data)
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / "vidrec-bench-serving"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VIDREC_LOCAL_DEV": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("VIDREC_API_READ_KEY", None)
    env.pop("VIDREC_API_WRITE_KEY", None)
    es_pid = es_node.read_pid(es_node.node_paths(settings))

    configs = [
        Config("in-process", []),
        Config("1 worker", ["a"]),
        Config("2 workers", ["a", "b"]),
        Config("2 workers without shedding", ["a", "b"], max_inflight=0),
        Config("slowed: round_robin", ["a", "slow"], "round_robin"),
        Config("slowed: least_loaded", ["a", "slow"], "least_loaded"),
        Config("slowed: hash(user)", ["a", "slow"], "hash"),
        Config("killed: 1 of 2 workers halfway", ["a", "doomed"], "round_robin", kill="doomed"),
    ]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        configs = [config for config in configs if config.name in wanted]

    workers: dict[str, tuple[str, subprocess.Popen]] = {}
    results: list[RunResult] = []
    try:
        started_workers = [("a", 0.0), ("b", 0.0), ("slow", args.slow_ms)]
        if any(config.kill for config in configs):
            started_workers.append(("doomed", 0.0))
        for key, delay in started_workers:
            port = free_port()
            process = start(["worker", "--port", str(port), "--worker-id", key, "--delay-ms", str(delay)],
                            env, logs / f"worker-{key}.log")
            workers[key] = (f"http://127.0.0.1:{port}", process)
        for url, process in workers.values():
            wait_for(f"{url}/status", process, "worker", timeout_s=240.0)
        print(f"workers ready: {', '.join(f'{key}={url}' for key, (url, _) in workers.items())}", flush=True)

        for config in configs:
            port = free_port()
            api_env = {**env, "VIDREC_WORKER_URLS": ",".join(workers[key][0] for key in config.workers),
                       "VIDREC_WORKER_POLICY": config.policy}
            max_inflight = config.max_inflight if config.max_inflight is not None else args.max_inflight
            if max_inflight is not None:
                api_env["VIDREC_MAX_INFLIGHT_RECOMMENDATIONS"] = str(max_inflight)
            api = start(["serve", "--port", str(port)], api_env, logs / f"api-{len(results)}.log")
            try:
                wait_for(f"http://127.0.0.1:{port}/readyz", api, "API", timeout_s=240.0)
                served_before = {key: worker_served(url) for key, (url, _) in workers.items()}
                pids = {"elasticsearch": es_pid, "api": api.pid, "load generator": os.getpid(),
                        **{f"worker {key}": process.pid for key, (_, process) in workers.items()}}
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                machine_before = psutil.cpu_times()
                wall_before = time.perf_counter()
                if config.kill:
                    threading.Timer(args.warmup + args.duration / 2, stop, args=(workers[config.kill][1],)).start()
                records, achieved = asyncio.run(open_loop(f"http://127.0.0.1:{port}", users, args.rate,
                                                          args.duration, args.k, seed=7, warmup_s=args.warmup))
                wall = time.perf_counter() - wall_before
                cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / wall for name, pid in pids.items()}
                machine_after = psutil.cpu_times()
                busy = sum(getattr(machine_after, f) - getattr(machine_before, f)
                           for f in ("user", "nice", "system", "irq", "softirq", "steal"))
                # Whatever ran beside the benchmark (other jobs on the machine) in cores.
                cpu["other processes"] = busy / wall - sum(v for v in cpu.values() if v == v)
                served_after = {key: worker_served(url) for key, (url, _) in workers.items()}
                served = {key: after - served_before[key] for key, after in served_after.items()
                          if after is not None and served_before[key] is not None}
            finally:
                stop(api)
            total_served = sum(served.get(key, 0) for key in config.workers) or 1
            ok = [record for record in records if record["ok"]]
            result = RunResult(
                config=config.name, requests=len(records), errors=len(records) - len(ok),
                degraded=sum(record["degraded"] for record in ok),
                shed=sum("shed" in record["stages"] for record in ok),
                latency_ms={**percentiles([record["latency_ms"] for record in ok]),
                            "max_send_lag": max((record["lag_ms"] for record in records), default=0.0)},
                stage_p50_ms={stage: percentiles([r["stages"][stage] for r in ok if stage in r["stages"]])["p50"]
                              for stage in STAGES},
                stage_p99_ms={stage: percentiles([r["stages"][stage] for r in ok if stage in r["stages"]])["p99"]
                              for stage in STAGES},
                # A killed worker's count is gone with it: the share is then that of the survivors only.
                worker_share={key: served[key] / total_served for key in config.workers if key in served},
                cpu_s={name: value for name, value in cpu.items()
                       if name in ("elasticsearch", "api", "load generator", "other processes")
                       or name.removeprefix("worker ") in config.workers},
                achieved_rate=achieved,
            )
            results.append(result)
            print_row(result, args.rate)
    finally:
        for _, process in workers.values():
            stop(process)

    split = scoring_split(settings, users, args.k)
    hardware = {"cpus": psutil.cpu_count(logical=True), "cpu_model": cpu_model(),
                "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
                "note": "Elasticsearch, the API, the workers and the load generator share these CPUs"}
    print_table(results, args, hardware)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "rate_per_s": args.rate, "duration_s": args.duration, "k": args.k, "slow_worker_delay_ms": args.slow_ms,
        "ranking_deadline_ms": settings.ranking_deadline_ms, "worker_timeout_ms": settings.worker_timeout_ms,
        "hardware": hardware, "results": [result.__dict__ for result in results], "scoring_split": split,
    }, indent=2) + "\n")
    if split:
        print(f"\nScoring split, in this process with 1 torch thread, {split['candidates']} candidates, "
              f"{split['samples']} users: features p50 {split['features_p50_ms']:.1f} ms, "
              f"features + model p50 {split['total_p50_ms']:.1f} ms (p99 {split['total_p99_ms']:.1f} ms)")
    print(f"\nwrote {args.output}")
    return 0


def scoring_split(settings, users: list[str], k: int, samples: int = 50) -> dict | None:
    """Time the scorer's feature step against the whole score call, outside any server.

    Candidates are the first max(2k, 500) videos of the model's feature table with one popular-fresh hit
    each. Uses the scorer's private ``_features``; returns None when the scorer has none.
    """
    from datetime import datetime, timezone

    import torch

    from app.candidates.types import Candidate, ChannelHit
    from app.es_client import make_client
    from app.worker import load_configured_scorer

    torch.set_num_threads(1)
    scorer = load_configured_scorer(settings)
    if not hasattr(scorer, "_features") or not hasattr(scorer, "encoder"):
        return None
    n = max(2 * k, 500)
    ids = scorer.encoder.table.video_ids[:n]
    candidates = [Candidate(video_id, [ChannelHit("popular_fresh", rank, 1.0)], 1.0 / (60 + rank))
                  for rank, video_id in enumerate(ids, start=1)]
    client = make_client(settings)
    features_ms, total_ms = [], []
    try:
        for user_id in random.Random(3).sample(users, min(samples, len(users))):
            try:
                profile = dict(client.get(index=settings.alias("users"), id=user_id)["_source"])
            except Exception:  # an unknown user scores as a cold start
                profile = {}
            now = datetime.now(timezone.utc)
            started = time.perf_counter()
            scorer._features(profile, candidates, now)
            features_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            scorer.score(profile, candidates, now)
            total_ms.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    return {"candidates": n, "samples": len(total_ms), "features_p50_ms": percentiles(features_ms)["p50"],
            "total_p50_ms": percentiles(total_ms)["p50"], "total_p99_ms": percentiles(total_ms)["p99"]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_row(result: RunResult, rate: float) -> None:
    latency = result.latency_ms
    print(f"{result.config}: {result.requests} requests at {result.achieved_rate:.1f}/s (target {rate:g}/s), "
          f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, {result.errors} errors, "
          f"{result.degraded} degraded ({result.shed} shed)", flush=True)


def print_table(results: list[RunResult], args: argparse.Namespace, hardware: dict) -> None:
    print(f"\nOpen loop at {args.rate:g} requests/s, k={args.k}, {args.duration:g} s per configuration; "
          f"{hardware['cpus']} CPUs ({hardware['cpu_model']}) shared by Elasticsearch, API, workers and load "
          f"generator. Slowed worker: +{args.slow_ms:g} ms per batch.\n")
    header = ("| configuration | p50 ms | p95 ms | p99 ms | p99 / first row | errors | degraded (shed) | profile "
              "| msearch | merge "
              "| scoring | dispatch | titles | worker share | CPU cores used (ES / API / workers / loadgen / other) |")
    print(header)
    print("|" + "|".join(["---"] * (header.count("|") - 1)) + "|")
    baseline_p99 = results[0].latency_ms["p99"] if results else float("nan")
    for result in results:
        latency, stages = result.latency_ms, result.stage_p50_ms
        share = ", ".join(f"{key} {value:.0%}" for key, value in result.worker_share.items()) or "-"
        workers_cpu = sum(value for name, value in result.cpu_s.items() if name.startswith("worker"))
        cpu = (f"{result.cpu_s.get('elasticsearch', float('nan')):.2f} / {result.cpu_s['api']:.2f} / "
               f"{workers_cpu:.2f} / {result.cpu_s['load generator']:.2f} / {result.cpu_s['other processes']:.2f}")
        print(f"| {result.config} | {latency['p50']:.1f} | {latency['p95']:.1f} | {latency['p99']:.1f} | "
              f"{latency['p99'] / baseline_p99:.2f} | {result.errors} | {result.degraded} ({result.shed}) | "
              f"{stages['profile']:.1f} | {stages['msearch']:.1f} | "
              f"{stages['merge']:.1f} | {stages['scoring']:.1f} | {stages['dispatch']:.1f} | "
              f"{stages['titles']:.1f} | {share} | {cpu} |")
    print("\nStage columns are medians (ms) from the Server-Timing header. scoring is the time inside the scorer "
          "(features and model; on a worker also decoding the body and any added delay), dispatch the rest of "
          "the ranking stage (encoding, HTTP, waiting). A shed request got the popular list without the user's "
          "watched videos because the API already had its limit of requests in progress; it counts as degraded.")


if __name__ == "__main__":
    sys.exit(main())
