"""`faultstream processor`: run the Faust app (processors/app.py) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import zlib

from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "processor",
        parents=[common],
        help="run the stream processor (Faust app) on Kafka",
        description="Consume worker events and control records, derive circuit transitions "
        "and recovery commands, and publish them. Several instances share the work.",
    )
    parser.add_argument(
        "--instance-id",
        default="0",
        help="names this instance: its data dir and, unless --web-port is given, its web "
        "port derive from it (default 0)",
    )
    parser.add_argument("--web-port", type=int, help="port of Faust's web server")
    parser.add_argument(
        "--naive",
        action="store_true",
        help="ingest through a Faust agent one event at a time, one decisions frame per "
        "event (the benchmark baseline)",
    )
    parser.set_defaults(run=run)


def instance_web_port(base: int, instance_id: str) -> int:
    """Distinct ports for distinct instances on one machine: base + N for instance N."""
    offset = int(instance_id) if instance_id.isdigit() else zlib.crc32(instance_id.encode()) % 1000
    return base + offset


def check_broker(bootstrap: str, timeout_s: float = 10.0) -> None:
    from confluent_kafka.admin import AdminClient

    try:
        # log_level 0: librdkafka would print a line per failed connect attempt.
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        admin.list_topics(timeout=timeout_s)
    except Exception as exc:
        raise FaultstreamError(f"cannot reach Kafka at {bootstrap} ({exc})") from None


def quiet_gc() -> None:
    """Fewer, shorter cyclic-GC pauses: full collections of the long-lived heap (Faust,
    the core's state) stalled the event loop for 40-80 ms, past the 50 ms latency target.
    What is loaded now is frozen out of collection; young collections run less often."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from faultstream.events.admin import create_topics
    from faultstream.processors.app import Topics, create_app

    kafka = settings.kafka
    check_broker(kafka.bootstrap_servers)
    create_topics(kafka)
    web_port = args.web_port or instance_web_port(settings.processor.web_port, args.instance_id)
    app = create_app(settings, instance_id=args.instance_id, web_port=web_port, naive=args.naive)
    topics = Topics.of(settings)
    worker = faust.Worker(app, loglevel="info", quiet=True)
    quiet_gc()
    print(
        f"faultstream processor {args.instance_id}: Kafka {kafka.bootstrap_servers}, "
        f"reading {topics.events} and {topics.control}, writing {topics.circuits}, "
        f"{topics.commands} and {topics.dlq} via {topics.decisions}, web port {web_port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
