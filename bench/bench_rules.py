"""What the rules beyond consecutive failures cost the core: `FleetCore.process` on the bench's
1,000-worker history under each rule, against the seed's rules alone in the same run.

    .venv/bin/python bench/bench_rules.py [--events N] [--runs N] [--compiled]

Each configuration is timed `--runs` times, interleaved (the machine is shared and noisy);
the table gives the median and its ratio to "seed rules only" (every new rule off, the
alerts too; load-balanced targets cannot be switched off). `--compiled` also times the
compiled twin's kernel on the same history where it replays the configuration exactly.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from histories import fleet_history

from faultstream.events.config import CoreSettings
from faultstream.processors.core import FleetCore

ALERTS_OFF = {"class_capacity_below": 0, "open_longer_than_s": 0, "escalations": False,
              "fleet_health_below": 0, "clock_skew": False}  # fmt: skip
RATE = {"failure_rate_threshold": 50, "sliding_window_size": 100, "minimum_number_of_calls": 20}
SLOW = {"slow_call_duration_s": 30, "slow_call_rate_threshold": 50}
OUTLIERS = {"outlier_stdev_factor": 1.9, "outlier_interval_s": 60}
ADAPTIVE = {"adaptive": True, "adaptive_min_samples": 20}
KINDS = ("worker", "hardware_class", "task_type")


def configurations() -> dict[str, CoreSettings]:
    seed = CoreSettings().merged({"alerts": ALERTS_OFF})
    every_rule = {"circuits": {"worker": {**RATE, **SLOW, **OUTLIERS}}, "recovery": ADAPTIVE}
    on_every_kind = {
        "circuits": {kind: {**RATE, **SLOW} for kind in KINDS} | {"worker": {**RATE, **SLOW,
                                                                              **OUTLIERS}},
        "recovery": ADAPTIVE,
    }  # fmt: skip
    return {
        "seed rules only": seed,
        "defaults (alerts on)": CoreSettings(),
        "+ failure rate (worker)": CoreSettings().merged({"circuits": {"worker": RATE}}),
        "+ slow calls (worker)": CoreSettings().merged({"circuits": {"worker": SLOW}}),
        "+ outliers": CoreSettings().merged({"circuits": {"worker": OUTLIERS}}),
        "+ adaptive": CoreSettings().merged({"recovery": ADAPTIVE}),
        "every rule (worker windows)": CoreSettings().merged(every_rule),
        "every rule, windows on all kinds": CoreSettings().merged(on_every_kind),
    }


def time_core(records: list[Any], settings: CoreSettings) -> float:
    core = FleetCore(settings)
    process = core.process
    start = time.perf_counter()
    for record in records:
        process(record)
    return time.perf_counter() - start


def time_compiled(records: list[Any], settings: CoreSettings) -> float | None:
    from faultstream.processors.compiled import UnsupportedHistory, encode_history, run

    try:
        encoded = encode_history(records, settings)
    except UnsupportedHistory:
        return None
    run(encoded)  # compiled (or loaded from the cache) outside the timing
    start = time.perf_counter()
    run(encoded)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compiled", action="store_true")
    args = parser.parse_args()
    records = fleet_history(args.workers, args.events)
    # The history is ~600k objects the garbage collector would otherwise walk, now and then,
    # in whichever run is going: set aside, as the processor's own input never is.
    gc.collect()
    gc.freeze()
    configs = configurations()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for run_no in range(args.runs):
        for name, settings in configs.items():
            times[name].append(time_core(records, settings))
        print(f"run {run_no + 1}/{args.runs} done", file=sys.stderr)
    base = statistics.median(times["seed rules only"])
    print(f"FleetCore.process, {len(records):,} records, {args.workers:,} workers, "
          f"median of {args.runs} interleaved runs")  # fmt: skip
    print(f"{'configuration':36s} {'M events/s':>10s} {'vs seed rules':>14s}"
          + ("  compiled M events/s" if args.compiled else ""))  # fmt: skip
    for name, samples in times.items():
        median = statistics.median(samples)
        line = f"{name:36s} {len(records) / median / 1e6:10.3f} {base / median:13.2f}x"
        if args.compiled:
            compiled = time_compiled(records, configs[name])
            line += "  " + ("unsupported" if compiled is None else
                            f"{len(records) / compiled / 1e6:.1f}")  # fmt: skip
        print(line)


if __name__ == "__main__":
    main()
