"""`faultstream report`: build and fleet health from a history, for CI (docs/ci.md).

Tests run, failed, flaky and quarantined (from what the pytest plugin recorded), open
circuits, alerts, the top failure types and the trend against the previous runs, as
Markdown (for $GITHUB_STEP_SUMMARY or a pull request comment) or JSON; `--fail-on` turns
conditions into a non-zero exit for a CI gate. The queries live in
faultstream/projections/ci_report.py; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from faultstream.events.config import Settings

from . import CliError

# Where the pytest plugin keeps its embedded history (pytest's cache directory).
PYTEST_HISTORY = Path(".pytest_cache") / "d" / "faultstream" / "history.duckdb"
FAIL_ON = ("failures", "flaky", "quarantined", "new-open-circuits", "open-circuits", "alerts")
WRITER_WAIT_S = 120.0


def _conditions(text: str) -> list[str]:
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    for condition in wanted:
        if condition not in FAIL_ON:
            raise argparse.ArgumentTypeError(f"{condition!r} is not one of {', '.join(FAIL_ON)}")
    return wanted


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "report",
        parents=[common],
        help="build and fleet health: tests, flaky, quarantined, open circuits, trend",
        description="Build and fleet health from a history: tests run, failed, flaky "
        "(failed, then passed on a retry) and quarantined by the pytest plugin, open "
        "circuits, firing alerts, the top failure types, and the trend against the previous "
        "runs. Covers the runs since --since (a run id or a moment), by default the newest.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--db",
        metavar="PATH",
        help=f"DuckDB history (default: {PYTEST_HISTORY} if present, else storage.duckdb_path)",
    )
    where.add_argument(
        "--read-models", metavar="DIR", help="the Parquet read models a projector publishes"
    )
    parser.add_argument(
        "--since",
        metavar="T",
        help="a run id, or a moment (epoch ms or ISO-8601); default: the newest run",
    )
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument(
        "--fail-on",
        type=_conditions,
        action="append",
        default=[],
        metavar="CONDITIONS",
        help=f"exit 1 when any holds, comma-separated: {', '.join(FAIL_ON)}",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from faultstream.cli.dashboard import check_history
    from faultstream.projections.ci_report import build_report, failing, render_markdown
    from faultstream.projections.queries import History

    if args.read_models:
        check_history(None, args.read_models, db_flag="--read-models")
        history = History.from_read_models(args.read_models, settings.core)
    else:
        db = args.db
        flag = "--db"
        if db is None:
            db = str(PYTEST_HISTORY) if PYTEST_HISTORY.is_file() else settings.storage.duckdb_path
            flag = "--db" if PYTEST_HISTORY.is_file() else "storage.duckdb_path"
        _wait_for_writer(Path(db))  # first: the agent may not have made the file yet
        check_history(db, None, db_flag=flag)
        history = History.from_db(db, settings.core)
    try:
        report = build_report(history, args.since)
    finally:
        history.close()
    if args.format == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_markdown(report))
    conditions = [condition for group in args.fail_on for condition in group]
    reasons = failing(report, conditions)
    if reasons:
        print(f"faultstream report: failing on {', '.join(reasons)}", file=sys.stderr)
        return 1
    return 0


def _wait_for_writer(db: Path) -> None:
    """The pytest plugin's agent writes the session after pytest exits: wait for it (its
    lock) rather than read a history it has not finished."""
    from faultstream.pytest_link import HistoryLock, sibling

    lock_path = sibling(db, ".lock")
    if not lock_path.exists():
        return
    lock = HistoryLock(lock_path)
    holder = lock.acquire(WRITER_WAIT_S, note="faultstream report")
    if holder is not None:
        raise CliError(f"{db}: still being written by {holder} after {WRITER_WAIT_S:g}s")
    lock.release()
