"""Offline evaluation of the ranking stage on a MovieLens evaluation world (``vidrec evaluate ranking``).

One run builds the ranking world and its impressions, trains logistic
regression and the MLP on them, and reports AUC and log loss on the intact
test impressions. It then ranks each user's candidates as of their test
split inside the evaluation world. NDCG@10, Recall@10, Recall@100 and
MAP@100 against the held-out watches, with bootstrap 95% confidence
intervals over users, are reported for these systems:

- ``candidates+mlp``: candidates, then the MLP (the full pipeline);
- ``candidates+lr``: candidates reranked by logistic regression;
- ``fused``: the fused candidate order alone;
- ``popularity``: the most watched videos in the world before the split;
- ``collaborative``: the ALS model's own top N over the whole catalog.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.settings import Settings
from ranking.metrics import TOP_K_METRICS, auc, bootstrap_ci, log_loss, reliability_bins
from ranking.scorer import BatchScorer
from ranking.train import TrainConfig, TrainResult, split_logits, train_model
from ranking.training_data import ExampleSplit, TrainingData, build_training_data
from ranking.world_impressions import RankingWorlds, World, prepare_ranking_world

logger = logging.getLogger(__name__)

SYSTEMS = ("candidates+mlp", "candidates+lr", "fused", "popularity", "collaborative")
TOP_N = 100


def impression_metrics(result: TrainResult, split: ExampleSplit, negative_keep: float) -> dict[str, Any]:
    """AUC, log loss and calibration of a model on an intact split, with the sampling correction applied."""
    logits = split_logits(result.model, split)
    corrected = torch.sigmoid(logits + math.log(negative_keep)).numpy()
    uncorrected = torch.sigmoid(logits).numpy()
    labels = split.labels.numpy()
    return {
        "examples": int(split.size), "positive_rate": float(labels.mean()),
        "auc": auc(labels, corrected), "log_loss": log_loss(labels, corrected),
        "mean_predicted": float(corrected.mean()), "mean_predicted_uncorrected": float(uncorrected.mean()),
        "log_loss_uncorrected": log_loss(labels, uncorrected),
        "reliability": reliability_bins(labels, corrected),
    }


def train_both(worlds: RankingWorlds, negative_keep: float, seed: int,
               threads: int = 1) -> tuple[TrainingData, dict[str, TrainResult]]:
    training = build_training_data(worlds.requests, worlds.data.table, worlds.ranking_world.popularity,
                                   negative_keep=negative_keep, seed=seed)
    results = {kind: train_model(training, TrainConfig(kind=kind, seed=seed, threads=threads)) for kind in ("lr", "mlp")}
    return training, results


def rank_users(eval_world: World, scorers: dict[str, BatchScorer], cap: int) -> dict[str, list[dict[str, float]]]:
    """Per system, one metrics row per user with held-out watches."""
    rows: dict[str, list[dict[str, float]]] = {system: [] for system in SYSTEMS}
    table = eval_world.data.table
    for user_id, split in eval_world.splits.items():
        relevant = {w.video_id for w in split.future}
        profile = eval_world.profile(user_id)
        candidates = eval_world.candidates(user_id, profile, cap)
        watched = table.rows(profile.get("watched_ids") or [])
        ids = [c.video_id for c in candidates]
        rankings = {"fused": ids,
                    "popularity": [v for v, _ in eval_world.popular(split.cutoff, TOP_N, watched)],
                    "collaborative": [v for v, _ in eval_world.collaborative_top(user_id, TOP_N, watched)]}
        for kind, system in (("mlp", "candidates+mlp"), ("lr", "candidates+lr")):
            scores = scorers[kind].score(profile, candidates, split.cutoff)
            order = np.argsort(-scores, kind="stable")
            rankings[system] = [ids[i] for i in order]
        for system, ranked in rankings.items():
            rows[system].append({name: metric(ranked, relevant) for name, metric in TOP_K_METRICS.items()})
    return rows


def summarize(rows: dict[str, list[dict[str, float]]], samples: int, seed: int) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for system, user_rows in rows.items():
        table[system] = {}
        for name in TOP_K_METRICS:
            mean, low, high = bootstrap_ci(np.array([row[name] for row in user_rows]), samples, seed)
            table[system][name] = {"mean": mean, "ci95": [low, high]}
        table[system]["users"] = len(user_rows)
    return table


def evaluate_ranking(settings: Settings, data_dir: Path, output_dir: Path, cap: int = 500,
                     negative_keep: float = 0.25, bootstrap: int = 1000, max_users: int | None = None,
                     seed: int = 0, save: bool = False, threads: int = 1, world: str = "memory") -> dict[str, Any]:
    """Run the whole evaluation; write report.json, reliability.png and metrics.png under ``output_dir``.

    ``world`` picks where the test users' candidates come from: ``memory`` (the
    in-memory channels of ``ranking.world_impressions``) or ``es`` (the
    Elasticsearch per-user world of ``ranking.world``, the candidate
    evaluation's world, through ``retrieve_candidates``).
    """
    from ranking.artifacts import code_version, save_model

    started = time.perf_counter()
    stages: dict[str, float] = {}
    worlds = prepare_ranking_world(settings, data_dir, cap=cap, max_users=max_users)
    stages["ranking_world_s"] = time.perf_counter() - started
    training, results = train_both(worlds, negative_keep, seed, threads)
    stages["training_s"] = time.perf_counter() - started - sum(stages.values())
    impressions = {kind: impression_metrics(result, training.splits["test"], negative_keep)
                   for kind, result in results.items()}
    saved = []
    if save:
        saved = [save_model(settings.model_dir, result.model, training.encoder, negative_keep,
                            {"window": training.window, "metrics": {k: v for k, v in impressions[kind].items()
                                                                   if k != "reliability"}}).name
                 for kind, result in results.items()]
    if world == "es":
        rows, users_evaluated = _rank_in_es_world(settings, data_dir, training, results, negative_keep, cap,
                                                  max_users)
    else:
        eval_world = World(worlds.data, worlds.test_splits, settings)
        scorers = {kind: BatchScorer(result.model, training.encoder, negative_keep, kind,
                                     popularity=eval_world.popularity) for kind, result in results.items()}
        rows = rank_users(eval_world, scorers, cap)
        users_evaluated = len(eval_world.splits)
    stages["evaluation_world_and_ranking_s"] = time.perf_counter() - started - sum(stages.values())
    report = {
        "dataset": str(data_dir), "protocol": "per-user chronological split, last 20% of watches held out; "
        "ranking labels from a nested 20% split of the pre-test history",
        "candidate_cap": cap, "negative_keep": negative_keep, "bootstrap_samples": bootstrap,
        "candidate_world": world, "users_evaluated": users_evaluated, "ranking_window": training.window,
        "training": {kind: {"seconds": r.seconds, "examples_per_s": r.examples_per_s, "best_epoch": r.best_epoch,
                            "epochs_run": len(r.history), "train_examples": training.splits["train"].size}
                     for kind, r in results.items()},
        "impressions": impressions, "top_k": summarize(rows, bootstrap, seed),
        "code_version": code_version(), "stages": stages,
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
                    "torch_threads": threads},
        "seconds": time.perf_counter() - started,
    }
    if saved:
        report["saved_models"] = saved
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_charts(report, output_dir)
    return report


def _rank_in_es_world(settings: Settings, data_dir: Path, training: TrainingData, results: dict[str, TrainResult],
                      negative_keep: float, cap: int, max_users: int | None) -> tuple[dict[str, list], int]:
    from app.es_client import make_client
    from ranking.evaluate_es import rank_users_es
    from ranking.world import build_world

    client = make_client(settings, request_timeout_s=120)
    try:
        es_world = build_world(client, settings, data_dir, "per_user", reuse=True)
    finally:
        client.close()
    # The ES world sets popularity from its own index, so the scorers get their own copy of the table.
    scorers = {}
    for kind, result in results.items():
        encoder = copy.copy(training.encoder)
        encoder.table = copy.copy(training.encoder.table)
        scorers[kind] = BatchScorer(result.model, encoder, negative_keep, kind)
    rows = rank_users_es(es_world, scorers, cap, max_users)
    return rows, len(next(iter(rows.values()), []))


def write_charts(report: dict[str, Any], output_dir: Path) -> None:
    """Write reliability.png (predicted against observed per bin) and metrics.png (bars with 95% CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for kind, metrics in report["impressions"].items():
        bins = metrics["reliability"]
        axis.plot([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins], marker="o",
                  label=f"{kind} (AUC {metrics['auc']:.3f})")
    axis.set_xlabel("mean predicted probability (corrected for negative sampling)")
    axis.set_ylabel("observed watch rate")
    axis.set_title("Reliability on intact test impressions")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "reliability.png", dpi=120)
    plt.close(figure)

    names = list(TOP_K_METRICS)
    systems = list(report["top_k"])
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        means = [report["top_k"][system][n]["mean"] for n in names]
        errors = [[m - report["top_k"][system][n]["ci95"][0] for n, m in zip(names, means)],
                  [report["top_k"][system][n]["ci95"][1] - m for n, m in zip(names, means)]]
        axis.bar(np.arange(len(names)) + i * width, means, width, yerr=errors, capsize=2, label=system)
    axis.set_xticks(np.arange(len(names)) + width * (len(systems) - 1) / 2, names)
    axis.set_ylabel("mean over users (95% bootstrap CI)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output_dir / "metrics.png", dpi=120)
    plt.close(figure)


def format_report(report: dict[str, Any]) -> str:
    """Render the top-k table and the impression metrics as text."""
    lines = [f"{'system':<16}" + "".join(f"{name:>26}" for name in TOP_K_METRICS)]
    for system, metrics in report["top_k"].items():
        cells = "".join(f"{metrics[n]['mean']:>8.4f} [{metrics[n]['ci95'][0]:.4f}, {metrics[n]['ci95'][1]:.4f}]"
                        .rjust(26) for n in TOP_K_METRICS)
        lines.append(f"{system:<16}{cells}")
    lines.append("")
    lines.append(f"{'model':<6}{'AUC':>8}{'log loss':>10}{'mean p':>9}{'rate':>8}{'mean p raw':>12}")
    for kind, m in report["impressions"].items():
        lines.append(f"{kind:<6}{m['auc']:>8.4f}{m['log_loss']:>10.4f}{m['mean_predicted']:>9.4f}"
                     f"{m['positive_rate']:>8.4f}{m['mean_predicted_uncorrected']:>12.4f}")
    return "\n".join(lines)
