"""The `faultstream` command line: a thin composition root over the packages.

Each subcommand lives in its own module here with a `register(subparsers, common)`
function; the module adds its parser and sets `run=function(args, settings) -> int`.
A module's top-level imports stay within the base install (`pip install faultstream`):
the processor, history and dashboard packages are imported inside `run`, so every
`--help` works without extras and a missing extra is said in one line (faultstream.extras).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from faultstream.events.config import Settings, load_settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.extras import (
    EXTRA_OF_COMMAND,
    MissingExtraError,
    extra_for_import_error,
    require_extra,
)

SUBCOMMANDS = [
    "broker",
    "topics",
    "emit",
    "commands",
    "alerts",
    "circuits",
    "processor",
    "replay",
    "tune",
    "simulate",
    "demo",
    "projector",
    "api",
    "dashboard",
    "report",
]


class CliError(FaultstreamError):
    """A usage problem the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (the full usage is behind --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


# File names may be any bytes on POSIX; every other argument ends up in a record, a topic
# or a JSON line, which hold only text.
_PATH_FLAGS = frozenset(
    {"--config", "--input", "--output", "--db", "--read-models", "--scenario", "--state-dir"}
)


def _version() -> str:
    try:
        return metadata.version("faultstream")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_config_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        default=default,
        help="settings file (default: $FAULTSTREAM_CONFIG or ./faultstream.toml if present); "
        "any setting can also come from FAULTSTREAM_<SECTION>__<NAME>",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="faultstream",
        description="Event-sourced fault tolerance for fleets of test workers: circuit "
        "breakers and recovery commands derived from worker events on Kafka.",
    )
    _add_config_option(parser, None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Each command takes --config as well. SUPPRESS: a command's parser sets `config` only
    # when --config follows the command, so it never overwrites one given before it.
    common = _Parser(add_help=False)
    _add_config_option(common, argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"faultstream.cli.{name}")
        except ImportError as exc:
            # A module that imports an extra at its top still leaves the others usable.
            extra = extra_for_import_error(exc, name)
            if extra is None:
                raise
            _register_missing(subparsers, common, name, extra)
            continue
        module.register(subparsers, common)
    return parser


def _register_missing(
    subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser, name: str, extra: str
) -> None:
    parser = subparsers.add_parser(
        name, parents=[common], help=f"(needs the [{extra}] extra)", add_help=False
    )
    parser.set_defaults(missing_extra=extra)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if arg in SUBCOMMANDS), None)
    prog = f"faultstream {command}" if command else "faultstream"
    undecodable = _undecodable_argument(argv)
    if undecodable is not None:
        _say(prog, f"{undecodable}: not valid UTF-8 text")
        return 2
    try:
        args, unknown = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    missing_extra = getattr(args, "missing_extra", None)
    if missing_extra is not None:  # before its arguments, which nothing here knows
        _say(prog, str(MissingExtraError(missing_extra)))
        return 2
    if unknown:  # said here, where the command is known, not by the top-level parser
        _say(prog, f"unrecognized arguments: {' '.join(unknown)} (see `{prog} --help`)")
        return 2
    try:
        if args.command in EXTRA_OF_COMMAND:  # before any work, not halfway through it
            require_extra(EXTRA_OF_COMMAND[args.command])
        settings: Settings = load_settings(args.config)
        return int(args.run(args, settings) or 0)
    except FaultstreamError as exc:
        _say(prog, str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        extra = extra_for_import_error(exc, args.command) if isinstance(exc, ImportError) else None
        if extra is not None:  # an import inside `run` the upfront check did not cover
            _say(prog, str(MissingExtraError(extra)))
            return 2
        # The last resort of "never a traceback"; FAULTSTREAM_DEBUG=1 shows it.
        if os.environ.get("FAULTSTREAM_DEBUG"):
            raise
        _say(
            prog, f"unexpected error: {type(exc).__name__}: {exc} (FAULTSTREAM_DEBUG=1 shows where)"
        )
        return 1


def _say(prog: str, message: str) -> None:
    """One line on stderr, whatever line breaks the message holds."""
    print(f"{prog}: {' '.join(message.splitlines())}", file=sys.stderr)


def _undecodable_argument(argv: Sequence[str]) -> str | None:
    """The flag (or position) of an argument the shell passed as bytes that are not UTF-8:
    Python keeps them as lone surrogates, which cannot be encoded later."""
    previous = ""
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            flag, equals, _ = arg.partition("=")
            if arg.startswith("--") and equals:
                name = flag
            elif previous.startswith("-") and not arg.startswith("-"):
                name = previous
            else:
                name = f"argument {position}"
            if name not in _PATH_FLAGS:
                return name
        previous = arg
    return None


def run() -> None:
    sys.exit(main())
