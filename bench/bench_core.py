"""The pure core's throughput on a 1,000-worker history, against a plain baseline loop.

    .venv/bin/python bench/bench_core.py [--events N] [--compiled-events N] [--runs N]

Prints medians (the machine is shared and noisy) of:
- `FleetCore.process` over pre-decoded records (decoding kept off the hot path);
- a baseline "plain state machine": a dict of consecutive-failure counters per worker
  with a threshold, over the very same records: the floor of any per-event Python loop;
- the decode cost per JSON line (JSON -> pydantic model), paid once by replay;
- the compiled core (`processors/compiled/`) on a `--compiled-events` history: its kernel
  alone over the encoded columns (the issue's "core alone"), the encoding (strings to
  indices, once per history: the decoding kept off the hot path), the materializing of
  the derived records, and `replay_compiled` end to end. The kernel and materialize are
  timed without the circuits' figures (the transitions and commands only) and with them
  (what a replay writes, as FleetCore does: a `circuit_figures` record per circuit that
  changed, at each TICK). Its output is checked equal to FleetCore's on the `--events`
  history first.
- the compiled core straight from a DuckDB file (`replay --db`): the same history written
  by the projections' HistoryWriter, then read as columns (`input_columns(window,
  REPLAY_COLUMNS)`), `encode_table`, the kernel, materialize, and all four end to end;
  against the baseline of the records path from the same file (`inputs()` building a
  pydantic record per row, then `replay_compiled`), timed once: it is slow. Both are
  checked equal first (and FleetCore's, through a DuckDB file, on `--events`).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from histories import fleet_history

from faultstream.events.jsonl import parse_input_line
from faultstream.events.models import derived_to_json
from faultstream.processors.compiled import (
    encode_history,
    encode_table,
    materialize,
    replay_compiled,
    replay_compiled_table,
    run,
)
from faultstream.processors.core import FleetCore
from faultstream.processors.offline.sources import REPLAY_COLUMNS, DuckDBSource
from faultstream.projections.tables import HistoryWriter

TARGET_EVENTS_PER_S = 5_000_000


def core_loop(records: list) -> float:
    core = FleetCore()
    process = core.process
    started = time.perf_counter()
    for record in records:
        process(record)
    return time.perf_counter() - started


def baseline_loop(records: list) -> float:
    """Consecutive failures per worker, open at 5: no time, no recovery, no dedup."""
    failures: dict[str, int] = {}
    opened: set[str] = set()
    started = time.perf_counter()
    for record in records:
        kind = record.kind
        if kind == "FAILURE":
            count = failures.get(record.worker_id, 0) + 1
            failures[record.worker_id] = count
            if count >= 5:
                opened.add(record.worker_id)
        elif kind == "SUCCESS":
            failures[record.worker_id] = 0
    return time.perf_counter() - started


def decode_per_line_us(records: list, sample: int) -> float:
    lines = [record.model_dump_json() for record in records[:sample]]
    started = time.perf_counter()
    for line in lines:
        parse_input_line(line)
    return (time.perf_counter() - started) / len(lines) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compiled-events", type=int, default=1_000_000)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile top 15")
    args = parser.parse_args()

    records = fleet_history(workers=args.workers, events=args.events)
    outputs = _count_outputs(records)
    core_runs, base_runs = [], []
    for _ in range(args.runs):  # interleaved, so drifts in machine load hit both alike
        core_runs.append(core_loop(records))
        base_runs.append(baseline_loop(records))
    decode_us = statistics.median(decode_per_line_us(records, 20_000) for _ in range(3))

    n = len(records)
    core_s, base_s = statistics.median(core_runs), statistics.median(base_runs)
    print(f"history: {n:,} records, {args.workers:,} workers, {outputs:,} derived records")
    print(f"{'loop':<34}{'median s':>10}{'events/s':>14}{'vs baseline':>13}")
    print(f"{'baseline: dict of counters':<34}{base_s:>10.3f}{n / base_s:>14,.0f}{1.0:>12.1f}x")
    print(f"{'FleetCore.process':<34}{core_s:>10.3f}{n / core_s:>14,.0f}{core_s / base_s:>12.1f}x")
    decode = f"{1e6 / decode_us:>14,.0f}   {decode_us:.1f} us/line"
    print(f"{'decode JSON line -> model':<34}{'':>10}{decode}")
    print(
        f"target {TARGET_EVENTS_PER_S:,} events/s: core at {n / core_s / TARGET_EVENTS_PER_S:.1%}"
        f", baseline at {n / base_s / TARGET_EVENTS_PER_S:.1%}"
    )
    big = fleet_history(workers=args.workers, events=args.compiled_events)
    compiled_rows(records, big, args.workers, args.runs)
    duckdb_rows(records, big, args.workers, args.runs)
    if args.profile:
        profiler = cProfile.Profile()
        core = FleetCore()
        profiler.enable()
        for record in records:
            core.process(record)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def compiled_rows(small: list, records: list, workers: int, runs: int) -> None:
    """The compiled core's rows; numba compiles (or loads its cache) in the first call."""
    fleet = FleetCore()
    expected = [derived_to_json(o) for r in small for o in fleet.process(r)]
    if [derived_to_json(o) for o in replay_compiled(small)] != expected:
        raise SystemExit("compiled core: output differs from FleetCore's")
    n = len(records)
    encode_s, kernel_s, materialize_s, total_s = [], [], [], []
    figures_kernel_s, figures_materialize_s = [], []
    for _ in range(runs):
        started = time.perf_counter()
        encoded = encode_history(records)
        encode_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        log = run(encoded, figures=False)
        kernel_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        derived = materialize(log, encoded)
        materialize_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        log = run(encoded)
        figures_kernel_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        with_figures = len(materialize(log, encoded))
        figures_materialize_s.append(time.perf_counter() - started)
        del log
    for _ in range(min(runs, 3)):
        started = time.perf_counter()
        replay_compiled(records)
        total_s.append(time.perf_counter() - started)
    kernel, enc = statistics.median(kernel_s), statistics.median(encode_s)
    mat, total = statistics.median(materialize_s), statistics.median(total_s)
    figures_kernel = statistics.median(figures_kernel_s)
    figures_mat = statistics.median(figures_materialize_s)
    print(f"\ncompiled core: {n:,} records, {workers:,} workers, {len(derived):,} derived records"
          f" ({with_figures:,} with the figures)")  # fmt: skip
    print(f"{'step':<34}{'median s':>10}{'events/s':>14}{'per unit':>18}")
    print(f"{'kernel alone (encoded columns)':<34}{kernel:>10.3f}{n / kernel:>14,.0f}"
          f"{kernel / n * 1e9:>12.0f} ns/ev")  # fmt: skip
    print(f"{'kernel alone, with figures':<34}{figures_kernel:>10.3f}{n / figures_kernel:>14,.0f}"
          f"{figures_kernel / n * 1e9:>12.0f} ns/ev")  # fmt: skip
    print(f"{'encode (once per history)':<34}{enc:>10.3f}{n / enc:>14,.0f}"
          f"{enc / n * 1e6:>12.2f} us/ev")  # fmt: skip
    print(f"{'materialize derived records':<34}{mat:>10.3f}{'':>14}"
          f"{mat / max(1, len(derived)) * 1e6:>10.2f} us/record")  # fmt: skip
    print(f"{'materialize, with figures':<34}{figures_mat:>10.3f}{'':>14}"
          f"{figures_mat / max(1, with_figures) * 1e6:>10.2f} us/record")  # fmt: skip
    print(f"{'replay_compiled end to end':<34}{total:>10.3f}{n / total:>14,.0f}")
    target = TARGET_EVENTS_PER_S
    print(
        f"target {target:,} events/s: compiled kernel at {n / kernel / target:.0%}, "
        f"end to end at {n / total / target:.0%}"
    )


