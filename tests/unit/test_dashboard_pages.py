"""Every dashboard page through Streamlit's AppTest, on a small demo history."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from core_at_ticks import as_of, ending_in_a_tick, views_at_ticks
from streamlit.testing.v1 import AppTest

import faultstream.dashboard
from faultstream.cli import main
from faultstream.cli.demo import run_demo
from faultstream.dashboard.data import DB_ENV, READ_MODELS_ENV
from faultstream.events.config import CoreSettings, load_settings
from faultstream.events.health import fleet_aggregate
from faultstream.events.models import Tick, WorkerEvent
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.queries import History
from faultstream.projections.schema import create_tables
from faultstream.projections.tables import HistoryWriter

APP = str(Path(faultstream.dashboard.__file__).parent / "app.py")
# Only stops a hung run, never a performance bound: a page that replays or tunes may first
# compile the numba engine (minutes on a cold cache, as in a fresh clone), and pytest's own
# 600-s timeout stops anything that truly hangs.
RUN_TIMEOUT_S = 540


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five minutes of a 20-worker fleet: a flaky worker's and a bad release's circuits
    are open at the end, and two tasks are escalated."""
    path = tmp_path_factory.mktemp("dashboard") / "demo.duckdb"
    run_demo(load_settings(), path, workers=20, duration_ms=5 * 60_000)
    return path


