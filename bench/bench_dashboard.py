"""Dashboard render times on a synthetic 10,000,000-event history (the generator of
bench_queries.py, plus commands, recovery outcomes and health snapshots), on the DuckDB
file and on the Parquet read models.

Each page's first view is one AppTest run of its page script with every cache cold;
a live refresh is the Overview re-run after new data (its cached figures dropped).
Baselines in the same run: AppTest running a page with no history (Streamlit's own
cost) and a bare full scan of `events`. Targets: first view < 2 s, live refresh < 300 ms
(medians; the machine is noisy).

    .venv/bin/python bench/bench_dashboard.py [--events 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import streamlit as st
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))
from bench_queries import START, build

import faultstream.dashboard
from faultstream.dashboard import data
from faultstream.events.config import load_settings
from faultstream.projections.read_models import ReadModelPublisher

SCREENS = Path(faultstream.dashboard.__file__).parent / "screens"
PAGES = ["overview", "circuits", "failures", "recovery", "workers", "timetravel", "tuning",
         "operate"]  # fmt: skip
STRATEGIES = "['IMMEDIATE_RETRY', 'DELAYED_RETRY', 'DIFFERENT_WORKER', 'BROWSER_RESTART']"


def add_recovery(db: Path, events: int) -> None:
    """One recovery command per 100 events (answering a FAILURE), each with its outcome,
    and a health snapshot a minute; then publish the read models again."""
    con = duckdb.connect(str(db))
    span_ms = events * 8
    con.execute(
        f"""
        INSERT INTO commands
        SELECT 'c' || i, {START} + i * 800, 't' || i, 'bert', 'w' || (i % 2000),
               {STRATEGIES}[1 + i % 4], 1, 0.0, NULL, NULL, NULL, NULL, 'bench',
               (SELECT event_id FROM events WHERE kind = 'FAILURE' LIMIT 1)
        FROM range({events // 100}) t(i)
        """
    )
    con.execute(
        """
        INSERT INTO recovery_outcomes
        SELECT command_id, ts, task_id, task_type, worker_id, strategy, attempt,
               'o' || command_id, CASE WHEN hash(command_id) % 5 = 0::UBIGINT THEN 'FAILURE'
               ELSE 'SUCCESS' END, ts + 1000, worker_id,
               ['cuda', 'cpu', 'rocm', 'webgpu'][1 + (hash(command_id) % 4)::BIGINT], NULL
        FROM commands
        """
    )
    con.execute(
        f"""
        INSERT INTO health_snapshots
        SELECT {START} + i * 60000, 2000, 10, 5, 1985, 97.0, 99.0, 10, 0, 0
        FROM range({span_ms // 60_000}) t(i)
        """
    )
    ReadModelPublisher(con, db.parent / "read-models").publish()
    con.close()


def cold() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


def page_run(page: str) -> AppTest:
    at = AppTest.from_file(str(SCREENS / f"{page}.py"), default_timeout=600)
    at.run()
    if at.exception:
        raise SystemExit(f"{page}: {at.exception[0].message}")
    return at


def median_ms(fn: Callable[[], object], repeat: int, before: Callable[[], None] = cold) -> float:
    times = []
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def use(db: Path | None, read_models: Path | None) -> None:
    os.environ.pop(data.DB_ENV, None)
    os.environ.pop(data.READ_MODELS_ENV, None)
    if db:
        os.environ[data.DB_ENV] = str(db)
    if read_models:
        os.environ[data.READ_MODELS_ENV] = str(read_models)


def live_refresh_ms(repeat: int) -> tuple[float, float]:
    """Overview after new data: the cached figures are dropped, the open History (its
    connection and views) stays, as between two refreshes of a running dashboard.
    Returns (the queries of one refresh, AppTest's whole re-run of the page): the real
    app re-runs only the fragment, AppTest the script with Streamlit's fixed cost."""
    at = page_run("overview")
    history = data._open(data.Source.from_env(), load_settings().core)
    key = repr(data.Source.from_env())

    def new_data() -> None:
        st.cache_data.clear()
        history._cache.clear()

    def queries() -> None:
        doc = data.circuit_breakers(history, key, 1)
        data.circuits(history, key, 1)
        data.active_escalations(history, key, 1)
        data.recent_transitions(history, key, 1)
        data.recovery_by_task_type(history, key, 1)
        data.events_per_minute(history, key, 1, doc["timestamp"])

    return median_ms(queries, repeat, before=new_data), median_ms(at.run, repeat, new_data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        started = time.perf_counter()
        build(db, args.events)
        add_recovery(db, args.events)
        print(f"built {args.events:,} events in {time.perf_counter() - started:.0f} s\n")

        use(Path(tmp) / "missing.duckdb", None)
        baseline_page = median_ms(lambda: page_run("overview"), args.repeat)
        con = duckdb.connect(str(db), read_only=True)
        baseline_scan = median_ms(
            lambda: con.execute("SELECT count(kind) FROM events").fetchall(), args.repeat
        )
        con.close()

        rows: list[tuple[str, str, float, float]] = []
        for label, source in (("duckdb file", (db, None)),
                              ("read models", (None, Path(tmp) / "read-models"))):  # fmt: skip
            use(*source)
            for page in PAGES:
                rows.append((label, f"{page} first view", median_ms(lambda p=page: page_run(p),
                             args.repeat), 2000.0))  # fmt: skip
        use(None, Path(tmp) / "read-models")
        refresh_queries, refresh_rerun = live_refresh_ms(args.repeat)
        rows.append(("read models", "overview refresh: queries", refresh_queries, 300))
        rows.append(("read models", "overview refresh: AppTest", refresh_rerun, 300))

    print(f"{'source':<12} {'what':<26} {'median ms':>10} {'target ms':>10} {'ok':>4}")
    print(f"{'baseline':<12} {'page with no history':<26} {baseline_page:>10.0f}")
    print(f"{'baseline':<12} {'full scan of events':<26} {baseline_scan:>10.0f}")
    for source, what, ms, target in rows:
        ok = "yes" if ms < target else "NO"
        print(f"{source:<12} {what:<26} {ms:>10.0f} {target:>10.0f} {ok:>4}")


if __name__ == "__main__":
    main()
