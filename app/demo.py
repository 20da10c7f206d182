"""`vidrec demo PATH`: the main job end to end on MovieLens latest-small.

Steps: start the local Elasticsearch node, ingest the MovieLens folder, train
the collaborative model and the ranker, start two ranking workers and the API
on loopback, and print the top recommendations for a few real users.

A second run reuses what the first built, as recorded in
``<cache_dir>/demo/<prefix>state.json``:

- the node keeps running;
- ingestion is skipped when the state names the same folder and the indices
  still contain its counts;
- the collaborative step is skipped while the users carry the factors of the
  model version the state names;
- the ranker step is skipped while ``VIDREC_MODEL_DIR`` contains the version
  the state names, and the workers serve that version.

The API and the workers serve as of the day after the last watch event
(``VIDREC_AS_OF``), because the dataset's events end years before today.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from app.settings import Settings

DATASET_HELP = (
    "MovieLens latest-small is not bundled. Download ml-latest-small.zip from the GroupLens MovieLens page "
    "(grouplens.org/datasets/movielens, 'MovieLens Latest Datasets', the small one), unzip it, and pass the "
    "folder that holds movies.csv and ratings.csv: vidrec demo path/to/ml-latest-small"
)
DEMO_USERS = ("1", "68", "414")
SHOWN = 10
DEMO_EPOCHS = 4
STEPS = 6


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the main job on MovieLens latest-small, from ingestion to "
                                              "recommendations served by the API and two workers")
    demo.add_argument("path", nargs="?", type=Path, help="MovieLens latest-small folder (movies.csv, ratings.csv)")
    demo.add_argument("--users", default=",".join(DEMO_USERS),
                      help=f"comma-separated user ids to recommend for (default {','.join(DEMO_USERS)})")
    demo.add_argument("--port", type=int, default=8000, help="API port on 127.0.0.1 (default 8000)")
    demo.add_argument("--serve", action="store_true",
                      help="keep the API and workers running after printing, until Ctrl-C")
    demo.set_defaults(handler=run_demo)


def step(number: int, text: str) -> None:
    print(f"\n[demo {number}/{STEPS}] {text}", flush=True)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    path = args.path or (settings.data_dir / "movielens-latest-small" if settings.data_dir else None)
    if path is None or not (path / "movies.csv").is_file() or not (path / "ratings.csv").is_file():
        where = f"{path} has no movies.csv and ratings.csv. " if path else "No dataset folder given. "
        print(f"error: {where}{DATASET_HELP}", file=sys.stderr)
        return 2
    path = path.resolve()
    state_path = settings.cache_dir / "demo" / f"{settings.index_prefix}state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}

    from app.es_client import make_client
    from indexing import es_node

    step(1, f"starting the local Elasticsearch node ({settings.es_url})")
    print(es_node.start(settings), flush=True)
    client = make_client(settings, request_timeout_s=120)
    try:
        step(2, f"ingesting MovieLens from {path}")
        ingest(client, settings, path, state, state_path)
        step(3, "training the collaborative model (matrix factorization of the watch matrix)")
        train_collaborative(client, settings, state, state_path)
    finally:
        client.close()
    step(4, f"training the ranker into {settings.model_dir}")
    version = train_ranker(settings, path, state, state_path)
    if version is None:
        return 1
    update: dict[str, Any] = {"ranker_version": version}
    if settings.as_of is None:
        update["as_of"] = replay_clock(settings)
    step(5, "starting two ranking workers and the API on 127.0.0.1")
    return serve_and_show(args, settings.model_copy(update=update))


def replay_clock(settings: Settings) -> datetime | None:
    """Return the day after the last watch event, the serving clock of a replayed dataset; None without events.

    MovieLens ends years ago. Served at the wall clock, every video would look years older and the
    popular-fresh decay would shrink its scores far below those the ranker was trained on.
    """
    from app.es_client import make_client

    client = make_client(settings)
    try:
        response = client.search(index=settings.alias("watch-events"), size=0,
                                 aggs={"last": {"max": {"field": "@timestamp"}}})
    finally:
        client.close()
    last_ms = response["aggregations"]["last"]["value"]
    if last_ms is None:
        return None
    as_of = datetime.fromtimestamp(last_ms / 1000, timezone.utc) + timedelta(days=1)
    print(f"serving as of {as_of:%Y-%m-%d %H:%M} UTC, the day after the last watch event "
          "(set VIDREC_AS_OF to choose another time)", flush=True)
    return as_of


def save_state(state: dict[str, Any], state_path: Path) -> None:
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state, indent=2) + "\n")


def count(client, settings: Settings, name: str) -> int:
    from elasticsearch import NotFoundError

    try:
        return int(client.count(index=settings.alias(name))["count"])
    except NotFoundError:
        return -1


def ingest(client, settings: Settings, path: Path, state: dict[str, Any], state_path: Path) -> None:
    done = state.get("ingested")
    if done and done.get("path") == str(path) and all(
            count(client, settings, name) == expected for name, expected in done["counts"].items()):
        print(f"reusing the earlier ingestion of {path}: " +
              ", ".join(f"{n} {name}" for name, n in done["counts"].items()), flush=True)
        return
    from indexing.movielens import ingest_movielens

    report = ingest_movielens(client, settings, path)
    print(f"loaded {report.total_loaded} documents in {report.elapsed_seconds:.0f} s "
          f"({report.docs_per_second:.0f} docs/s), {report.rejected} rejected, {report.users_built} user profiles",
          flush=True)
    counts = {name: count(client, settings, name) for name in ("videos", "users", "watch-events")}
    state["ingested"] = {"path": str(path), "counts": counts}
    state.pop("cf_model", None)  # new events: the factors must be trained again
    save_state(state, state_path)


def train_collaborative(client, settings: Settings, state: dict[str, Any], state_path: Path) -> None:
    version = state.get("cf_model")
    if version:
        with_factors = client.count(index=settings.alias("users"),
                                    query={"term": {"cf_model_version": version}})["count"]
        if with_factors > 0:
            print(f"reusing collaborative model {version} ({with_factors} users have factors)", flush=True)
            return
    from ranking.collaborative import train_cf

    report = train_cf(client, settings)
    print(f"model {report.model_version}: {report.users} users x {report.videos} videos from {report.events} "
          f"watches in {report.seconds:.1f} s", flush=True)
    state["cf_model"] = report.model_version
    save_state(state, state_path)


def train_ranker(settings: Settings, path: Path, state: dict[str, Any], state_path: Path) -> str | None:
    """Return the ranking model version this demo's indices use, training one unless the state names one.

    The state file is per index prefix, so a model that another prefix's run trained into the same
    model folder is not reused by mistake.
    """
    from ranking.artifacts import list_versions

    known = {record["version"] for record in list_versions(settings.model_dir)}
    version = state.get("ranker_model")
    if version in known:
        print(f"reusing ranking model {version}", flush=True)
        return version
    # `vidrec train ranker` as a child process, so its progress output shows as it runs. The demo caps
    # the epochs so the whole job stays within minutes on two cores; train again without the cap for more.
    code = subprocess.call([sys.executable, "-m", "app.cli", "train", "ranker", "--data-dir", str(path),
                            "--epochs", str(DEMO_EPOCHS)])
    if code != 0:
        print(f"error: `vidrec train ranker` failed with exit code {code}", file=sys.stderr)
        return None
    new_versions = [record["version"] for record in list_versions(settings.model_dir)
                    if record["version"] not in known]
    if not new_versions:
        print(f"error: `vidrec train ranker` wrote no model into {settings.model_dir}", file=sys.stderr)
        return None
    state["ranker_model"] = new_versions[-1]
    save_state(state, state_path)
    return new_versions[-1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, name: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} during start")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} did not answer {url} within {timeout_s:.0f} s")


def serve_and_show(args: argparse.Namespace, settings: Settings) -> int:
    env = dict(os.environ)
    env["VIDREC_RANKER_VERSION"] = settings.ranker_version  # the workers serve this run's model
    if settings.as_of is not None:
        env["VIDREC_AS_OF"] = settings.as_of.isoformat()
    if not (settings.api_read_key and settings.api_write_key):
        env["VIDREC_LOCAL_DEV"] = "true"  # the demo binds to loopback only
    worker_ports = [free_port(), free_port()]
    processes: list[tuple[str, subprocess.Popen]] = []
    try:
        for port in worker_ports:
            processes.append((f"worker :{port}", subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--port", str(port), "--worker-id", f"worker-{port}"],
                env=env)))
        env["VIDREC_WORKER_URLS"] = ",".join(f"http://127.0.0.1:{port}" for port in worker_ports)
        processes.append(("API", subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(args.port)], env=env)))
        for (name, process), port in zip(processes, [*worker_ports, args.port]):
            path = "/status" if name.startswith("worker") else "/readyz"
            wait_for(f"http://127.0.0.1:{port}{path}", process, name)
            print(f"{name} is up on http://127.0.0.1:{port}", flush=True)

        step(6, f"top {SHOWN} recommendations for users {args.users}")
        headers = {"X-API-Key": settings.api_read_key} if settings.api_read_key else {}
        user_ids = [u.strip() for u in args.users.split(",") if u.strip()]
        # One unprinted request per user first: the first kNN searches and title reads of a fresh node are slow.
        print("warming up with one unprinted request per user (a warning about a late batch here is expected)",
              flush=True)
        for user_id in user_ids:
            httpx.get(f"http://127.0.0.1:{args.port}/v1/users/{user_id}/recommendations", params={"k": SHOWN},
                      headers=headers, timeout=30)
        for user_id in user_ids:
            response = httpx.get(f"http://127.0.0.1:{args.port}/v1/users/{user_id}/recommendations",
                                 params={"k": SHOWN}, headers=headers, timeout=30)
            if response.status_code != 200:
                print(f"user {user_id}: HTTP {response.status_code} {response.text[:300]}")
                continue
            body = response.json()
            flags = [flag for flag in ("cold_start", "degraded") if body[flag]]
            print(f"\nuser {user_id} (model {body['model_version']}{', ' + ', '.join(flags) if flags else ''}, "
                  f"{response.headers.get('server-timing', '')}):")
            for item in body["items"]:
                print(f"  {item['rank']:>2}. {item['title']}  (score {item['score']:.3f})")
        if args.serve:
            print(f"\nServing on http://127.0.0.1:{args.port} (try /docs); Ctrl-C stops the API and workers.",
                  flush=True)
            processes[-1][1].wait()
        return 0
    finally:
        for _, process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for _, process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