@pytest.fixture
def on_history(demo_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(DB_ENV, str(demo_db))
    monkeypatch.delenv(READ_MODELS_ENV, raising=False)
    return demo_db


PAGES = ("overview", "circuits", "failures", "recovery", "workers", "timetravel", "tuning",
         "operate")  # fmt: skip


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    at.run()
    if page != "overview":
        at.switch_page(f"screens/{page}.py")
        at.run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def dataframe(at: AppTest, *columns: str):
    """The first table shown that has all these columns."""
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def replayed_at_ticks(db: Path) -> list[dict]:
    """The core's views after each TICK, rebuilt independently: every input through a fresh
    core (core_at_ticks.py)."""
    with History.from_db(db) as history:
        return views_at_ticks(history.input_records(), load_settings().core)


def replayed_aggregate(db: Path) -> dict:
    """The fleet figures rebuilt independently: the core's circuits as of its last TICK (the
    figures it published last), and the health formula of events/health.py over them."""
    view = as_of(replayed_at_ticks(db))["circuits"]
    pairs = [
        (fields["state"], fields["health_percentage"])
        for section in ("workers", "hardware_classes", "task_types")
        for fields in view[section].values()
    ]
    return dict(fleet_aggregate(pairs))


def open_in_table(db: Path) -> set[tuple[str, str]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT circuit_kind, circuit_id FROM circuit_states "
            "WHERE to_state IN ('OPEN', 'FORCED_OPEN', 'HALF_OPEN')"
        ).fetchall()
    finally:
        con.close()
    return set(rows)


def test_overview_health_equals_the_formula_over_the_replayed_history(on_history: Path) -> None:
    at = open_page("overview")
    expected = replayed_aggregate(on_history)
    assert metric(at, "Overall health") == f"{expected['overall_health']:.1f}%"
    assert metric(at, "Average health") == f"{expected['average_health']:.1f}%"
    assert metric(at, "Open circuits") == str(expected["open_circuits"])
    assert expected["overall_health"] < 100  # the fixture does have broken circuits


def test_overview_lists_exactly_the_open_circuits_of_circuit_states(on_history: Path) -> None:
    at = open_page("overview")
    broken = dataframe(at, "kind", "circuit", "state", "for")
    listed = set(zip(broken["kind"], broken["circuit"], strict=True))
    assert listed == open_in_table(on_history)
    assert listed  # non-trivial: the flaky worker and the bad release


def test_overview_counts_every_opening_of_a_circuit_even_after_it_closed(
    on_history: Path,
) -> None:
    at = open_page("overview")
    tripped = dataframe(at, "kind", "circuit", "openings")
    shown = dict(zip(zip(tripped["kind"], tripped["circuit"], strict=True),
                     tripped["openings"], strict=True))  # fmt: skip
    con = duckdb.connect(str(on_history), read_only=True)
    try:
        opened = dict(
            ((kind, cid), n)
            for kind, cid, n in con.execute(
                "SELECT circuit_kind, circuit_id, count(*) FROM circuit_transitions "
                "WHERE to_state = 'OPEN' GROUP BY ALL"
            ).fetchall()
        )
    finally:
        con.close()
    assert opened  # the fixture's flaky worker does open
    assert {key: shown[key] for key in opened} == opened


def empty_duckdb(path: Path) -> Path:
    con = duckdb.connect(str(path))
    create_tables(con)
    con.close()
    return path


@pytest.mark.parametrize("history", ["no file", "no rows", "no read models"])
def test_empty_history_explains_how_to_get_data_in(
    history: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DB_ENV, raising=False)
    monkeypatch.delenv(READ_MODELS_ENV, raising=False)
    if history == "no file":
        monkeypatch.setenv(DB_ENV, str(tmp_path / "missing.duckdb"))
    elif history == "no rows":
        monkeypatch.setenv(DB_ENV, str(empty_duckdb(tmp_path / "empty.duckdb")))
    else:
        monkeypatch.setenv(READ_MODELS_ENV, str(tmp_path))
    for page in PAGES:
        at = open_page(page)
        assert any("faultstream demo" in info.value for info in at.info), page


def sql(db: Path, query: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()


def test_circuits_page_filtered_to_open_lists_the_open_circuits(on_history: Path) -> None:
    at = open_page("circuits")
    at.multiselect(key="circuit_states").set_value(["OPEN"]).run()
    listed = dataframe(at, "kind", "circuit", "state", "health_percentage")
    assert set(zip(listed["kind"], listed["circuit"], strict=True)) == open_in_table(on_history)


def test_circuit_detail_shows_its_state_backoff_and_every_transition(on_history: Path) -> None:
    kind, cid, state, backoff = sql(
        on_history,
        "SELECT circuit_kind, circuit_id, to_state, reset_timeout_s FROM circuit_states "
        "WHERE to_state = 'OPEN' ORDER BY 1, 2 LIMIT 1",
    )[0]
    at = open_page("circuits")
    at.selectbox(key="circuit_detail").set_value(f"{kind}:{cid}").run()
    assert metric(at, "State") == state
    assert metric(at, "Current backoff") == f"{backoff:g} s"
    transitions = dataframe(at, "from_state", "to_state", "cause_kind")
    (count,) = sql(
        on_history,
        "SELECT count(*) FROM circuit_transitions WHERE circuit_kind = ? AND circuit_id = ?",
        [kind, cid],
    )[0]
    assert len(transitions) == count
    assert transitions["cause_kind"].notna().all()  # each one names the input behind it


def test_failures_page_counts_every_recorded_failure(on_history: Path) -> None:
    at = open_page("failures")
    ((failures,),) = sql(on_history, "SELECT count(*) FROM events WHERE kind = 'FAILURE'")
    assert metric(at, "Failures") == str(failures)
    top = dataframe(at, "failure_type", "failures")
    assert int(top["failures"].sum()) == failures


def test_recovery_page_success_rates_come_from_recovery_outcomes(on_history: Path) -> None:
    at = open_page("recovery")
    ((commands,),) = sql(on_history, "SELECT count(*) FROM commands")
    assert metric(at, "Recovery commands") == str(commands)
    by_class = dataframe(at, "strategy", "hardware_class", "success_rate")
    expected = dict(
        sql(
            on_history,
            "SELECT strategy, count(*) FILTER (WHERE outcome_kind = 'SUCCESS') FROM "
            "recovery_outcomes GROUP BY 1",
        )
    )
    shown = by_class.groupby("strategy")["succeeded"].sum().to_dict()
    assert shown == expected


WORKERS_START = 1_764_355_200_000


def heartbeat(worker: str, at_s: float, hardware_class: str = "cuda", skew_s: float = 0):
    """A heartbeat the broker appended `at_s` into the history, from a worker whose own
    clock is `skew_s` off."""
    received = WORKERS_START + int(at_s * 1000)
    return WorkerEvent(event_id=f"{worker}@{at_s}", kind="HEARTBEAT", worker_id=worker,
                       hardware_class=hardware_class, ts=received + int(skew_s * 1000),
                       received_at=received)  # fmt: skip


def workers_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: list) -> None:
    """The records and a last TICK (the core publishes the figures the pages show at a
    TICK) in a history file the dashboard is opened on."""
    path = tmp_path / "workers.duckdb"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(path))
    pipeline.ingest_many(ending_in_a_tick(records))
    pipeline.close()
    monkeypatch.setenv(DB_ENV, str(path))
    monkeypatch.delenv(READ_MODELS_ENV, raising=False)


