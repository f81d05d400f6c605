"""The read side shows what the core decided (issue #13): over random histories ending in a
TICK, fed through the embedded pipeline into a DuckDB history, every figure `History`
serves (the API document, the workers, the capacity) equals the core's own views, and the
projector's health snapshots equal the core's view as of each boundary.

The core publishes its figures (`circuit_figures`) only at a TICK, so each history ends
with one: the read side then shows the core's final state. The histories are the core
property tests' (test_core_properties.py): bursts of failures, long waits, lost workers,
operators, configuration changes, workers whose clocks are off.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pytest
from core_at_ticks import as_of, ending_in_a_tick, views_at_ticks
from hypothesis import HealthCheck, event, given, settings
from test_core_properties import FAST, histories

from faultstream.events.models import InputRecord, Tick, WorkerEvent
from faultstream.processors.core import FleetCore
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.health import (
    HealthSnapshots,
    figures_document,
    snapshot_row,
)
from faultstream.projections.queries import History, HistoryError
from faultstream.projections.read_models import ReadModelPublisher
from faultstream.projections.schema import HEALTH_SNAPSHOTS
from faultstream.projections.tables import HistoryWriter

INTERVAL_MS = 10_000  # a snapshot boundary every 10 s of event time: several per history
checks = settings(
    max_examples=max(60, settings.default.max_examples // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def landed(records: list[InputRecord]) -> EmbeddedPipeline:
    """The records through an embedded pipeline into an in-memory history, flushed (its
    connection stays open: `pipeline.writer.con`)."""
    pipeline = EmbeddedPipeline(FAST, writer=HistoryWriter(":memory:", batch_size=37))
    pipeline.ingest_many(records)
    pipeline.flush()
    return pipeline


def snapshots(con: duckdb.DuckDBPyConnection) -> dict[int, dict[str, Any]]:
    columns = ", ".join(HEALTH_SNAPSHOTS)
    cursor = con.execute(f"SELECT {columns} FROM health_snapshots ORDER BY ts")
    return {row[0]: dict(zip(HEALTH_SNAPSHOTS, row, strict=True)) for row in cursor.fetchall()}


def expected_snapshot(at_ticks: list[dict[str, Any]], boundary: int) -> dict[str, Any]:
    """The snapshot of the core's circuits as of its last TICK dated at or before it."""
    then = as_of(at_ticks, boundary)
    view = then["circuits"] if then is not None else figures_document([])
    return snapshot_row(boundary, view)


@checks
@given(histories)
def test_every_figure_the_history_serves_is_the_cores(records: list[InputRecord]) -> None:
    records = ending_in_a_tick(records)
    pipeline = landed(records)
    core = pipeline.core
    history = History(pipeline.writer.con, settings=FAST)  # type: ignore[union-attr]
    assert history.circuit_breakers() == core.circuits_view()
    assert history.workers() == core.workers_view()
    assert history.capacity() == core.capacity_view()


@checks
@given(histories)
def test_the_fleet_at_any_tick_is_the_cores_view_after_it(records: list[InputRecord]) -> None:
    records = ending_in_a_tick(records)
    at_ticks = views_at_ticks(records, FAST)
    history = History(landed(records).writer.con, settings=FAST)  # type: ignore[union-attr]
    for then in at_ticks:
        if then is not as_of(at_ticks, then["now"]):
            continue  # a later TICK at the same decision time is the one shown at it
        assert history.circuits_at(then["now"]) == {**then["circuits"], "timestamp": then["now"]}
        assert history.capacity(then["now"]) == then["capacity"]


