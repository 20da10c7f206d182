"""`vidrec es ...`, `vidrec indices ...`: the local node and the index lifecycle.

Each ``register_*`` function adds its sub-commands to the top-level parser in
``app.cli``; each handler takes the parsed arguments and Settings and returns
an exit code.
"""

from __future__ import annotations

import argparse
import sys
import time

from app.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    es = subparsers.add_parser("es", help="manage the local Elasticsearch node on 127.0.0.1")
    es_sub = es.add_subparsers(dest="es_command", required=True)
    for name, text in (("start", "fetch (first time), configure and start the node; wait for yellow health"),
                       ("stop", "stop the node by its pid"),
                       ("status", "say whether the node runs and its health"),
                       ("logs", "print the last lines of the node's log")):
        command = es_sub.add_parser(name, help=text)
        command.add_argument("--port", type=int, default=None, help="HTTP port (default VIDREC_ES_PORT, 9200)")
        if name == "logs":
            command.add_argument("-n", "--lines", type=int, default=50, help="number of lines (default 50)")
        command.set_defaults(handler=run_es)

    indices = subparsers.add_parser("indices", help="create and list vidrec's indices")
    indices_sub = indices.add_subparsers(dest="indices_command", required=True)
    indices_sub.add_parser("create", help="create every missing index behind its alias").set_defaults(
        handler=run_indices)
    indices_sub.add_parser("list", help="print alias, index, documents and size").set_defaults(handler=run_indices)
    delete = indices_sub.add_parser("delete", help="delete every index under VIDREC_INDEX_PREFIX")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")
    delete.set_defaults(handler=run_indices)


def run_es(args: argparse.Namespace, settings: Settings) -> int:
    from indexing import es_node

    if args.es_command == "start":
        started = time.monotonic()
        print(es_node.start(settings, args.port))
        print(f"(`vidrec es start` took {time.monotonic() - started:.1f} s)")
        return 0
    if args.es_command == "stop":
        print(es_node.stop(settings, args.port))
        return 0
    if args.es_command == "status":
        running, text = es_node.status(settings, args.port)
        print(text)
        return 0 if running else 3
    paths = es_node.node_paths(settings, args.port)
    print(es_node.log_tail(paths, args.port or settings.es_port, args.lines))
    return 0


def run_indices(args: argparse.Namespace, settings: Settings) -> int:
    from app.es_client import cluster_health, make_client
    from indexing import indices

    client = make_client(settings)
    if cluster_health(client) is None:
        print(f"Elasticsearch at {settings.es_url} does not answer. Start it with `vidrec es start` "
              "or set VIDREC_ES_URL.", file=sys.stderr)
        return 2
    if args.indices_command == "create":
        for alias, index, created in indices.create_all(client, settings):
            print(f"{alias:32} -> {index:40} {'created' if created else 'exists'}")
        return 0
    if args.indices_command == "delete":
        if not args.yes:
            print(f"This deletes every index under the prefix {settings.index_prefix!r}; "
                  "run again with --yes to confirm.", file=sys.stderr)
            return 2
        for index in indices.delete_all(client, settings):
            print(f"deleted {index}")
        return 0
    print(f"{'alias':32} {'index':40} {'docs':>10} {'size':>10}")
    for row in indices.list_indices(client, settings):
        docs = "starting" if row.docs is None else str(row.docs)
        size = "-" if row.size_bytes is None else indices.format_size(row.size_bytes)
        print(f"{row.alias:32} {row.index or '(missing)':40} {docs:>10} {size:>10}")
    return 0
