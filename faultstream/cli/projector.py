"""`faultstream projector`: Kafka → DuckDB, Parquet read models and the HTTP API."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from faultstream.events.config import Settings
from faultstream.logs import add_log_format_option, configure_logging


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "projector",
        parents=[common],
        help="land the processor's topics in DuckDB and serve the HTTP API",
        description="Consume ordered, circuits, commands and dlq into the DuckDB history "
        "(exactly once), publish Parquet read models, and serve the HTTP API (as `faultstream "
        "api`, with the projector's lag in /readyz and /metrics). Stops cleanly on SIGTERM or "
        "Ctrl-C.",
    )
    parser.add_argument("--db", metavar="PATH", help="DuckDB file (default: storage.duckdb_path)")
    parser.add_argument(
        "--read-models", metavar="DIR", help="read models dir (default: storage.read_models_dir)"
    )
    parser.add_argument("--port", type=int, help="HTTP API port (default: http.projector_port)")
    parser.add_argument(
        "--host",
        help="address the HTTP API listens on (default: http.host, 127.0.0.1; 0.0.0.0 for "
        "every interface)",
    )
    parser.add_argument("--no-api", action="store_true", help="do not serve the HTTP API")
    parser.add_argument(
        "--publish-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often the read models are published (default 2)",
    )
    parser.add_argument(
        "--ready-max-lag",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="/readyz answers 503 while the projector lags more than this (default 30)",
    )
    add_log_format_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from faultstream.events.exceptions import FaultstreamError
    from faultstream.projections.api import ApiServer
    from faultstream.projections.projector import Projector, ProjectorOptions
    from faultstream.projections.queries import History

    if args.publish_interval <= 0:
        raise FaultstreamError("--publish-interval: must be positive")
    if not args.ready_max_lag > 0:
        raise FaultstreamError("--ready-max-lag: must be positive")
    if args.port is not None and not 0 < args.port < 65536:
        raise FaultstreamError(f"--port: {args.port} is not a port number (1-65535)")
    storage = settings.storage.model_copy(
        update={
            key: value
            for key, value in (("duckdb_path", args.db), ("read_models_dir", args.read_models))
            if value is not None
        }
    )
    settings = settings.model_copy(update={"storage": storage})
    configure_logging(args.log_format, "projector")
    options = ProjectorOptions(
        publish_interval_s=args.publish_interval, ready_max_lag_s=args.ready_max_lag
    )
    projector = Projector(settings, options)

    def stop(*_: Any) -> None:
        projector.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    projector.start()
    server = None
    if not args.no_api:
        port = args.port or settings.http.projector_port
        host = args.host or settings.http.host
        history = History.from_read_models(storage.read_models_dir, settings.core)
        try:
            server = ApiServer(history, host, port, readiness=projector.readiness).start()
        except OSError as exc:
            projector.close()
            reason = exc.strerror or str(exc)
            raise FaultstreamError(
                f"--host {host} --port {port}: cannot listen ({reason})"
            ) from None
        url = f"http://{host}:{server.port}"
        logging.getLogger(__name__).info("HTTP API on %s", url, extra={"fields": {"url": url}})
    try:
        projector.run()
    finally:
        if server is not None:
            server.close()
    return 0
