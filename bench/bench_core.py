"""The pure core's throughput on a 1,000-worker history, against a plain baseline loop.

    .venv/bin/python bench/bench_core.py [--events N] [--runs N] [--profile]

Prints medians (the machine is shared and noisy) of:
- `FleetCore.process` over pre-decoded records (decoding kept off the hot path);
- a baseline "plain state machine": a dict of consecutive-failure counters per worker
  with a threshold, over the very same records: the floor of any per-event Python loop;
- the decode cost per JSON line (JSON -> pydantic model), paid once by replay.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from histories import fleet_history

from faultstream.events.jsonl import parse_input_line
from faultstream.processors.core import FleetCore

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
    if args.profile:
        profiler = cProfile.Profile()
        core = FleetCore()
        profiler.enable()
        for record in records:
            core.process(record)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def _count_outputs(records: list) -> int:
    core = FleetCore()
    return sum(len(core.process(record)) for record in records)


if __name__ == "__main__":
    main()