def worker_tables(at: AppTest) -> list[list[tuple]]:
    """The workers tables shown (lost ones, then all) as (id, class, last seen, silent s,
    status) rows."""
    columns = ["worker_id", "hardware_class", "last_seen", "silent_s", "status"]
    return [
        [
            (w, c, int(pd.Timestamp(seen).timestamp() * 1000), float(s), st)
            for w, c, seen, s, st in table.value[columns].itertuples(index=False)
        ]
        for table in at.dataframe
        if set(columns) <= set(table.value.columns)
    ]


def test_workers_page_shows_each_worker_live_or_lost_with_its_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # heartbeat_timeout_s is 30: lost-1 has been silent 80 s at the end, the others not;
    # moved-1 reported cuda, then rocm.
    workers_history(tmp_path, monkeypatch, [
        heartbeat("lost-1", 0), heartbeat("lost-1", 20), heartbeat("moved-1", 30),
        heartbeat("live-1", 50), heartbeat("moved-1", 90, "rocm"), heartbeat("live-1", 100),
    ])  # fmt: skip
    at = open_page("workers")
    assert (metric(at, "Live workers"), metric(at, "Lost workers")) == ("2", "1")
    live_1 = ("live-1", "cuda", WORKERS_START + 100_000, 0.0, "live")
    moved_1 = ("moved-1", "rocm", WORKERS_START + 90_000, 10.0, "live")
    lost_1 = ("lost-1", "cuda", WORKERS_START + 20_000, 80.0, "lost")
    assert worker_tables(at) == [[lost_1], [live_1, moved_1, lost_1]]


# Was a strict xfail (the page judged silence on the workers' own ts); the page now shows
# the core's workers, whose clock is the broker's (CIRCUITS.md, Decision time).
def test_workers_page_judges_silence_on_the_brokers_clock_not_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers_history(tmp_path, monkeypatch, [
        heartbeat("slow-clock", 90, skew_s=-600), heartbeat("live-1", 100),
    ])  # fmt: skip
    at = open_page("workers")
    assert worker_tables(at) == [[
        ("live-1", "cuda", WORKERS_START + 100_000, 0.0, "live"),
        ("slow-clock", "cuda", WORKERS_START + 90_000, 10.0, "live"),
    ]]  # fmt: skip


def test_demo_workers_page_lists_every_worker_at_its_newest_event(on_history: Path) -> None:
    at = open_page("workers")
    newest = dict(sql(on_history, "SELECT worker_id, max(coalesce(received_at, ts)) FROM events "
                                  "GROUP BY 1"))  # fmt: skip
    ((now,),) = sql(
        on_history,
        "SELECT greatest((SELECT max(coalesce(received_at, ts)) FROM "
        "events), (SELECT max(coalesce(received_at, ts)) FROM control))",
    )
    assert newest and now - max(newest.values()) < 30_000  # the demo ends with all live
    [table] = worker_tables(at)
    assert {row[0]: row[2:] for row in table} == {
        worker: (seen, (now - seen) / 1000, "live") for worker, seen in newest.items()
    }
    assert metric(at, "Live workers") == str(len(newest))
    assert metric(at, "Lost workers") == "0"


def test_time_travel_shows_the_fleet_as_the_core_held_it_at_its_last_tick_by_then(
    on_history: Path,
) -> None:
    # the moment the first circuit opened, plus a minute
    ((first_open,),) = sql(
        on_history, "SELECT min(ts) FROM circuit_transitions WHERE to_state = 'OPEN'"
    )
    moment = (first_open + 60_000) // 1000 * 1000
    at = open_page("timetravel")
    at.slider(key="moment").set_value(datetime.fromtimestamp(moment / 1000, tz=UTC)).run()
    assert not at.exception, at.exception
    then = as_of(replayed_at_ticks(on_history), moment)
    view = then["circuits"]
    broken = dataframe(at, "kind", "circuit", "state", "health", "reason")
    expected = {
        (kind, cid, fields["state"])
        for section, kind in (("workers", "worker"), ("hardware_classes", "hardware_class"),
                              ("task_types", "task_type"))
        for cid, fields in view[section].items()
        if fields["state"] != "CLOSED"
    }  # fmt: skip
    assert expected  # non-trivial: a circuit is open a minute after the first one opened
    assert set(zip(broken["kind"], broken["circuit"], broken["state"], strict=True)) == expected
    aggregate = view["aggregate"]
    assert metric(at, "Overall health then") == f"{aggregate['overall_health']:.1f}%"
    assert metric(at, "Open circuits then") == str(aggregate["open_circuits"])
    for cid, row in then["capacity"].items():
        assert metric(at, f"{cid} workers available") == f"{row['available']} / {row['live']}"


