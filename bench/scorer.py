"""Latency of the batch scorer against a plain forward pass over the concatenated features.

For 500 and 1,000 candidates, alternates ``BatchScorer.score`` (first layer
split: user part once, video part precomputed per model version) with
``BatchScorer.score_plain`` (the whole first layer over the concatenated
features of every candidate) on the same inputs in the same run, with torch
pinned to one thread. Both include the feature encoding, which is timed on
its own too. Prints a table and writes bench/results/scorer.json.

    python bench/scorer.py                      # a synthetic 10,000-video catalog, untrained MLP
    python bench/scorer.py --version latest-mlp # a saved model from VIDREC_MODEL_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from app.candidates.types import CHANNELS, Candidate, ChannelHit
from app.settings import load_settings
from ranking.scorer import BatchScorer, load_scorer

RESULTS = Path(__file__).resolve().parent / "results" / "scorer.json"


def synthetic_scorer() -> tuple[BatchScorer, str]:
    from ranking.synthetic import make_world
    from ranking.train import build_model
    from ranking.training_data import build_training_data

    world = make_world(videos=10_000, users=40, requests_per_user=2, candidates=50, dims=384, seed=0)
    data = build_training_data(world.requests, world.table, world.popularity, negative_keep=0.25)
    model = build_model(data, "mlp").eval()
    return BatchScorer(model, data.encoder, 0.25, "synthetic-mlp"), "synthetic catalog of 10,000 videos, MLP 128-64"


def make_profile(scorer: BatchScorer, rng: np.random.Generator, now: float) -> dict:
    table = scorer.encoder.table
    ids = list(rng.choice(table.video_ids, size=50, replace=False))
    vector = rng.normal(size=table.dims)
    return {"watched_ids": ids, "history_vector": (vector / np.linalg.norm(vector)).tolist(),
            "recent_watches": [{"video_id": v, "ts": int((now - 3600 * (i + 1)) * 1000)} for i, v in enumerate(ids)],
            "query_vector": (vector / np.linalg.norm(vector)).tolist(), "age": 30, "gender": "F", "country": "US"}


def make_candidates(scorer: BatchScorer, rng: np.random.Generator, count: int) -> list[Candidate]:
    ids = rng.choice(scorer.encoder.table.video_ids, size=count, replace=False)
    return [Candidate(str(v), [ChannelHit(CHANNELS[i % len(CHANNELS)], i + 1, float(rng.random()))], 1.0 / (61 + i))
            for i, v in enumerate(ids)]


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="saved model version or latest[-mlp|-lr]; default a synthetic model")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per method and size (default 300)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    if args.version:
        scorer = load_scorer(load_settings(), args.version, threads=1)
        model_text = f"saved model {scorer.model_version}"
    else:
        scorer, model_text = synthetic_scorer()
    rng = np.random.default_rng(0)
    now = time.time()
    rows = []
    for count in (500, 1000):
        profile = make_profile(scorer, rng, now)
        candidates = make_candidates(scorer, rng, count)
        fast_scores = scorer.score(profile, candidates, now)
        plain_scores = scorer.score_plain(profile, candidates, now)
        max_difference = float(np.abs(fast_scores - plain_scores).max())
        timings: dict[str, list[float]] = {"score": [], "plain": [], "features": []}
        for _ in range(20):
            scorer.score(profile, candidates, now)
            scorer.score_plain(profile, candidates, now)
        for _ in range(args.repeats):
            for name, call in (("score", scorer.score), ("plain", scorer.score_plain), ("features", scorer._features)):
                started = time.perf_counter()
                call(profile, candidates, now)
                timings[name].append(time.perf_counter() - started)
        row = {"candidates": count, "max_abs_difference": max_difference}
        for name, samples in timings.items():
            row[f"{name}_p50_ms"] = percentile_ms(samples, 50)
            row[f"{name}_p99_ms"] = percentile_ms(samples, 99)
        row["p50_ratio_plain_over_score"] = row["plain_p50_ms"] / row["score_p50_ms"]
        rows.append(row)

    hardware = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "load_average_1m": os.getloadavg()[0]}
    try:
        with open("/proc/cpuinfo") as handle:
            hardware["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"model: {model_text}; hardware: {hardware}")
    print(f"{'N':>5} {'score p50':>10} {'p99':>8} {'plain p50':>10} {'p99':>8} {'ratio':>6} {'features p50':>13} {'max diff':>9}")
    for row in rows:
        print(f"{row['candidates']:>5} {row['score_p50_ms']:>10.2f} {row['score_p99_ms']:>8.2f} "
              f"{row['plain_p50_ms']:>10.2f} {row['plain_p99_ms']:>8.2f} {row['p50_ratio_plain_over_score']:>6.2f} "
              f"{row['features_p50_ms']:>13.2f} {row['max_abs_difference']:>9.1e}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": model_text, "hardware": hardware, "repeats": args.repeats,
                                   "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
