"""Dashboard-sized queries on a synthetic 10,000,000-event history (Arrow straight into
DuckDB, not through Kafka), through `History` on the DuckDB file and on the Parquet read
models. Baseline in the same run: a bare full scan of `events` (`count(*)` of one column).
Target: each query under 200 ms (median).

    .venv/bin/python bench/bench_queries.py [--events 10000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from faultstream.projections.queries import History
from faultstream.projections.read_models import ReadModelPublisher
from faultstream.projections.schema import EVENTS, create_tables

DAY = 86_400_000
START = 1_764_000_000_000
END = 2**62  # after every record: "as of" the end of the history
CHUNK = 1_000_000
KINDS = np.array(["HEARTBEAT", "TASK_STARTED", "SUCCESS", "FAILURE", "CHECKPOINT"])


def events_chunk(first: int, count: int, spacing_ms: int, rng: np.random.Generator) -> pa.Table:
    n = np.arange(first, first + count)
    kind = KINDS[rng.choice(5, size=count, p=[0.3, 0.2, 0.35, 0.1, 0.05])]
    failure = kind == "FAILURE"
    columns = {
        "event_id": pa.array(np.char.add("e", n.astype(str))),
        "kind": pa.array(kind),
        "ts": pa.array(START + n * spacing_ms),
        "worker_id": pa.array(np.char.add("w", (n % 2_000).astype(str))),
        "hardware_class": pa.array(np.array(["cuda", "cpu", "rocm", "webgpu"])[n % 4]),
        "task_id": pa.array(np.char.add("t", (n // 3).astype(str))),
        "task_type": pa.array(np.array(["bert", "llama", "resnet", "whisper"])[n // 7 % 4]),
        "failure_type": pa.array(np.where(failure, "TIMEOUT", None)),
        "message": pa.nulls(count, pa.string()),
        "attempt": pa.array(np.zeros(count, dtype=np.int32)),
        "recovery_command_id": pa.nulls(count, pa.string()),
        "attributes": pa.nulls(count, EVENTS["attributes"][1]),
        "checkpoint_seq": pa.nulls(count, pa.int64()),
        "checkpoint_state": pa.nulls(count, pa.binary()),
        "seq": pa.array(n),
    }
    return pa.table(columns)


def build(db: Path, events: int, figures: int) -> None:
    con = duckdb.connect(str(db))
    create_tables(con)
    rng = np.random.default_rng(7)
    for first in range(0, events, CHUNK):
        chunk = events_chunk(first, min(CHUNK, events - first), 8, rng)  # noqa: F841
        con.execute("INSERT INTO events BY NAME SELECT * FROM chunk")
    # About one circuit transition per 100 events, over the same span.
    con.execute(
        f"""
        INSERT INTO circuit_transitions
        SELECT 'x' || i, {START} + i * 800, 'worker', 'w' || (i % 2000),
               CASE WHEN i % 2 = 0 THEN 'CLOSED' ELSE 'OPEN' END,
               CASE WHEN i % 2 = 0 THEN 'OPEN' ELSE 'HALF_OPEN' END,
               'bench', 5, 1, 60.0, 18.0, 'e' || (i * 100)
        FROM range({events // 100}) t(i)
        """
    )
    # The core's figures at its TICKs: one row per changed circuit, about one per 100 events.
    con.execute(
        f"""
        INSERT INTO circuit_figures BY NAME
        SELECT 'fig-' || i AS event_id, {START} + i * 800 AS ts, 'worker' AS circuit_kind,
               'w' || (i % 2000) AS circuit_id, 'CLOSED' AS state, 0 AS consecutive_failures,
               0 AS half_open_successes, 0 AS trips, 1 AS total_trips,
               i // 2000 * 40 AS total_successes, i // 2000 * 4 AS total_failures,
               100.0 AS health, 'tick-' || i AS caused_by, 'cuda' AS hardware_class,
               true AS live, true AS available
        FROM range({figures}) t(i)
        """
    )
    # What the writer keeps beside them: each circuit's newest figures (what "now" reads).
    con.execute(
        "INSERT INTO circuit_figures_now SELECT * FROM circuit_figures "
        "QUALIFY row_number() OVER (PARTITION BY circuit_kind, circuit_id ORDER BY ts DESC) = 1"
    )
    con.execute(
        "INSERT INTO circuit_states SELECT * FROM circuit_transitions "
        "QUALIFY row_number() OVER (PARTITION BY circuit_kind, circuit_id ORDER BY ts DESC) = 1"
    )
    ReadModelPublisher(con, db.parent / "read-models").publish()
    con.close()


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: file metadata and caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--figures", type=int, default=None,
                        help="circuit_figures rows (default: one per 100 events; a busy "
                        "1,000-worker fleet publishes about 86 M a day)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "history.duckdb"
        started = time.perf_counter()
        build(db, args.events, args.figures or args.events // 100)
        print(f"built {args.events:,} events in {time.perf_counter() - started:.0f} s")
        day_start = START + args.events * 8 // 2
        rows = []
        for label, history in [
            ("db file", History.from_db(db)),
            ("read models", History.from_read_models(Path(tmp) / "read-models")),
        ]:
            queries = {
                "baseline: count(*) full scan": lambda h=history: h._rows(
                    "SELECT count(kind) FROM events"
                ),
                "current states": history.current_states,
                "a day of transitions": lambda h=history: h.transitions(day_start, day_start + DAY),
                "failure rates per hour": lambda h=history: h.failure_rates("1h"),
                "circuit-breakers document": lambda h=history: (
                    h._cache.clear(),
                    h.circuit_breakers(),
                ),
                # The same figures from the whole circuit_figures table (as of a moment):
                # what "now" cost before the writer kept circuit_figures_now.
                "newest figures, whole table": lambda h=history: h.figures(at=END),
            }
            for name, fn in queries.items():
                rows.append((label, name, median_ms(fn, args.repeat)))
            history.close()
    print(f"{'source':<12} {'query':<32} {'median ms':>10} {'< 200 ms':>9}")
    for label, name, ms in rows:
        print(f"{label:<12} {name:<32} {ms:>10.1f} {'yes' if ms < 200 else 'NO':>9}")


if __name__ == "__main__":
    main()
