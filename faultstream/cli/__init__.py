"""The `faultstream` command line: a thin composition root over the packages.

Each subcommand lives in its own module here with a `register(subparsers, common)`
function; the module adds its parser and sets `run=function(args, settings) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from faultstream.events.config import Settings, load_settings
from faultstream.events.exceptions import FaultstreamError

SUBCOMMANDS = [
    "broker",
    "topics",
    "emit",
    "commands",
    "processor",
    "replay",
    "tune",
    "simulate",
    "demo",
    "projector",
    "dashboard",
]


class CliError(FaultstreamError):
    """A usage problem the user can fix; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE.toml",
        help="settings file (default: $FAULTSTREAM_CONFIG or ./faultstream.toml if present); "
        "any setting can also come from FAULTSTREAM_<SECTION>__<NAME>",
    )
    parser = argparse.ArgumentParser(
        prog="faultstream",
        description="Event-sourced fault tolerance for fleets of test workers: circuit "
        "breakers and recovery commands derived from worker events on Kafka.",
        parents=[common],
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"faultstream.cli.{name}")
        module.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings(args.config)
        return int(args.run(args, settings) or 0)
    except FaultstreamError as exc:
        print(f"faultstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def run() -> None:
    sys.exit(main())
