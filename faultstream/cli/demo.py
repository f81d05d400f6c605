"""`faultstream demo`: the simulated fleet on the embedded pipeline, history in DuckDB.

Runs the built-in scenario (or `--scenario`) closed-loop through the same core the Faust
app runs, leaves the history in the DuckDB file, and reports each incident: when it began,
when and how it was detected, which rule caught it, what was done, and how many tasks
recovered (`demo_report.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.extras import require_extra

from .arguments import topic_prefix
from .demo_report import REPORT_HEADER, IncidentReport, format_report, incident_reports
from .simulate import SimulationRun, add_fleet_arguments, duration_arg, run_embedded_simulation

__all__ = ["REPORT_HEADER", "IncidentReport", "format_report", "incident_reports", "run_demo"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "demo",
        parents=[common],
        help="run the simulated fleet on the embedded pipeline and keep its history",
        description="Simulate a fleet with scripted incidents, closed-loop with the core and "
        "the reference coordinator, and leave the history in a DuckDB file for the dashboard.",
    )
    add_fleet_arguments(parser)
    parser.add_argument("--db", metavar="PATH", help="DuckDB file (default: storage.duckdb_path)")
    kafka = parser.add_argument_group("through Kafka")
    kafka.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="run through Kafka with `faultstream processor` and `faultstream projector`",
    )
    kafka.add_argument(
        "--prefix",
        type=topic_prefix,
        help="topic prefix of the run (default: a fresh demo-<seed>-<id>, so runs never mix)",
    )
    kafka.add_argument(
        "--read-models",
        metavar="DIR",
        help="where the projector publishes read models (default: a temporary dir)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    db_path = Path(args.db or settings.storage.duckdb_path)
    if db_path.is_dir():
        flag = "--db" if args.db else "storage.duckdb_path"
        raise FaultstreamError(f"{flag} {db_path}: a directory, not a DuckDB file")
    if args.bootstrap_servers:
        return _run_on_kafka(args, settings, db_path)
    if args.prefix or args.read_models:
        flag = "--prefix" if args.prefix else "--read-models"
        raise FaultstreamError(f"{flag}: only with --bootstrap-servers")
    started = time.perf_counter()
    result = run_demo(
        settings,
        db_path,
        scenario_path=args.scenario,
        seed=args.seed,
        workers=args.workers,
        duration_ms=duration_arg(args),
        progress=_progress_bar(),
    )
    elapsed = time.perf_counter() - started
    sim = result.simulator
    print(
        f"Simulated {len(sim.workers)} workers for {sim.duration_ms // 60_000} min "
        f"(seed {sim.seed}) in {elapsed:.1f} s: {result.pipeline.inputs} input records, "
        f"{result.pipeline.derived} derived records.\n"
    )
    print(REPORT_HEADER)
    for report in incident_reports(db_path, sim.incidents):
        print(format_report(report))
    print(f"History: {db_path}\nOpen the dashboard on it:  faultstream dashboard --db {db_path}")
    return 0


def _run_on_kafka(args: argparse.Namespace, settings: Settings, db_path: Path) -> int:
    # The run starts `faultstream processor` too, whose failure would be a child's.
    require_extra("processor", "--bootstrap-servers")
    from faultstream.demo_kafka import default_prefix, run_kafka_demo
    from faultstream.events.admin import KafkaAdminError
    from faultstream.projections.read_models import MANIFEST

    from .processor import check_broker

    kafka = settings.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    settings = settings.model_copy(update={"kafka": kafka})
    prefix = args.prefix or default_prefix(args.seed)
    read_models = Path(args.read_models) if args.read_models else None
    if read_models is not None and (read_models / MANIFEST).exists():
        raise FaultstreamError(f"--read-models {read_models}: holds another history already")
    check_broker(kafka)
    started = time.perf_counter()
    try:
        result = run_kafka_demo(
            settings,
            db_path,
            prefix=prefix,
            read_models_dir=read_models,
            scenario_path=args.scenario,
            seed=args.seed,
            workers=args.workers,
            duration_ms=duration_arg(args),
            progress=_progress_bar(),
        )
    except KafkaAdminError as exc:
        raise FaultstreamError(f"--bootstrap-servers {args.bootstrap_servers}: {exc}") from None
    elapsed = time.perf_counter() - started
    sim = result.simulator
    services = " and ".join(f"`faultstream {name}`" for name in result.started) or "nothing"
    print(
        f"Simulated {len(sim.workers)} workers for {sim.duration_ms // 60_000} min "
        f"(seed {sim.seed}) through Kafka {args.bootstrap_servers}, prefix {prefix}, "
        f"in {elapsed:.1f} s: {result.inputs} input records, {result.derived} derived "
        f"records (started and stopped {services}).\n"
    )
    print(REPORT_HEADER)
    for report in incident_reports(db_path, sim.incidents):
        print(format_report(report))
    print(f"History: {db_path}\nOpen the dashboard on it:  faultstream dashboard --db {db_path}")
    return 0


def run_demo(
    settings: Settings,
    db_path: Path,
    *,
    scenario_path: str | Path | None = None,
    seed: int = 7,
    workers: int | None = None,
    duration_ms: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimulationRun:
    """Run the demo into a fresh DuckDB file at `db_path` (an old one is replaced whole,
    and only once the new history is complete)."""
    from faultstream.projections.tables import HistoryWriter

    db_path.parent.mkdir(parents=True, exist_ok=True)
    building = db_path.with_name(db_path.name + ".building")
    _remove_db(building)
    try:
        result = run_embedded_simulation(
            core_settings=settings.core,
            scenario_path=scenario_path,
            seed=seed,
            workers=workers,
            duration_ms=duration_ms,
            writer=HistoryWriter(building),
            progress=progress,
        )
    except BaseException:
        _remove_db(building)
        raise
    _remove_db(db_path)
    os.replace(building, db_path)
    return result


def _remove_db(path: Path) -> None:
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)


def _progress_bar(width: int = 40) -> Callable[[float], None]:
    last = [-1]

    def show(fraction: float) -> None:
        percent = int(fraction * 100)
        if percent == last[0]:
            return
        last[0] = percent
        filled = int(width * fraction)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {percent:3d}%")
        if fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show