def test_tuning_page_compares_current_settings_with_every_candidate(on_history: Path) -> None:
    at = open_page("tuning")
    at.text_area[0].set_value("worker.failure_threshold=3,8")
    at.button[0].click().run()
    assert not at.exception, at.exception
    scores = dataframe(at, "candidate", "score", "protected")
    assert len(scores) == 3  # the current settings and the two candidates
    at.button[1].click().run()  # apply, without an operator token configured
    assert any("no operator token is configured" in e.value for e in at.error)


def test_operations_are_refused_without_a_configured_token(on_history: Path, monkeypatch) -> None:
    monkeypatch.delenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", raising=False)
    at = open_page("operate")
    assert any("Operations are disabled" in w.value for w in at.warning)
    at.text_input[0].set_value("cpu-03")
    at.button[0].click().run()
    assert any("no operator token is configured" in e.value for e in at.error)


def test_operations_are_refused_with_a_wrong_token(
    on_history: Path, monkeypatch, fresh_guess_limiter
) -> None:
    monkeypatch.setenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", "s3cret")
    at = open_page("operate")
    at.text_input[0].set_value("cpu-03")
    at.text_input[1].set_value("alice")
    at.text_input[2].set_value("guess")
    at.button[0].click().run()
    assert any("operator token: missing or wrong" in e.value for e in at.error)


@pytest.fixture
def fresh_guess_limiter() -> Iterator[None]:
    """The limiter is shared by the process's sessions: start and leave it empty."""
    from faultstream.dashboard.views.operate import guess_limiter

    guess_limiter.clear()
    yield
    guess_limiter.clear()


def test_operations_refuse_further_tokens_after_five_wrong_ones(
    on_history: Path, monkeypatch, fresh_guess_limiter
) -> None:
    monkeypatch.setenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", "s3cret")
    at = open_page("operate")
    at.text_input[0].set_value("cpu-03")
    at.text_input[1].set_value("alice")
    for _ in range(6):
        at.text_input[2].set_value("guess")
        at.button[0].click().run()
        assert [e.value for e in at.error] == ["Refused: operator token: missing or wrong"]
    at.text_input[2].set_value("guess")
    at.button[0].click().run()
    (refused,) = at.error
    assert refused.value.startswith("Refused: too many wrong operator tokens: try again in")


# --- what a person reads first: capacity, workers' circuits, commands, the worst moment --


def worker_event(kind: str, worker: str, at_s: float, hardware_class: str = "cuda", **fields):
    """An event the broker appended `at_s` into the history (outcomes on task type bert)."""
    received = WORKERS_START + int(at_s * 1000)
    if kind in ("SUCCESS", "FAILURE"):
        fields = {"task_id": f"t-{worker}-{at_s}", "task_type": "bert", **fields}
    return WorkerEvent(event_id=f"{worker}-{kind}@{at_s}", kind=kind, worker_id=worker,
                       hardware_class=hardware_class, ts=received, received_at=received,
                       **fields)  # fmt: skip


def crashes(worker: str, from_s: float, times: int, failure_type: str, hardware_class="cuda"):
    return [
        worker_event("FAILURE", worker, from_s + i, hardware_class, failure_type=failure_type)
        for i in range(times)
    ]


def small_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: list, health_interval_ms: int
) -> Path:
    path = tmp_path / "small.duckdb"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(path), health_interval_ms=health_interval_ms)
    pipeline.ingest_many(ending_in_a_tick(records))  # the figures shown come at a TICK
    pipeline.close()
    monkeypatch.setenv(DB_ENV, str(path))
    monkeypatch.delenv(READ_MODELS_ENV, raising=False)
    return path


