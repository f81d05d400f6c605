"""Embedded pipeline throughput (core + DuckDB writer) and the default demo's wall time.

    .venv/bin/python bench/bench_embedded.py [--workers 200] [--duration 1h] [--repeat 5]

The simulator is excluded from the throughput figures: a closed-loop history is generated
first, then each variant ingests the same records. Baselines in the same run: the core
alone and the writer alone. The variants run interleaved, round after round, so a change in
the machine's load hits them alike; medians of `--repeat` rounds, wall time and CPU time
(the process's, all threads), and ratios to the core alone.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from faultstream.cli.demo import run_demo
from faultstream.cli.simulate import run_embedded_simulation
from faultstream.events.config import CoreSettings, load_settings
from faultstream.events.jsonl import read_input_records
from faultstream.events.models import InputRecord
from faultstream.processors.core import FleetCore
from faultstream.processors.simulator import parse_duration_ms
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.tables import HistoryWriter

EVENTS_TARGET = 200_000  # events/s, end to end
DEMO_TARGET_S = 30.0


def history(workers: int, duration_ms: int) -> list[InputRecord]:
    tap = io.StringIO()
    run_embedded_simulation(
        core_settings=CoreSettings(), workers=workers, duration_ms=duration_ms, tap=tap
    )
    return list(read_input_records(tap.getvalue().splitlines()))


def core_only(records: list[InputRecord], _: Path) -> None:
    core = FleetCore(CoreSettings())
    for record in records:
        core.process(record)


def writer_only(records: list[InputRecord], db: Path) -> None:
    with HistoryWriter(db) as writer:
        writer.append_inputs(records)


def pipeline(records: list[InputRecord], db: Path) -> None:
    embedded = EmbeddedPipeline(CoreSettings(), writer=HistoryWriter(db))
    embedded.ingest_many(records)
    embedded.close()


def timed(
    fn: Callable[[list[InputRecord], Path], None], records: list[InputRecord]
) -> tuple[float, float]:
    """(wall s, CPU s) of one run."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        fn(records, Path(tmp) / "bench.duckdb")
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--duration", default="1h")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--demo-repeat", type=int, default=3)
    args = parser.parse_args()

    records = history(args.workers, parse_duration_ms(args.duration))
    print(f"history: {len(records):,} input records ({args.workers} workers, {args.duration})\n")
    variants: dict[str, Callable[[list[InputRecord], Path], None]] = {
        "core alone (baseline)": core_only,
        "writer alone (baseline)": writer_only,
        "embedded pipeline: core + writer": pipeline,
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            runs[name].append(timed(fn, records))
    wall = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
    cpu = {name: statistics.median(c for _, c in r) for name, r in runs.items()}
    print(f"{'variant':<34}{'wall s':>8}{'records/s':>12}{'vs core':>9}{'CPU s':>8}{'vs core':>9}")
    base = "core alone (baseline)"
    for name in variants:
        print(
            f"{name:<34}{wall[name]:>8.3f}{len(records) / wall[name]:>12,.0f}"
            f"{wall[base] / wall[name]:>8.2f}x{cpu[name]:>8.3f}{cpu[base] / cpu[name]:>8.2f}x"
        )
    both = wall[base] + wall["writer alone (baseline)"]
    end_to_end = wall["embedded pipeline: core + writer"]
    print(f"\npipeline / (core alone + writer alone), wall: {end_to_end / both:.2f}")
    rate = len(records) / end_to_end
    verdict = "meets" if rate >= EVENTS_TARGET else "below"
    print(f"end to end: {rate:,.0f} records/s ({verdict} the {EVENTS_TARGET:,}/s target)")

    walls = []
    for _ in range(args.demo_repeat):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            run_demo(load_settings(), Path(tmp) / "demo.duckdb")
            walls.append(time.perf_counter() - started)
    demo = statistics.median(walls)
    verdict = "meets" if demo < DEMO_TARGET_S else "misses"
    print(
        f"default demo (50 workers, 1h): median {demo:.2f} s over {len(walls)} runs "
        f"({verdict} the < {DEMO_TARGET_S:.0f} s target)"
    )


if __name__ == "__main__":
    main()
