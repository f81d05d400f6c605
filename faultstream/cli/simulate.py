"""`faultstream simulate`: write a simulated fleet's closed-loop history as JSON lines.

The fleet runs live against the embedded core and the reference coordinator (the retries
it runs are the ones the commands asked for); the file holds its worker events and TICKs
in order, so replaying it gives the same derived records.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from faultstream.events.config import CoreSettings, Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import DerivedRecord
from faultstream.processors.coordinator import Coordinator
from faultstream.processors.simulator import FleetSimulator, load_scenario, parse_duration_ms

if TYPE_CHECKING:  # DuckDB and pyarrow (the [history] extra): imported where they run
    from faultstream.projections.embedded import EmbeddedPipeline
    from faultstream.projections.tables import HistoryWriter


@dataclass
class SimulationRun:
    simulator: FleetSimulator
    pipeline: EmbeddedPipeline
    coordinator: Coordinator


def run_embedded_simulation(
    *,
    core_settings: CoreSettings,
    scenario_path: str | Path | None = None,
    seed: int = 7,
    workers: int | None = None,
    duration_ms: int | None = None,
    writer: HistoryWriter | None = None,
    tap: IO[str] | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimulationRun:
    """Run a scenario through the embedded pipeline, closed-loop; closes the pipeline."""
    run = build_embedded_simulation(
        core_settings=core_settings,
        scenario_path=scenario_path,
        seed=seed,
        workers=workers,
        duration_ms=duration_ms,
        writer=writer,
        tap=tap,
    )
    return finish_embedded_simulation(run, progress)


def build_embedded_simulation(
    *,
    core_settings: CoreSettings,
    scenario_path: str | Path | None = None,
    seed: int = 7,
    workers: int | None = None,
    duration_ms: int | None = None,
    writer: HistoryWriter | None = None,
    tap: IO[str] | None = None,
) -> SimulationRun:
    """The fleet wired closed-loop to an embedded pipeline, not run yet: subscribe to its
    `pipeline` to see the derived records as the core makes them (with its state then)."""
    from faultstream.projections.embedded import EmbeddedPipeline, EmbeddedTransport

    scenario = load_scenario(scenario_path)
    pipeline = EmbeddedPipeline(core_settings, writer=writer, tap=tap)
    inbox: list[DerivedRecord] = []
    pipeline.subscribe(inbox.extend)

    def drain() -> list[DerivedRecord]:
        taken = inbox[:]
        inbox.clear()
        return taken

    coordinator = Coordinator(core_settings, source=drain)
    try:
        simulator = FleetSimulator(
            scenario,
            transport=EmbeddedTransport(pipeline),
            send_control=pipeline.ingest,
            coordinator=coordinator,
            seed=seed,
            workers=workers,
            duration_ms=duration_ms,
        )
    except BaseException:  # a scenario that does not fit this fleet: no history is left
        pipeline.close()
        raise
    return SimulationRun(simulator, pipeline, coordinator)


def finish_embedded_simulation(
    run: SimulationRun, progress: Callable[[float], None] | None = None
) -> SimulationRun:
    """Run a built simulation to its end; closes the pipeline."""
    try:
        run.simulator.run(progress)
        run.coordinator.pump()
    finally:
        run.pipeline.close()
    return run


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        metavar="FILE.toml",
        help="scenario file, or a built-in one by name: 'default' (the default) or 'rules' "
        "(a flaky worker, a throttled GPU and a ladder rung that never works: what the "
        "failure-rate, slow-call, outlier and adaptive rules catch; the settings that turn "
        "them on are in processors/simulator/rules.toml)",
    )
    parser.add_argument("--workers", type=_positive_int, help="fleet size (default: scenario's)")
    parser.add_argument(
        "--duration", metavar="1h", help="simulated fleet time, e.g. 1h, 20m (default: scenario's)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")


def duration_arg(args: argparse.Namespace) -> int | None:
    if args.duration is None:
        return None
    return parse_duration_ms(args.duration, name="--duration")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "simulate",
        parents=[common],
        help="write a simulated fleet's history (worker events and TICKs) as JSON lines",
        description="Run the simulated fleet closed-loop against the embedded core and the "
        "reference coordinator, and write its input history for replay and tune.",
    )
    add_fleet_arguments(parser)
    parser.add_argument("--output", required=True, metavar="FILE.jsonl", help="'-' for stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    duration_ms = duration_arg(args)
    if args.output == "-":
        result = _simulate(args, settings, duration_ms, sys.stdout)
    else:
        try:
            out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise FaultstreamError(f"--output {args.output}: {exc.strerror}") from None
        with out:
            result = _simulate(args, settings, duration_ms, out)
    print(
        f"{result.pipeline.inputs} records ({len(result.simulator.workers)} workers, "
        f"{result.simulator.duration_ms // 60_000} min, seed {args.seed}) "
        f"→ {args.output}; {result.pipeline.derived} derived records in the live run",
        file=sys.stderr,
    )
    return 0


def _simulate(
    args: argparse.Namespace, settings: Settings, duration_ms: int | None, out: IO[str]
) -> SimulationRun:
    return run_embedded_simulation(
        core_settings=settings.core,
        scenario_path=args.scenario,
        seed=args.seed,
        workers=args.workers,
        duration_ms=duration_ms,
        tap=out,
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value
