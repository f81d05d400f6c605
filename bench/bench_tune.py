"""Tuning throughput in event-configurations/s, against a single replay in the same run.

    .venv/bin/python bench/bench_tune.py [--events N] [--configs 64] [--runs N] [--processes N]

Prints medians (the machine is shared and noisy) of:
- baseline: one replay of the history through `FleetCore` (one configuration, core only);
- one configuration, core + scoring function (what the tuner does per configuration);
- the tuner over `--configs` configurations (`run_grid`, spread over the processes).
The issue's target is 5M events x 64 configurations in < 5 s (64M event-configs/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from histories import fleet_history

from faultstream.events.config import CoreSettings
from faultstream.processors.core import FleetCore
from faultstream.processors.tuning import evaluate, expand_grid, parse_grid, run_grid

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
    args = parser.parse_args()

    records = fleet_history(workers=1_000, events=args.events)
    candidates, rejected = expand_grid(grid_of(args.configs), CoreSettings())
    assert not rejected and len(candidates) == args.configs, (len(candidates), rejected)

    def core_only() -> None:
        process = FleetCore().process
        for record in records:
            process(record)

    single = [timed(core_only) for _ in range(args.runs)]
    scored = [timed(lambda: evaluate(records, CoreSettings())) for _ in range(args.runs)]
    tuned = [
        timed(lambda: run_grid(records, candidates, processes=args.processes))
        for _ in range(args.runs)
    ]

    rows = [
        ("baseline: 1 replay, core only", 1, statistics.median(single)),
        ("1 configuration, core + score", 1, statistics.median(scored)),
        (f"tune: {args.configs} configurations", args.configs, statistics.median(tuned)),
    ]
    print(f"history: {len(records):,} events, median of {args.runs} runs")
    print(f"{'what':<34} {'configs':>7} {'median s':>9} {'event-configs/s':>16}")
    for name, configs, seconds in rows:
        rate = len(records) * configs / seconds
        print(f"{name:<34} {configs:>7} {seconds:>9.3f} {rate:>16,.0f}")
    tune_rate = len(records) * args.configs / statistics.median(tuned)
    base_rate = len(records) / statistics.median(single)
    print(f"tune vs one replay: {tune_rate / base_rate:.2f}x the event rate")
    print(
        f"target 5M x 64 in 5 s = {TARGET:,.0f} event-configs/s: "
        f"{tune_rate / TARGET:.1%} of it (5M x 64 would take ~{5e6 * 64 / tune_rate:.0f} s)"
    )


if __name__ == "__main__":
    main()
