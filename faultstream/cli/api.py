"""`faultstream api`: the HTTP API (projections/api.py) on a recorded history, no broker
needed: a DuckDB file nobody writes, or the read models a projector publishes."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.logs import add_log_format_option, configure_logging

log = logging.getLogger("faultstream.api")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "api",
        parents=[common],
        help="serve the HTTP API on a history (no broker needed)",
        description="Serve /api/circuit-breakers, /api/circuits/{kind}/{id}, "
        "/api/checkpoints/{task_id}, /api/alerts, /healthz, /readyz, /metrics and "
        "/openapi.json from a DuckDB file or the projector's read models. Stops cleanly on "
        "SIGTERM or Ctrl-C.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help="DuckDB file (default: storage.duckdb_path)")
    where.add_argument(
        "--read-models", metavar="DIR", help="the Parquet read models a projector publishes"
    )
    parser.add_argument("--port", type=int, help="port (default: http.projector_port, 8765)")
    parser.add_argument(
        "--host",
        help="address to listen on (default: http.host, 127.0.0.1; 0.0.0.0 for every interface)",
    )
    add_log_format_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from faultstream.cli.dashboard import check_history
    from faultstream.projections.api import ApiServer
    from faultstream.projections.queries import History

    port = args.port if args.port is not None else settings.http.projector_port
    if not 0 < port < 65536:
        raise FaultstreamError(f"--port: {port} is not a port number (1-65535)")
    host = args.host or settings.http.host
    db = None if args.read_models else (args.db or settings.storage.duckdb_path)
    check_history(db, args.read_models, db_flag="--db" if args.db else "storage.duckdb_path")
    configure_logging(args.log_format, "api")
    if args.read_models:
        history = History.from_read_models(args.read_models, settings.core)
        where = f"read models {args.read_models}"
    else:
        history = History.from_db(db, settings.core)
        where = f"DuckDB file {db}"
    try:
        try:
            server = ApiServer(history, host, port)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise FaultstreamError(
                f"--host {host} --port {port}: cannot listen ({reason})"
            ) from None
        stop = threading.Event()

        def on_signal(*_: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        server.start()
        url = f"http://{host}:{server.port}"
        log.info("HTTP API on %s (%s)", url, where, extra={"fields": {"url": url}})
        while not stop.wait(0.5):
            pass
        log.info("HTTP API stopping")
        server.close()
    finally:
        history.close()
    return 0