@pytest.fixture
def outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One minute of a small fleet, at its end (defaults: a worker circuit opens after 5
    failures and waits 60 s, a class after 3 and waits 120 s; 30 s of silence is lost):
    cuda c1 OPEN, c2 fine, l1 lost (once, at 50 s); rocm's class circuit OPEN over two
    live workers."""
    hello = [worker_event("HEARTBEAT", w, 0, c)
             for w, c in (("c1", "cuda"), ("c2", "cuda"), ("l1", "cuda"), ("r1", "rocm"),
                          ("r2", "rocm"))]  # fmt: skip
    later = [worker_event("HEARTBEAT", w, s, c) for s in (25, 50)  # never silent 30 s
             for w, c in (("c1", "cuda"), ("c2", "cuda"), ("r1", "rocm"),
                          ("r2", "rocm"))]  # fmt: skip
    return small_history(tmp_path, monkeypatch, [
        *hello,
        *crashes("c1", 10, 5, "WORKER_CRASH"),
        *crashes("r1", 20, 3, "HARDWARE_ERROR", "rocm"),
        *later,
        worker_event("HEARTBEAT", "c2", 60),
    ], health_interval_ms=60_000)  # fmt: skip


def test_overview_leads_with_the_capacity_per_hardware_class(outage: Path) -> None:
    at = open_page("overview")
    # available / live: cuda has c2 (c1's circuit is open, l1 is lost); rocm's class is open
    assert metric(at, "cuda workers available") == "1 / 2"
    assert metric(at, "rocm workers available") == "0 / 2"
    badges = [m.value for m in at.markdown if "-badge[" in m.value]
    assert badges == [":orange-badge[:material/warning: 50% of live]",
                      ":red-badge[:material/error: 0% of live]"]  # fmt: skip
    assert any("1 of 4 live workers can take work (1 lost)" in c.value for c in at.caption)
    # The headline comes first (after the alerts firing now: rocm's capacity is one),
    # before the circuit health figures and the gauges.
    headings = [s.value for s in at.subheader]
    assert headings[:3] == ["Firing alerts", "Capacity now", "Circuit health"]
    # And its rule is stated where it is shown.
    assert any("its worker circuit is CLOSED" in c.value for c in at.caption)


def test_workers_page_shows_each_workers_circuit_and_health(outage: Path) -> None:
    at = open_page("workers")
    *_, table = [d.value for d in at.dataframe if "available" in d.value.columns]  # all
    shown = {row.worker_id: (row.status, row.state, row.health_percentage, row.available)
             for row in table.itertuples()}  # fmt: skip
    assert shown == {
        "c1": ("live", "OPEN", 18.0, False),  # OPEN health: 20 - 2 x its 1 trip
        "c2": ("live", "CLOSED", 100.0, True),
        "l1": ("lost", "CLOSED", 90.0, False),  # lost: one WORKER_DISCONNECTION counted
        "r1": ("live", "CLOSED", 100.0, False),  # its class circuit is OPEN
        "r2": ("live", "CLOSED", 100.0, False),
    }
    assert metric(at, "Available workers") == "1"


def test_recovery_page_lists_each_command_with_the_outcome_of_its_attempt(
    on_history: Path,
) -> None:
    at = open_page("recovery")
    listed = dataframe(at, "command_id", "outcome")
    recorded = dict(sql(
        on_history,
        "SELECT c.command_id, coalesce(r.outcome_kind, 'no outcome yet') FROM commands c "
        "LEFT JOIN recovery_outcomes r USING (command_id)",
    ))  # fmt: skip
    assert dict(zip(listed["command_id"], listed["outcome"], strict=True)) == recorded
    assert {"SUCCESS", "FAILURE"} <= set(recorded.values())  # the fixture has both
    assert list(listed["time"]) == sorted(listed["time"], reverse=True)  # newest first
    at.selectbox(key="command_outcome").set_value("FAILURE").run()
    failed = dataframe(at, "command_id", "outcome")
    assert len(failed) == list(recorded.values()).count("FAILURE")
    assert set(failed["outcome"]) == {"FAILURE"}


@pytest.fixture
def dip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four cuda workers heard from every 5 s for 200 s; c1's circuit opens at 14 s (5
    failures), half-opens at 74 s and closes at 82 s. Six circuits (4 workers, cuda, bert):
    overall health 83.3% while c1 is open, 100% at the end; a snapshot every 10 s."""
    records = [worker_event("HEARTBEAT", w, s) for s in range(0, 200, 5)
               for w in ("c1", "c2", "c3", "c4")]  # fmt: skip
    # The processor's clock: a TICK every 5 s, just after the heartbeats of that moment.
    ticks = [WORKERS_START + s * 1000 + 1 for s in range(0, 200, 5)]
    records += [Tick(event_id=f"tick@{ms}", ts=ms, received_at=ms) for ms in ticks]
    records += crashes("c1", 10, 5, "WORKER_CRASH")
    records += [worker_event("SUCCESS", "c1", s) for s in (76, 77, 78)]
    records.sort(key=lambda r: r.received_at)
    return small_history(tmp_path, monkeypatch, records, health_interval_ms=10_000)