@settings(checks, max_examples=max(30, settings.default.max_examples // 6))  # ~0.4 s each
@given(histories)
def test_health_snapshots_are_the_cores_figures_as_of_each_boundary(
    records: list[InputRecord],
) -> None:
    records = ending_in_a_tick(records)
    at_ticks = views_at_ticks(records, FAST)
    con = landed(records).writer.con  # type: ignore[union-attr]
    con.execute("DELETE FROM health_snapshots")  # the embedded pipeline's own, for now
    health = HealthSnapshots(con, INTERVAL_MS)
    # Two passes, so the second brings the kept figures forward instead of reading afresh.
    halfway = records[len(records) // 2].ts
    for caught_up in (lambda b, _: b <= halfway, lambda b, _: True):
        con.begin()
        health.record(con, caught_up)
        con.commit()
    written = snapshots(con)
    event(f"boundaries: {min(len(written), 10)}{'+' if len(written) >= 10 else ''}")
    for boundary, row in written.items():
        assert row == expected_snapshot(at_ticks, boundary), boundary


# --- the landing order, in a DuckDB file and in the read models ---------------------------


def tick(event_id: str, ts: int) -> Tick:
    return Tick(event_id=event_id, ts=ts)


def failure(event_id: str, ts: int, worker: str = "w1") -> WorkerEvent:
    return WorkerEvent(event_id=event_id, kind="FAILURE", ts=ts, worker_id=worker,
                       hardware_class="cuda", task_id="t1", task_type="bert",
                       failure_type="WORKER_CRASH")  # fmt: skip


@pytest.mark.parametrize("parts", ["one part", "a part per input"])
def test_of_two_figures_of_a_circuit_at_one_moment_the_later_one_shows(
    tmp_path, parts: str
) -> None:
    # Both TICKs decide at 2_000 (the second one's own ts is older): w1's figures are
    # published twice with the same ts, and only the landing order tells them apart (in
    # the read models: the row in a file, and the file's place in the append order).
    records = [tick("k0", 500), failure("f1", 2_000), tick("k1", 2_000), failure("f2", 1_500),
               tick("k2", 1_900)]  # fmt: skip
    db, directory = tmp_path / "h.duckdb", tmp_path / "read-models"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(db))
    publisher = ReadModelPublisher(pipeline.writer.con, directory)  # type: ignore[union-attr]
    for record in records:
        pipeline.ingest(record)
        if parts == "a part per input":
            pipeline.flush()
            publisher.publish()
    pipeline.flush()
    publisher.publish()
    publisher.close()
    expected = pipeline.core.circuits_view()
    pipeline.close()
    assert expected["workers"]["w1"]["total_failures"] == 2
    with History.from_db(db) as from_db, History.from_read_models(directory) as from_rm:
        assert from_db.circuit_breakers() == expected
        assert from_rm.circuit_breakers() == expected
        assert from_rm.circuit_figures("worker", "w1") == from_db.circuit_figures("worker", "w1")


def heartbeat(event_id: str, ts: int) -> WorkerEvent:
    return WorkerEvent(event_id=event_id, kind="HEARTBEAT", ts=ts, worker_id="w9",
                       hardware_class="cuda")  # fmt: skip


def test_figures_landing_late_count_from_the_next_boundary_on(tmp_path) -> None:
    """A snapshot keeps the figures of its boundary and brings them forward with the rows
    dated after it and those landed since: a row dated before it that lands late is seen
    from the next boundary on."""
    core = FleetCore()
    first = [failure("f1", 1_000), tick("k1", 1_000)]
    late = [failure("f2", 1_500), tick("k2", 1_500)]
    figures = [[out for r in part for out in core.process(r)] for part in (first, late)]
    writer = HistoryWriter(tmp_path / "h.duckdb")
    health = HealthSnapshots(writer.con, 5_000)

    def land(inputs: list[Any], derived: list[Any]) -> list[int]:
        writer.append_inputs(inputs)
        writer.append_derived(derived)
        writer.flush()
        writer.con.begin()
        written = health.record(writer.con, lambda b, _: True)
        writer.con.commit()
        return written

    assert land([*first, heartbeat("h1", 12_000)], figures[0]) == [5_000, 10_000]
    # Dated 1_500, landed after the 5 s and 10 s snapshots were written.
    assert land([*late, heartbeat("h2", 16_000)], figures[1]) == [15_000]
    written = snapshots(writer.con)
    writer.close()
    # Three circuits (w1, cuda, bert): w1 at 90 after one failure, at 80 after two.
    assert written[10_000]["average_health"] == round((90 + 100 + 100) / 3, 6)
    assert written[15_000]["average_health"] == round((80 + 100 + 100) / 3, 6)


def test_a_history_recorded_before_circuit_figures_says_so(tmp_path) -> None:
    db = tmp_path / "old.duckdb"
    writer = HistoryWriter(db)
    writer.append_inputs([failure("f1", 1_000), tick("k1", 2_000)])
    writer.flush()
    writer.con.execute("DROP TABLE circuit_figures")
    writer.con.execute("DROP TABLE circuit_figures_now")
    writer.close()
    with History.from_db(db) as history, pytest.raises(HistoryError, match="circuit_figures"):
        history.circuit_breakers()


# --- the current figures: one row per circuit, kept by the writer (fleet scale) ---------------


def newest_by_history(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Each circuit's newest circuit_figures row, read from the whole history."""
    return sorted(con.execute(
        "SELECT * FROM circuit_figures QUALIFY row_number() OVER (PARTITION BY circuit_kind, "
        "circuit_id ORDER BY ts DESC, rowid DESC) = 1").fetchall())  # fmt: skip


@checks
@given(histories)
def test_the_current_figures_are_each_circuits_newest_in_the_history(
    records: list[InputRecord],
) -> None:
    con = landed(ending_in_a_tick(records)).writer.con
    assert sorted(con.execute("SELECT * FROM circuit_figures_now").fetchall()) == (
        newest_by_history(con)
    )


def test_an_older_figure_landing_late_does_not_replace_a_newer_one() -> None:
    records = [failure("f1", 1_000), tick("k1", 2_000), failure("f2", 3_000), tick("k2", 4_000)]
    core = FleetCore(FAST)
    derived = [out for record in records for out in core.process(record)]
    writer = HistoryWriter(":memory:")
    writer.append_inputs(records)
    writer.append_derived(derived)
    writer.flush()
    newest = sorted(writer.con.execute("SELECT * FROM circuit_figures_now").fetchall())
    older = next(d for d in derived if type(d).__name__ == "CircuitFigures" and d.ts == 2_000)
    writer.append_derived([older.model_copy(update={"event_id": "late"})])
    writer.flush()
    assert sorted(writer.con.execute("SELECT * FROM circuit_figures_now").fetchall()) == newest


def test_a_history_file_from_before_the_current_figures_gets_them_on_opening(tmp_path) -> None:
    db = tmp_path / "old.duckdb"
    pipeline = EmbeddedPipeline(FAST, writer=HistoryWriter(db))
    pipeline.ingest_many([failure("f1", 1_000), tick("k1", 2_000), failure("f2", 3_000),
                          tick("k2", 4_000)])  # fmt: skip
    pipeline.close()
    con = duckdb.connect(str(db))
    expected = newest_by_history(con)
    con.execute("DROP TABLE circuit_figures_now")
    con.close()
    HistoryWriter(db).close()  # the next writer to open it fills the table from the history
    con = duckdb.connect(str(db))
    assert sorted(con.execute("SELECT * FROM circuit_figures_now").fetchall()) == expected
    con.close()


def test_read_models_publish_the_current_figures(tmp_path) -> None:
    db, directory = tmp_path / "h.duckdb", tmp_path / "models"
    pipeline = EmbeddedPipeline(FAST, writer=HistoryWriter(db))
    pipeline.ingest_many([failure("f1", 1_000), tick("k1", 2_000)])
    pipeline.flush()
    with ReadModelPublisher(pipeline.writer.con, directory) as publisher:  # type: ignore[union-attr]
        manifest = publisher.publish()
    pipeline.close()
    assert manifest.files["circuit_figures_now"]
    with History.from_db(db) as from_db, History.from_read_models(directory) as from_rm:
        assert from_rm.figures() == from_db.figures() != []
