"""`vidrec ingest movielens|youtube|jsonl PATH` and `vidrec reindex [rollback] INDEX`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from app.es_client import make_client
from app.settings import Settings

logger = logging.getLogger(__name__)

MAX_PRINTED_ERRORS = 50


def register(subparsers: argparse._SubParsersAction) -> None:
    ingest = subparsers.add_parser("ingest", help="load a dataset or a platform's own data into the indices")
    sources = ingest.add_subparsers(dest="source", required=True)
    for name, help_text in (
        ("movielens", "a MovieLens folder: movies.csv + ratings.csv (+ tags.csv, links.csv), "
                      "u.data + u.item + u.user (ml-100k) or ratings.dat + movies.dat + users.dat (ml-1m)"),
        ("youtube", "a YouTube trending CSV file (catalog only), or a folder of them"),
        ("jsonl", "a JSON Lines file of videos, users and events (format in docs/ingestion.md)"),
    ):
        parser = sources.add_parser(name, help=help_text)
        parser.add_argument("path", type=Path, help="file or folder to load")
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
        parser.set_defaults(handler=run_ingest)

    reindex = subparsers.add_parser("reindex", help="rebuild an index into a new version and swap its alias")
    reindex.add_argument("target", help="index name (videos, users, watch-events, impressions, "
                                        "search-queries), or 'rollback' followed by the index name")
    reindex.add_argument("index", nargs="?", help="with 'rollback': the index to roll back")
    reindex.add_argument("--re-embed", action="store_true",
                         help="embed every video again even when its stored vector was made by the current model")
    reindex.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    reindex.set_defaults(handler=run_reindex)


def print_report(report) -> None:
    print(f"source:   {report.source}")
    loaded = ", ".join(f"{name} {value}" for name, value in sorted(report.loaded.items()) if value) or "nothing new"
    print(f"loaded:   {report.total_loaded} ({loaded})")
    print(f"skipped:  {sum(report.skipped.values())} already stored "
          f"({', '.join(f'{k} {v}' for k, v in sorted(report.skipped.items()) if v) or 'none'})")
    print(f"rejected: {report.rejected} ({len(report.row_errors)} input rows, "
          f"{len(report.bulk_failures)} documents refused by Elasticsearch)")
    for error in report.row_errors[:MAX_PRINTED_ERRORS]:
        print(f"  {error}")
    for failure in report.bulk_failures[:MAX_PRINTED_ERRORS]:
        print(f"  id={failure.id} index={failure.index} status={failure.status}: {failure.reason}")
    if report.rejected > 2 * MAX_PRINTED_ERRORS:
        print(f"  ... {report.rejected - 2 * MAX_PRINTED_ERRORS} more")
    print(f"elapsed:  {report.elapsed_seconds:.1f} s (embedding {report.embed_seconds:.1f} s, "
          f"bulk {report.bulk_seconds:.1f} s, profiles {report.profile_seconds:.1f} s)")
    processed = report.total_loaded + sum(report.skipped.values())
    processed_rate = processed / report.elapsed_seconds if report.elapsed_seconds else 0.0
    print(f"rate:     {report.docs_per_second:.0f} documents per second written, "
          f"{processed_rate:.0f} per second processed (written + skipped)")
    lookups = report.cache_hits + report.cache_misses
    rate = report.cache_hits / lookups if lookups else 0.0
    print(f"cache:    {report.cache_hits} hits, {report.cache_misses} misses ({rate:.1%} hit rate)")
    print("counts:   " + ", ".join(f"{name} {value}" for name, value in report.index_counts.items()))


def run_ingest(args: argparse.Namespace, settings: Settings) -> int:
    client = make_client(settings, request_timeout_s=120)
    show_progress = not args.no_progress
    try:
        if args.source == "movielens":
            from indexing.movielens import ingest_movielens

            report = ingest_movielens(client, settings, args.path, show_progress=show_progress)
        elif args.source == "youtube":
            from indexing.youtube import ingest_youtube

            report = ingest_youtube(client, settings, args.path, show_progress=show_progress)
        else:
            from indexing.jsonl import ingest_jsonl

            report = ingest_jsonl(client, settings, args.path, show_progress=show_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}")
        return 2
    finally:
        client.close()
    print_report(report)
    return 1 if report.bulk_failures else 0


def run_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from indexing.reindex import ReindexError, reindex, rollback

    client = make_client(settings, request_timeout_s=120)
    try:
        if args.target == "rollback":
            if not args.index:
                print("error: `vidrec reindex rollback` needs the index name, for example videos")
                return 2
            old, new = rollback(client, settings, args.index)
            print(f"{settings.alias(args.index)}: {old} -> {new}")
            return 0
        result = reindex(client, settings, args.target, re_embed=args.re_embed, show_progress=not args.no_progress)
        print(f"{result.alias}: {result.old_index} -> {result.new_index}, {result.documents} documents "
              f"({result.recopied} copied again after the scan, {result.embedded} embedded) "
              f"in {result.seconds:.1f} s; previous index kept for `vidrec reindex rollback {args.target}`")
        return 0
    except (ReindexError, ValueError) as error:
        print(f"error: {error}")
        return 1
    finally:
        client.close()
