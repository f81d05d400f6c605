"""Tuning throughput in event-configurations/s, against a single replay in the same run.

    .venv/bin/python bench/bench_tune.py [--events N] [--configs 64] [--runs N] [--processes N]
    .venv/bin/python bench/bench_tune.py --events 5000000 --skip-exact   # the issue's run

Prints medians (the machine is shared and noisy) of:
- baseline: one replay of the history through `FleetCore` (one configuration, core only);
- one configuration, core + scoring function (what the tuner does per configuration);
- the exact tuner over `--configs` configurations (`run_grid(exact=True)`, processes);
- the compiled twin scoring (processors/compiled: its kernel with the scorer watching):
  encoding the history once (`encode_history(records, commands=False)`), one
  configuration (its replay; the liveness pass it shares with configurations of the same
  heartbeat timeout excluded), `--configs` configurations on the encoded history
  (`score_grid`: liveness pass, setup, replays on threads), and the whole tuner
  (`run_grid`: encoding included, loading the history excluded).
- from a DuckDB file (the embedded pipeline's layout, written once by `HistoryWriter` and
  cached under `--cache`): loading the inputs as Arrow columns, `encode_table(table,
  commands=False)`, the grid on the encoded history, and their total: the issue's end to
  end. Its baseline in the same run is encoding the records above, already in memory.
The issue's target is 5M events x 64 configurations in < 5 s (64M event-configs/s), and
a single replay at >= 5M events/s. The compiled scores are checked against the exact
ones on the same history (when the exact path runs).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa
from histories import fleet_history

from faultstream.events.config import CoreSettings
from faultstream.processors.compiled import (
    EVENT_HASH,
    Encoded,
    encode_history,
    encode_table,
    score_grid,
)
from faultstream.processors.compiled.runs import score_run, scoring_run
from faultstream.processors.core import FleetCore
from faultstream.processors.offline.sources import DuckDBSource
from faultstream.processors.offline.tune import evaluate, expand_grid, parse_grid, run_grid
from faultstream.projections.tables import HistoryWriter

TARGET = 5_000_000 * 64 / 5.0


def grid_of(configs: int) -> dict:
    """A grid of exactly `configs` combinations (a power of 4 or 2 times one)."""
    axes = [
        "worker.failure_threshold=3,5,8,12",
        "worker.recovery_timeout_s=30,60,120,240",
        "hardware_class.failure_threshold=2,3,5,8",
        "task_type.failure_threshold=5,10,20,40",
    ]
    chosen, total = [], 1
    for axis in axes:
        if total * 4 <= configs:
            chosen.append(axis)
            total *= 4
    if total < configs:
        chosen.append("recovery.max_retries=" + ",".join(str(n) for n in range(configs // total)))
    return parse_grid(chosen)


def cached_db(records: list, directory: Path) -> Path:
    """The history as a DuckDB file, written once per size (HistoryWriter, seq order)."""
    path = directory / f"fleet-{len(records)}.duckdb"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        writer = HistoryWriter(partial)
        writer.append_inputs(records, range(len(records)))
        writer.close()
        os.replace(partial, path)
    return path


def encode(records: list) -> Encoded:
    """What the tuner scores: the history's circuits, without commands."""
    return encode_history(records, commands=False)


