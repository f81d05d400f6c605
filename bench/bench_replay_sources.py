"""`replay --input` and `tune --input` from a JSON Lines file: columns straight from the
bytes by the numba scanner (processors/offline/jsonl_columns.py), against the DuckDB
reader it was weighed against for issue #13 (bench/jsonl_duckdb.py: the same table, the
same verdicts) and the line-by-line validating parse.

    .venv/bin/python bench/bench_replay_sources.py [--events N] [--tile K] [--runs N]
        [--baseline-runs N] [--processes N] [--file PATH]

A `--events` fleet history (bench/histories.py `fleet_history`) is written with
events/jsonl.py `write_records`, `--tile` times over (each copy's ids renamed and its
times moved past the last copy's: 5 x 1,000,000 events without holding 5 M models), or
`--file` is read as it is. Then, interleaved over `--runs` runs in this process, medians
(the machine is shared and noisy) of wall and CPU seconds (CPU: every thread of this
process; it shows the work whatever the load) of:
- the scanner's read (`scan_jsonl_file`: `JsonlSource.input_columns` of a file over
  32 MiB), and the compiled replay from it end to end (read, encode, kernel,
  materialize: what `replay --input` does but the writing of its output);
- the same for the DuckDB reader;
- the baselines (`--baseline-runs`): the line-by-line parse (`read_input_records`, a
  pydantic model per line) and the records path end to end (that parse, then
  `replay_compiled`).
Both readers' tables, and with a baseline both paths' derived records, are checked
equal first. Then `--processes` fresh processes per reader, each importing only its
reader and doing one read: wall time (imports, and numba loading or compiling the
scanner, included) and peak resident memory; the scanner once with its numba cache
warm and once with an empty one (its first run on a machine).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from histories import fleet_history
from jsonl_duckdb import read_jsonl_file

from faultstream.events.jsonl import read_input_records, write_records
from faultstream.events.models import derived_to_json
from faultstream.processors.compiled import replay_compiled, replay_compiled_table
from faultstream.processors.offline.jsonl_columns import scan_jsonl_file
from faultstream.processors.offline.sources import REPLAY_COLUMNS

BENCH = Path(__file__).resolve().parent
TARGET_EVENTS_PER_S = 1_000_000
SCANNER = "numba scanner"
DUCKDB = "DuckDB reader"


def scanner(path: str):
    return scan_jsonl_file(path, REPLAY_COLUMNS)  # what `JsonlSource.input_columns` does


def duckdb_reader(path: str):
    return read_jsonl_file(path, REPLAY_COLUMNS)


def records(path: str) -> list:
    with open(path, encoding="utf-8") as handle:
        return list(read_input_records(handle))


def timed(fn, *args) -> tuple[tuple[float, float], object]:
    """((wall seconds, CPU seconds of this process: every thread's), what `fn` gave)."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return (time.perf_counter() - started, time.process_time() - cpu), result


def wall(runs: list[tuple[float, float]]) -> float:
    return statistics.median(w for w, _ in runs)


# --- histories ---------------------------------------------------------------------------

_TS = re.compile(r'"ts":(\d+)')


def write_history(path: str, events: int, tile: int) -> None:
    """The fleet history, `tile` times over: copy k's event and task ids get a `k.`
    prefix and its times move past the end of copy k - 1 (the same fleet, going on)."""
    with open(path, "w", encoding="utf-8") as out:
        write_records(fleet_history(events=events), out)
    if tile <= 1:
        return
    text = Path(path).read_text(encoding="utf-8")
    stamps = [int(t) for t in _TS.findall(text)]
    span = max(stamps) - min(stamps) + 10_000
    with open(path, "a", encoding="utf-8") as out:
        for k in range(1, tile):
            copy = re.sub(r'"(event_id|task_id)":"', rf'"\1":"{k}.', text)
            copy = _TS.sub(lambda m, k=k: f'"ts":{int(m.group(1)) + k * span}', copy)
            out.write(copy)


# --- fresh processes ---------------------------------------------------------------------

# One read in a fresh process that imports only that reader; prints its peak memory.
CHILD = {
    SCANNER: "from faultstream.processors.offline.jsonl_columns import scan_jsonl_file as read",
    DUCKDB: "from jsonl_duckdb import read_jsonl_file as read",
}
CHILD_MAIN = """
import sys
sys.path.insert(0, sys.argv[2])
{}
read(sys.argv[1])
with open("/proc/self/status") as status:  # the peak of this process's own memory
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")))
"""


def fresh(what: str, path: str, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds of the whole process, its peak resident MB) of one read in it."""
    args = [sys.executable, "-c", CHILD_MAIN.format(CHILD[what]), path, str(BENCH)]
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"one {what} read failed: {done.stderr[-2000:]}")
    # VmHWM, not rusage's maxrss, which would count this process's memory (inherited at
    # fork).
    return seconds, int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tile", type=int, default=1, help="the history written K times")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-runs", type=int, default=2, help="the slow path's runs")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per reader")
    parser.add_argument("--file", help="a JSON Lines history to read instead")
    args = parser.parse_args()

    paths = [(SCANNER, scanner), (DUCKDB, duckdb_reader)]
    with tempfile.TemporaryDirectory() as directory:
        path = args.file or f"{directory}/history.jsonl"
        if not args.file:
            write_history(path, args.events, args.tile)
        size_mb = Path(path).stat().st_size / 1e6
        table = scanner(path)  # compiles it (cached), and says why if it refuses
        n = table.num_rows
        fast = [derived_to_json(o) for o in replay_compiled_table(table)]
        same = [c for c in REPLAY_COLUMNS if c != "event_hash"]  # each hashes its own way
        if not duckdb_reader(path).select(same).equals(table.select(same)):
            raise SystemExit("the DuckDB reader's table differs from the scanner's")
        del table
        if args.baseline_runs:
            slow = [derived_to_json(o) for o in replay_compiled(records(path))]
            if fast != slow:
                raise SystemExit("replay from JSON Lines columns differs from the records path")

        read_s = {name: [] for name, _ in paths}
        end_s = {name: [] for name, _ in paths}
        parse_s, base_s = [], []
        for run in range(args.runs):  # interleaved, so drifts in machine load hit all
            for name, read in paths:
                times, table = timed(read, path)
                read_s[name].append(times)
                del table
                end_s[name].append(timed(lambda read=read: replay_compiled_table(read(path)))[0])
            if run < args.baseline_runs:
                times, history = timed(records, path)
                parse_s.append(times)
                del history
                base_s.append(timed(lambda: replay_compiled(records(path)))[0])

        processes = []
        for _ in range(args.processes):
            processes.append((f"{SCANNER}, numba cache warm", fresh(SCANNER, path)))
            processes.append((DUCKDB, fresh(DUCKDB, path)))
        for _ in range(args.processes):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "NUMBA_CACHE_DIR": cache}
                name = f"{SCANNER}, numba cache empty (its first run)"
                processes.append((name, fresh(SCANNER, path, env)))

    print(f"JSON Lines history: {n:,} records, {size_mb:,.0f} MB, {len(fast):,} derived records")
    print(f"{'in this process, medians':<56}{'wall s':>8}{'CPU s':>7}{'events/s':>11}{'ratio':>7}")
    reference = {"read": wall(read_s[SCANNER]), "end": wall(end_s[SCANNER])}
    rows = [(f"read: {name}", read_s[name], "read") for name, _ in paths]
    if parse_s:
        rows.append(("read: line by line (pydantic)", parse_s, "read"))
    rows += [(f"replay end to end: {name} + compiled core", end_s[name], "end")
             for name, _ in paths]  # fmt: skip
    if base_s:
        rows.append(("replay: records + compiled core", base_s, "end"))
    for name, runs, against in rows:
        median, cpu = wall(runs), statistics.median(c for _, c in runs)
        ratio = median / reference[against]
        print(f"{name:<56}{median:>8.3f}{cpu:>7.2f}{n / median:>11,.0f}{ratio:>6.2f}x")
    print("(ratio: wall time over the scanner's, read against read, replay against replay)")
    end = n / reference["end"]
    verdict = "met" if end >= TARGET_EVENTS_PER_S else "missed"
    print(f"target {TARGET_EVENTS_PER_S:,} events/s end to end: {verdict} ({end:,.0f}/s)")
    print(f"\n{'one read in a fresh process, medians':<56}{'wall s':>8}{'peak RSS MB':>13}")
    for name in dict.fromkeys(name for name, _ in processes):
        walls = [seconds for n_, (seconds, _) in processes if n_ == name]
        peaks = [peak for n_, (_, peak) in processes if n_ == name]
        print(f"{name:<56}{statistics.median(walls):>8.2f}{statistics.median(peaks):>13,.0f}")


if __name__ == "__main__":
    main()
