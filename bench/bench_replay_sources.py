"""`replay --input` and `tune --input` from a JSON Lines file: columns straight from the
bytes (processors/offline/jsonl_columns.py) against the line-by-line validating parse.

    .venv/bin/python bench/bench_replay_sources.py [--events N] [--runs N] [--file PATH]

A `--events` fleet history (bench/histories.py `fleet_history`) is written with
events/jsonl.py `write_records` (or `--file` is read as it is), then, interleaved over
`--runs` runs, medians (the machine is shared and noisy) of:
- the columnar read, `JsonlSource.input_columns(columns=REPLAY_COLUMNS)`, and the
  compiled replay from it end to end (read, encode, kernel, materialize: what `replay
  --input` does but the writing of its output);
- the baselines: the line-by-line parse (`read_input_records`, a pydantic model per line)
  and the records path end to end (that parse, then `replay_compiled`).
Both paths' derived records are checked equal first.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from histories import fleet_history

from faultstream.events.jsonl import read_input_records, write_records
from faultstream.events.models import derived_to_json
from faultstream.processors.compiled import replay_compiled, replay_compiled_table
from faultstream.processors.offline.jsonl_columns import scan_jsonl_file
from faultstream.processors.offline.sources import REPLAY_COLUMNS, JsonlSource

TARGET_EVENTS_PER_S = 1_000_000


def columns(path: str):
    return JsonlSource(path).input_columns(columns=REPLAY_COLUMNS)


def records(path: str) -> list:
    with open(path, encoding="utf-8") as handle:
        return list(read_input_records(handle))


def timed(fn, *args) -> tuple[float, object]:
    gc.collect()
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-runs", type=int, default=2, help="the slow path's runs")
    parser.add_argument("--file", help="a JSON Lines history to read instead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        path = args.file or f"{directory}/history.jsonl"
        if not args.file:
            with open(path, "w", encoding="utf-8") as out:
                write_records(fleet_history(events=args.events), out)
        scan_jsonl_file(path)  # compiles the scanner (cached), and says why if it refuses
        size_mb = Path(path).stat().st_size / 1e6
        fast = [derived_to_json(o) for o in replay_compiled_table(columns(path))]
        slow = [derived_to_json(o) for o in replay_compiled(records(path))]
        if fast != slow:
            raise SystemExit("replay from JSON Lines columns differs from the records path")

        read_s, end_s, parse_s, base_s = [], [], [], []
        for run in range(args.runs):  # interleaved, so drifts in machine load hit both
            seconds, table = timed(columns, path)
            read_s.append(seconds)
            n = table.num_rows
            del table
            end_s.append(timed(lambda: replay_compiled_table(columns(path)))[0])
            if run < args.baseline_runs:
                seconds, history = timed(records, path)
                parse_s.append(seconds)
                del history
                base_s.append(timed(lambda: replay_compiled(records(path)))[0])

    print(f"JSON Lines history: {n:,} records, {size_mb:,.0f} MB, {len(fast):,} derived records")
    print(f"{'path':<46}{'median s':>10}{'events/s':>14}{'speed-up':>10}")
    rows = [
        ("read: columns (jsonl_columns)", read_s, parse_s),
        ("baseline read: line by line (pydantic)", parse_s, parse_s),
        ("replay end to end: columns + compiled core", end_s, base_s),
        ("baseline replay: records + compiled core", base_s, base_s),
    ]
    for name, runs_s, baseline in rows:
        median, base = statistics.median(runs_s), statistics.median(baseline)
        print(f"{name:<46}{median:>10.3f}{n / median:>14,.0f}{base / median:>9.1f}x")
    end = n / statistics.median(end_s)
    verdict = "met" if end >= TARGET_EVENTS_PER_S else "missed"
    print(f"target {TARGET_EVENTS_PER_S:,} events/s end to end: {verdict} ({end:,.0f}/s)")


if __name__ == "__main__":
    main()