def written(records: list, directory: str) -> DuckDBSource:
    """The history in a DuckDB file, as the embedded pipeline stores it."""
    Path(directory).mkdir(exist_ok=True)
    writer = HistoryWriter(f"{directory}/history.duckdb")
    writer.append_inputs(records, range(len(records)))
    writer.close()
    return DuckDBSource(f"{directory}/history.duckdb")


def duckdb_rows(small: list, records: list, workers: int, runs: int) -> None:
    """`replay --db` through the compiled core from columns, step by step (without the
    figures) and end to end (with them, as a replay writes; excluding the JSON writing),
    against the records path from the same file."""
    with tempfile.TemporaryDirectory() as directory:
        fleet = FleetCore()
        expected = [derived_to_json(o) for r in small for o in fleet.process(r)]
        source = written(small, f"{directory}/small")
        table = source.input_columns(columns=REPLAY_COLUMNS)
        if [derived_to_json(o) for o in replay_compiled_table(table)] != expected:
            raise SystemExit("compiled core from DuckDB columns: output differs from FleetCore's")
        started = time.perf_counter()
        source = written(records, f"{directory}/big")
        write_s = time.perf_counter() - started
        read_s, encode_s, kernel_s, materialize_s, total_s = [], [], [], [], []
        for _ in range(runs):  # the steps, then end to end, interleaved
            derived = steps_derived = None  # the last run's records: not alive while timing
            started = time.perf_counter()
            table = source.input_columns(columns=REPLAY_COLUMNS)
            read_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            encoded = encode_table(table)
            encode_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            log = run(encoded, figures=False)
            kernel_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            steps_derived = materialize(log, encoded)
            materialize_s.append(time.perf_counter() - started)
            del table, encoded, log
            started = time.perf_counter()
            derived = replay_compiled_table(source.input_columns(columns=REPLAY_COLUMNS))
            total_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        baseline = replay_compiled(list(source.inputs()))
        baseline_s = time.perf_counter() - started
    if [derived_to_json(o) for o in derived] != [derived_to_json(o) for o in baseline]:
        raise SystemExit("compiled core from DuckDB columns: output differs from the records path")
    n = len(records)
    total = statistics.median(total_s)
    print(f"\ncompiled core from a DuckDB file: {n:,} records, {workers:,} workers, "
          f"{len(steps_derived):,} derived records ({len(derived):,} with the figures; "
          f"written in {write_s:.1f} s)")  # fmt: skip
    steps = sum(statistics.median(x) for x in (read_s, encode_s, kernel_s, materialize_s))
    print(f"{'step':<34}{'median s':>10}{'events/s':>14}{'share':>8}")
    for name, runs_s in (
        ("read columns (DuckDB)", read_s),
        ("encode_table", encode_s),
        ("kernel", kernel_s),
        ("materialize derived records", materialize_s),
    ):
        step = statistics.median(runs_s)
        print(f"{name:<34}{step:>10.3f}{n / step:>14,.0f}{step / steps:>8.0%}")
    print(f"{'the four steps (without figures)':<34}{steps:>10.3f}{n / steps:>14,.0f}")
    print(f"{'end to end, with figures':<34}{total:>10.3f}{n / total:>14,.0f}")
    print(f"{'baseline: inputs() + replay_compiled':<34}{baseline_s:>10.3f}{n / baseline_s:>14,.0f}"
          f"   (once) columns are {baseline_s / total:.1f}x faster")  # fmt: skip


def _count_outputs(records: list) -> int:
    core = FleetCore()
    return sum(len(core.process(record)) for record in records)


if __name__ == "__main__":
    main()
