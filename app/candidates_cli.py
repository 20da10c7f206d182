"""`vidrec train cf` and `vidrec evaluate candidates`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from app.cli import command_group
from app.settings import Settings

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    train = command_group(subparsers, "train", "train models")
    cf = train.add_parser("cf", help="factorize the watch matrix and write cf_embedding to videos and users")
    cf.add_argument("--algorithm", choices=("als", "bpr"), default="als", help="implicit's ALS or BPR (default als)")
    cf.add_argument("--since", help="first watch time included (ISO 8601 or date math; default: all)")
    cf.add_argument("--until", help="watch times before this are included (ISO 8601 or date math; default: all)")
    cf.add_argument("--iterations", type=int, default=15, help="training epochs (default 15)")
    cf.add_argument("--regularization", type=float, default=0.05, help="L2 regularization (default 0.05)")
    cf.add_argument("--seed", type=int, default=13, help="random seed (default 13)")
    cf.set_defaults(handler=run_train_cf)

    evaluate = command_group(subparsers, "evaluate", "offline evaluation")
    candidates = evaluate.add_parser(
        "candidates",
        help="candidate recall per channel and union on MovieLens evaluation worlds, and search quality "
             "on reddit-tomt queries",
    )
    candidates.add_argument("--data-dir", type=Path, help="datasets folder (default VIDREC_DATA_DIR)")
    candidates.add_argument("--splits", default="per_user,global",
                            help="comma-separated evaluation worlds: per_user, global (default both)")
    candidates.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    candidates.add_argument("--max-users", type=int, help="evaluate at most this many users per world")
    candidates.add_argument("--skip-search", action="store_true", help="leave out the reddit-tomt search evaluation")
    candidates.add_argument("--skip-recall", action="store_true",
                            help="measure search quality only, on the indices of VIDREC_INDEX_PREFIX (read only); "
                                 "no evaluation world is built")
    candidates.add_argument("--skip-rerank", action="store_true",
                            help="leave out the search rows reranked by the ranking model (VIDREC_RANKER_VERSION)")
    candidates.add_argument("--keep", action="store_true", help="keep the world's indices afterwards")
    candidates.add_argument("--output", type=Path,
                            help="JSON file for the tables (default bench/results/candidates_eval.json, or "
                                 "bench/results/search_eval.json with --skip-recall)")
    candidates.set_defaults(handler=run_evaluate_candidates)


def run_train_cf(args: argparse.Namespace, settings: Settings) -> int:
    from app.es_client import make_client
    from ranking.collaborative import CFModelError, train_cf

    client = make_client(settings, request_timeout_s=120)
    try:
        report = train_cf(client, settings, algorithm=args.algorithm, since=args.since, until=args.until,
                          iterations=args.iterations, regularization=args.regularization, seed=args.seed)
    except CFModelError as error:
        print(f"error: {error}")
        return 1
    finally:
        client.close()
    print(f"model {report.model_version}: {report.users} users x {report.videos} videos from {report.events} "
          f"watches ({report.first_event} .. {report.last_event}) in {report.seconds:.1f} s")
    print(f"wrote {report.videos_written} video and {report.users_written} user factors")
    for line in report.failures:
        print(f"failed: {line}")
    return 1 if report.failures else 0


def run_evaluate_candidates(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.candidate_eval import evaluate_candidates, format_tables

    data_dir = args.data_dir or settings.data_dir
    if data_dir is None:
        print("error: no datasets folder: pass --data-dir or set VIDREC_DATA_DIR")
        return 2
    splits = [split.strip() for split in args.splits.split(",") if split.strip()]
    for split in splits:
        if split not in ("per_user", "global"):
            print(f"error: unknown split {split!r}; expected per_user or global")
            return 2
    if args.skip_recall and args.skip_search:
        print("error: --skip-recall and --skip-search together leave nothing to evaluate; drop one of them")
        return 2
    output = args.output or Path("bench/results/search_eval.json" if args.skip_recall
                                 else "bench/results/candidates_eval.json")
    results = evaluate_candidates(settings, Path(data_dir), splits=splits, bootstrap=args.bootstrap,
                                  max_users=args.max_users, search=not args.skip_search, keep=args.keep,
                                  output=output, recall=not args.skip_recall, rerank=not args.skip_rerank)
    print(format_tables(results))
    print(f"wrote {output}")
    return 0
