"""`vidrec train ranker` and `vidrec evaluate ranking`."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from app.cli import command_group
from app.settings import Settings

logger = logging.getLogger(__name__)


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return value


def _add_world_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path,
                        help="MovieLens folder with movies.csv and ratings.csv, or the datasets folder holding "
                             "movielens-latest-small/ (default VIDREC_DATA_DIR)")
    parser.add_argument("--cap", type=int, default=500, help="candidates per impression request (default 500)")
    parser.add_argument("--negative-keep", type=_probability, default=0.25,
                        help="fraction of training negatives kept; validation and test keep all (default 0.25)")
    parser.add_argument("--max-users", type=int, help="use at most this many users (default all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of sampling and training (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = command_group(subparsers, "train", "train models")
    ranker = train.add_parser("ranker", help="train the ranking model on impressions built in a MovieLens world "
                                             "and save a versioned model directory")
    ranker.add_argument("--model", choices=("mlp", "lr"), default="mlp", help="model kind (default mlp)")
    ranker.add_argument("--epochs", type=int, default=30, help="maximum epochs; early stopping may end sooner")
    ranker.add_argument("--weight-positives", action="store_true",
                        help="weight each positive's loss by its engagement (rating / 5)")
    ranker.add_argument("--table-from-index", action="store_true",
                        help="export the video feature table from the videos index instead of the dataset files")
    _add_world_options(ranker)
    ranker.set_defaults(handler=run_train_ranker)

    evaluate = command_group(subparsers, "evaluate", "offline evaluation")
    ranking = evaluate.add_parser("ranking", help="train LR and MLP and evaluate the ranking stage in one run")
    _add_world_options(ranking)
    ranking.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    ranking.add_argument("--output-dir", type=Path, default=Path("bench/results/ranking"),
                         help="folder for report.json, reliability.png and metrics.png")
    ranking.add_argument("--save-models", action="store_true", help="also save both models under VIDREC_MODEL_DIR")
    ranking.add_argument("--world", choices=("memory", "es"), default="memory",
                         help="candidates of the test users from in-memory channels, or from retrieve_candidates "
                              "in the Elasticsearch per-user world that `vidrec evaluate candidates` builds "
                              "(default memory)")
    ranking.set_defaults(handler=run_evaluate_ranking)


def movielens_folder(args: argparse.Namespace, settings: Settings) -> Path | None:
    """Return the MovieLens folder from --data-dir or VIDREC_DATA_DIR, or None after printing why not."""
    folder = args.data_dir or settings.data_dir
    if folder is None:
        print("error: no MovieLens folder: pass --data-dir or set VIDREC_DATA_DIR")
        return None
    if not (folder / "ratings.csv").exists() and (folder / "movielens-latest-small" / "ratings.csv").exists():
        folder = folder / "movielens-latest-small"
    if not (folder / "ratings.csv").exists() or not (folder / "movies.csv").exists():
        print(f"error: {folder} has no ratings.csv and movies.csv (the MovieLens CSV layout)")
        return None
    return folder


def run_train_ranker(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.artifacts import save_model
    from ranking.evaluate import impression_metrics
    from ranking.train import TrainConfig, train_model
    from ranking.training_data import build_training_data
    from ranking.world_impressions import load_movielens, prepare_ranking_world

    folder = movielens_folder(args, settings)
    if folder is None:
        return 2
    data = load_movielens(folder, settings)
    if args.table_from_index:
        from app.es_client import make_client
        from ranking.feature_table import export_table

        client = make_client(settings, request_timeout_s=120)
        try:
            data.table = export_table(client, settings.alias("videos"), settings.embedding_dims)
        finally:
            client.close()
    worlds = prepare_ranking_world(settings, folder, cap=args.cap, max_users=args.max_users, data=data)
    training = build_training_data(worlds.requests, data.table, worlds.ranking_world.popularity,
                                   negative_keep=args.negative_keep, seed=args.seed)
    config = TrainConfig(kind=args.model, epochs=args.epochs, seed=args.seed, weight_positives=args.weight_positives,
                         threads=args.threads)
    result = train_model(training, config)
    metrics = impression_metrics(result, training.splits["test"], args.negative_keep)
    meta = {
        "dataset": str(folder), "window": training.window,
        "train_config": {**config.__dict__, "hidden": list(result.model.shape.hidden)},
        "training": {"seconds": result.seconds, "examples_per_s": result.examples_per_s,
                     "best_epoch": result.best_epoch, "history": result.history},
        "metrics": {k: v for k, v in metrics.items() if k != "reliability"},
    }
    folder_out = save_model(settings.model_dir, result.model, training.encoder, args.negative_keep, meta)
    print(f"model {folder_out.name} ({args.model}) saved in {folder_out}")
    print(f"trained on {training.splits['train'].size} examples in {result.seconds:.1f} s "
          f"({result.examples_per_s:.0f} examples/s), best epoch {result.best_epoch}")
    print(f"test impressions: AUC {metrics['auc']:.4f}, log loss {metrics['log_loss']:.4f}, "
          f"mean predicted {metrics['mean_predicted']:.4f} vs observed {metrics['positive_rate']:.4f}")
    return 0 if math.isfinite(metrics["log_loss"]) else 1


def run_evaluate_ranking(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.evaluate import evaluate_ranking, format_report

    folder = movielens_folder(args, settings)
    if folder is None:
        return 2
    report = evaluate_ranking(settings, folder, args.output_dir, cap=args.cap, negative_keep=args.negative_keep,
                              bootstrap=args.bootstrap, max_users=args.max_users, seed=args.seed,
                              save=args.save_models, threads=args.threads, world=args.world)
    print(format_report(report))
    print(json.dumps(report["training"]))
    print(f"wrote {args.output_dir / 'report.json'}, reliability.png and metrics.png in {report['seconds']:.0f} s")
    return 0
