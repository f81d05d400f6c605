"""`faultstream replay`: run a recorded history through the core, print what it derives."""

from __future__ import annotations

import argparse
import sys

from faultstream.events.config import Settings

SHOWN_INVALID = 5


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "replay",
        parents=[common],
        help="run a recorded history through the core and write the derived records",
        description="Replay worker events and control records through the circuit and "
        "recovery core; write circuit_state_changed and recovery_command records as JSON "
        "lines, in order. The same history always gives the same bytes.",
    )
    # One source of history; --db, --read-models and --from-kafka join this group later.
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", metavar="FILE.jsonl", help="a JSON Lines history ('-' for stdin)"
    )
    parser.add_argument(
        "--output", metavar="FILE.jsonl", help="where to write (default: stdout; '-' too)"
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip bad lines and report them on stderr instead of stopping at the first",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from faultstream.processors.replay import replay_jsonl

    stats = replay_jsonl(args.input, args.output, settings.core, skip_invalid=args.skip_invalid)
    for error in stats.invalid[:SHOWN_INVALID]:
        print(f"faultstream replay: skipped {error}", file=sys.stderr)
    if len(stats.invalid) > SHOWN_INVALID:
        print(
            f"faultstream replay: … and {len(stats.invalid) - SHOWN_INVALID} more invalid lines",
            file=sys.stderr,
        )
    print(f"faultstream replay: {stats.summary()}", file=sys.stderr)
    return 0
