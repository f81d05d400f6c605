"""`faultstream processor`: run the Faust app (processors/stream/app.py) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import re
import socket
import sys
import zlib
from pathlib import Path

from faultstream.events.config import KafkaSettings, Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.locks import FileLock, LockedError
from faultstream.logs import add_log_format_option, json_line, logging_config

INSTANCE_LOCK = "instance.lock"
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
        "--host",
        help="address Faust's web server listens on (default: http.host, 127.0.0.1; it "
        "serves the decider's table, so expose it only on a trusted network)",
    )
    parser.add_argument(
        "--naive",
        action="store_true",
        help="ingest through a Faust agent one event at a time, one frame per "
        "event (the benchmark baseline)",
    )
    add_log_format_option(parser)
    parser.set_defaults(run=run)


def instance_web_port(base: int, instance_id: str) -> int:
    """Distinct ports for distinct instances on one machine: base + N for instance N."""
    offset = int(instance_id) if instance_id.isdigit() else zlib.crc32(instance_id.encode()) % 1000
    return base + offset


def lock_instance(datadir: Path, instance_id: str) -> FileLock:
    """Hold the instance's data dir for this process's life: a second processor with the
    same id would fight over its RocksDB store and web port."""
    try:
        return FileLock(datadir / INSTANCE_LOCK).acquire()
    except LockedError as exc:
        raise FaultstreamError(
            f"--instance-id {instance_id}: another instance with that id runs ({exc.holder}); "
            "give each instance its own id"
        ) from None
    except OSError as exc:
        raise FaultstreamError(f"processor.data_dir {datadir}: {exc.strerror}") from None


def check_port_free(host: str, port: int, instance_id: str) -> None:
    """Refuse now, with one line, a web port something else listens on: Faust would fail
    on it only once started, with a traceback."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the web server itself binds: a port left in TIME_WAIT by a stopped instance is
        # free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FaultstreamError(
                    f"web port {port} on {host} is in use (by another processor instance or "
                    f"another program); give instance {instance_id} its own --web-port"
                ) from None
            reason = exc.strerror or str(exc)
            raise FaultstreamError(f"--host {host}: cannot listen ({reason})") from None


def check_broker(kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Reach the cluster now, or fail with one line naming the [kafka] setting at fault."""
    from faultstream.events.kafka_connection import cluster_metadata

    cluster_metadata(kafka, timeout_s=timeout_s)


def quiet_gc() -> None:
    """Fewer, shorter cyclic-GC pauses: full collections of the long-lived heap (Faust,
    the core's state) stalled the event loop for 40-80 ms, past the 50 ms latency target.
    What is loaded now is frozen out of collection; young collections run less often."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from faultstream.processors.stream.app import instance_datadir

    instance_id = args.instance_id
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise FaultstreamError(
            f"--instance-id {instance_id!r}: use letters, digits, '.', '_' and '-' (it names "
            "a directory)"
        )
    if args.web_port is not None and not 0 < args.web_port < 65536:
        raise FaultstreamError(f"--web-port: {args.web_port} is not a port number (1-65535)")
    web_port = args.web_port or instance_web_port(settings.processor.web_port, instance_id)
    if not 0 < web_port < 65536:
        raise FaultstreamError(f"web port {web_port} of instance {instance_id}: out of range")
    # Before anything slow: a second instance with this id is refused at once.
    lock = lock_instance(instance_datadir(settings, instance_id), instance_id)
    try:
        return _serve(args, settings, args.host or settings.http.host, web_port)
    finally:
        lock.release()


def _serve(args: argparse.Namespace, settings: Settings, host: str, web_port: int) -> int:
    import faust

    from faultstream.events.admin import check_stamped_topics, create_topics
    from faultstream.processors.stream.app import Topics, create_app

    kafka = settings.kafka
    check_port_free(host, web_port, args.instance_id)
    check_broker(kafka)
    create_topics(kafka)
    check_stamped_topics(kafka)
    app = create_app(
        settings, instance_id=args.instance_id, web_port=web_port, web_host=host, naive=args.naive
    )
    topics = Topics.of(settings)
    # JSON lines replace the logging set-up Faust's worker would make; text keeps Faust's.
    json_logs = args.log_format == "json"
    config = logging_config("json", "processor") if json_logs else None
    worker = faust.Worker(app, loglevel="info", quiet=True, logging_config=config)
    quiet_gc()
    started = (
        f"faultstream processor {args.instance_id}: Kafka {kafka.bootstrap_servers}, "
        f"reading {topics.events} and {topics.control}, writing {topics.circuits}, "
        f"{topics.commands}, {topics.figures}, {topics.alerts} and {topics.dlq} via "
        f"{topics.ordered}, "
        f"web server on {host}:{web_port} (/metrics)"
    )
    if json_logs:
        started = json_line(
            "processor", started, logger="faultstream.processor",
            instance_id=args.instance_id, web_port=web_port,
        )  # fmt: skip
    print(started, file=sys.stderr, flush=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
