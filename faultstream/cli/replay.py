"""`faultstream replay`: run a recorded history through the core, print what it derives."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError

if TYPE_CHECKING:
    from faultstream.processors.offline.sources import HistorySource, Window

SHOWN_INVALID = 5


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The history source group and its time window, shared by replay and tune."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", metavar="FILE.jsonl", help="a JSON Lines history ('-' for stdin)"
    )
    source.add_argument("--db", metavar="PATH", help="a history DuckDB file nobody writes")
    source.add_argument("--read-models", metavar="DIR", help="the projector's Parquet read models")
    source.add_argument(
        "--from-kafka",
        action="store_true",
        help="<prefix>.ordered from the beginning to its end now ([kafka] settings)",
    )
    parser.add_argument(
        "--since", metavar="TIME", help="only inputs at or after TIME (epoch ms or ISO-8601)"
    )
    parser.add_argument(
        "--until", metavar="TIME", help="only inputs before TIME (epoch ms or ISO-8601)"
    )


def source_from_args(args: argparse.Namespace, settings: Settings) -> tuple[HistorySource, Window]:
    from faultstream.events.times import parse_time
    from faultstream.processors.offline.sources import Window, open_source

    window = Window(
        parse_time(args.since, "--since") if args.since else None,
        parse_time(args.until, "--until") if args.until else None,
    )
    source = open_source(
        input_path=args.input,
        db=args.db,
        read_models=args.read_models,
        from_kafka=args.from_kafka,
        kafka=settings.kafka,
        skip_invalid=getattr(args, "skip_invalid", False),
    )
    return source, window


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "replay",
        parents=[common],
        help="run a recorded history through the core and write the derived records",
        description="Replay worker events and control records through the circuit and "
        "recovery core; write circuit_state_changed, recovery_command and (at each TICK) "
        "circuit_figures records as JSON lines, in order. The same history always gives "
        "the same bytes.",
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--output", metavar="FILE.jsonl", help="where to write (default: stdout; '-' too)"
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip bad lines and report them on stderr instead of stopping at the first",
    )
    parser.add_argument(
        "--diff",
        action="store_true",
        help="print only what these settings (--config) would have done differently from "
        "what really happened (needs --db, --read-models or --from-kafka)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "compiled", "core"),  # processors.replay.Engine, not imported at start
        default="auto",
        help="core: FleetCore, the specification, one record at a time; compiled: the "
        "numba core over the whole history at once (the same bytes; ~13 M events/s once "
        "encoded); auto (default): compiled when the source reads as columns (--db, "
        "--read-models, a JSON Lines file over 32 MiB) and it can be exact, FleetCore "
        "otherwise. The summary line says which ran and why",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from faultstream.processors.offline.replay import replay_diff, replay_source

    if args.output not in (None, "-") and Path(args.output).is_dir():
        # Said before the replay: the output is written aside and renamed over it at the end.
        raise FaultstreamError(f"--output {args.output}: a directory, not a file")
    source, window = source_from_args(args, settings)
    with first_run_hint():
        if args.diff:
            replay_diff(source, args.output, settings.core, window, engine=args.engine)
            return 0
        stats = replay_source(source, args.output, settings.core, window, engine=args.engine)
    for error in stats.invalid[:SHOWN_INVALID]:
        print(f"faultstream replay: skipped {error}", file=sys.stderr)
    if len(stats.invalid) > SHOWN_INVALID:
        print(
            f"faultstream replay: … and {len(stats.invalid) - SHOWN_INVALID} more invalid lines",
            file=sys.stderr,
        )
    print(f"faultstream replay: {stats.summary()}", file=sys.stderr)
    return 0


@contextmanager
def first_run_hint(after_s: float = 3.0) -> Iterator[None]:
    """Say why, when a replay is still busy after `after_s` because the fast paths are
    compiling (their first run on this machine; later runs load them)."""
    from faultstream.processors.offline.jit import compiling

    def hint() -> None:
        if compiling():
            print(
                "faultstream replay: compiling the fast paths on their first run here "
                "(about 2 minutes; later runs load them)",
                file=sys.stderr,
                flush=True,
            )

    timer = threading.Timer(after_s, hint)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
