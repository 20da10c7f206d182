"""`vidrec serve`: run the API with uvicorn."""

from __future__ import annotations

import argparse
import logging

from app.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.set_defaults(handler=run_serve)

    from app import worker

    worker.register(subparsers)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.main import create_app

    # httpx logs every call to a ranking worker at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0