def test_time_travel_opens_at_the_worst_moment_of_the_history(dip: Path) -> None:
    (end,) = sql(dip, "SELECT overall_health FROM health_snapshots ORDER BY ts DESC LIMIT 1")[0]
    assert end == 100.0  # the history ends recovered: its end is not the moment to show
    at = open_page("timetravel")
    # the first snapshot with c1 open (health 100 - 1/6 x 100), the earliest of the ties
    assert at.slider(key="moment").value == datetime.fromtimestamp(
        (WORKERS_START + 20_000) / 1000, tz=UTC
    )
    assert metric(at, "Overall health then") == "83.3%"
    assert any("Opens at the worst moment of the history" in c.value for c in at.caption)
    assert metric(at, "cuda workers available") == "3 / 4"  # c1's circuit is open then


def test_never_tripped_circuits_show_a_dash_not_none(on_history: Path) -> None:
    at = open_page("circuits")
    listed = dataframe(at, "kind", "circuit", "state", "since", "reason")
    assert listed["since"].isna().any()  # circuits that never changed state: no since
    for page in ("overview", "circuits", "recovery", "workers", "timetravel"):
        shown = open_page(page)
        assert shown.dataframe and {d.proto.placeholder for d in shown.dataframe} == {"—"}, page


def test_importing_the_dashboard_outside_streamlit_logs_nothing() -> None:
    # The command line and tests import these; Streamlit warned "No runtime found" once per
    # cached function when they were decorated at import.
    code = "import faultstream.dashboard.data, faultstream.dashboard.views.overview"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=True)  # fmt: skip
    assert done.stderr == "" and done.stdout == ""


def test_demo_report_labels_its_times_and_lists_incidents_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--workers", "12", "--duration", "15m",
                 "--db", str(tmp_path / "d.duckdb")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "(t+MM:SS = time since 2026-01-01 00:00:00Z)" in out
    began = re.findall(r"^\* .* began at t\+(\d\d):(\d\d) on ", out, re.MULTILINE)
    assert len(began) > 1
    assert began == sorted(began)
    assert re.search(r"OPEN at t\+\d\d:\d\d", out)


def test_the_dashboard_never_runs_the_core_itself() -> None:
    """The pages show the figures the core published (`circuit_figures`, through `History`):
    no page replays the history through a core of its own, nor restates a rule of it."""
    package = Path(faultstream.dashboard.__file__).parent
    for path in package.rglob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not {m for m in imported if m.startswith("faultstream.processors.core")}, path


def test_recovery_page_shows_what_the_adaptive_ladders_learned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import histories
    from test_rules_beyond import START, first_rung_never_works

    h = histories.History()
    first_rung_never_works(h, tasks=3, ts=START)  # the third task's first failure: adaptive
    path = tmp_path / "adaptive.duckdb"
    settings = CoreSettings().merged({"recovery": {"adaptive": True, "adaptive_min_samples": 2}})
    pipeline = EmbeddedPipeline(settings, writer=HistoryWriter(path))
    pipeline.ingest_many(h.records)
    pipeline.close()
    monkeypatch.setenv(DB_ENV, str(path))
    monkeypatch.delenv(READ_MODELS_ENV, raising=False)
    at = open_page("recovery")
    learned = dataframe(at, "strategy", "trials", "successes", "chosen")
    # The third task: its smaller batch was never tried again (the lower precision was
    # chosen, failed once, and chosen again); FALLBACK_CPU never.
    rows = {r.strategy: (r.trials, r.successes, r.chosen) for r in learned.itertuples()}
    assert rows == {
        "REDUCED_BATCH_SIZE": (2, 0, 0),
        "REDUCED_PRECISION": (3, 2, 2),
        "FALLBACK_CPU": (0, 0, 0),
    }