def encode_columns(table: pa.Table) -> Encoded:
    return encode_table(table, commands=False)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--configs", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument(
        "--skip-exact", action="store_true", help="time only the compiled path (5M events)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "faultstream-bench",
        help="where the DuckDB history is written once and reused",
    )
    args = parser.parse_args()

    records = fleet_history(workers=1_000, events=args.events)
    # The millions of records live on for the comparisons; frozen, the cyclic collector
    # stops re-scanning them in the middle of a timed step (the `tune` command holds none).
    gc.collect()
    gc.freeze()
    candidates, rejected = expand_grid(grid_of(args.configs), CoreSettings())
    assert not rejected and len(candidates) == args.configs, (len(candidates), rejected)

    def core_only() -> None:
        process = FleetCore().process
        for record in records:
            process(record)

    started = time.perf_counter()
    history = encode(records)
    config = scoring_run(history, CoreSettings())
    score_run(history, config)  # compiles, or loads the cache
    warmup = time.perf_counter() - started

    rows = []
    if not args.skip_exact:
        single = [timed(core_only) for _ in range(args.runs)]
        scored = [timed(lambda: evaluate(records, CoreSettings())) for _ in range(args.runs)]
        tuned = [
            timed(lambda: run_grid(records, candidates, processes=args.processes, exact=True))
            for _ in range(args.runs)
        ]
        rows += [
            ("baseline: 1 replay, core only", 1, statistics.median(single)),
            ("1 configuration, core + score", 1, statistics.median(scored)),
            (f"tune exact: {args.configs} configurations", args.configs, statistics.median(tuned)),
        ]
    encoded = [timed(lambda: encode(records)) for _ in range(args.runs)]
    one = [timed(lambda: score_run(history, config)) for _ in range(args.runs)]
    settings = [c.settings for c in candidates]
    kernel = [
        timed(lambda: score_grid(history, settings, threads=args.processes))
        for _ in range(args.runs)
    ]
    fast = [
        timed(lambda: run_grid(records, candidates, processes=args.processes))
        for _ in range(args.runs)
    ]
    rows += [
        ("compiled: encode the history once", 1, statistics.median(encoded)),
        ("compiled: 1 replay + score", 1, statistics.median(one)),
        (f"compiled: {args.configs} configs, encoded", args.configs, statistics.median(kernel)),
        (f"tune compiled: {args.configs} configs", args.configs, statistics.median(fast)),
    ]

    source = DuckDBSource(str(cached_db(records, args.cache)))
    loads, encodes, grids, unhashed = [], [], [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        table = source.input_columns()
        loaded = time.perf_counter()
        columns_history = encode_columns(table)
        encoded_at = time.perf_counter()
        columns_scores = score_grid(columns_history, settings, threads=args.processes)
        loads.append(loaded - started)
        encodes.append(encoded_at - loaded)
        grids.append(time.perf_counter() - encoded_at)
        # Baseline: the ids dictionary-encoded by Arrow (a source without `event_hash`).
        without_hash = table.drop_columns([EVENT_HASH])
        started = time.perf_counter()
        baseline_history = encode_columns(without_hash)
        unhashed.append(time.perf_counter() - started)
        del table, without_hash
    totals = [a + b + c for a, b, c in zip(loads, encodes, grids, strict=True)]
    rows += [
        ("duckdb: load inputs as columns", 1, statistics.median(loads)),
        ("duckdb: encode_table", 1, statistics.median(encodes)),
        ("duckdb: encode_table, no event_hash", 1, statistics.median(unhashed)),
        (f"duckdb: {args.configs} configs, encoded", args.configs, statistics.median(grids)),
        (f"duckdb end to end: {args.configs} configs", args.configs, statistics.median(totals)),
    ]

    print(f"history: {len(records):,} events, median of {args.runs} runs")
    print(f"first compiled call (encode + compile or cache load): {warmup:.2f} s")
    print(f"{'what':<36} {'configs':>7} {'median s':>9} {'event-configs/s':>16}")
    for name, configs, seconds in rows:
        rate = len(records) * configs / seconds
        print(f"{name:<36} {configs:>7} {seconds:>9.3f} {rate:>16,.0f}")
    fast_rate = len(records) * args.configs / statistics.median(fast)
    if not args.skip_exact:
        exact_rate = len(records) * args.configs / statistics.median(tuned)
        print(f"compiled vs exact tuner: {fast_rate / exact_rate:.1f}x")
        exact = {id(r.candidate): r.score for r in run_grid(records, candidates, exact=True)}
        compiled = {id(r.candidate): r.score for r in run_grid(records, candidates)}
        print(f"compiled scores equal the exact ones: {compiled == exact}")
    print(
        f"encode_table vs encoding the records: "
        f"{statistics.median(encoded) / statistics.median(encodes):.1f}x faster; "
        f"their scores equal: {columns_scores == score_grid(history, settings)}"
    )
    same = columns_scores == score_grid(baseline_history, settings)
    print(
        f"encode_table with event_hash vs without: "
        f"{statistics.median(unhashed) / statistics.median(encodes):.1f}x faster; "
        f"their scores equal: {same}"
    )
    end_rate = len(records) * args.configs / statistics.median(totals)
    print(
        f"duckdb end to end at {end_rate / TARGET:.0%} of the target "
        f"(5M x 64 would take ~{5e6 * 64 / end_rate:.1f} s)"
    )
    print(
        f"target 5M x 64 in 5 s = {TARGET:,.0f} event-configs/s: compiled tuner at "
        f"{fast_rate / TARGET:.0%} of it (5M x 64 would take ~{5e6 * 64 / fast_rate:.1f} s)"
    )


if __name__ == "__main__":
    main()
