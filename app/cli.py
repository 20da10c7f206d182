"""The `vidrec` command line. Run `vidrec --help` for the sub-commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from app.settings import SettingsError, load_settings


def command_group(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    """Return the sub-command group ``name`` (``train``, ``evaluate``), creating it unless another module did.

    Several modules add commands under ``vidrec train`` and ``vidrec evaluate``, so
    each looks the group up before it adds its own command.
    """
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help_text)
        return parser.add_subparsers(dest=f"{name}_command", required=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidrec", description="Video recommendation and search on Elasticsearch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)

    from indexing import cli as indexing_cli
    from app import serve_cli

    indexing_cli.register(subparsers)
    serve_cli.register(subparsers)
    for module_name in ("indexing.ingest_cli", "ranking.cli", "app.candidates_cli", "app.demo"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"Invalid configuration: {error}", file=sys.stderr)
        return 2
    from indexing.es_node import EsNodeError

    try:
        return int(args.handler(args, settings) or 0)
    except EsNodeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
