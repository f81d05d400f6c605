"""The DuckDB history: table layout and the bulk writer's upserts and joins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from faultstream.events.models import (
    CircuitStateChanged,
    DeadLetter,
    Operator,
    RecoveryCommand,
    Tick,
    WorkerEvent,
)
from faultstream.projections.schema import TABLES
from faultstream.projections.tables import HistoryWriter


def event(event_id: str, kind: str, ts: int, **fields: Any) -> WorkerEvent:
    fields.setdefault("worker_id", "w1")
    fields.setdefault("hardware_class", "cuda")
    if kind != "HEARTBEAT":
        fields.setdefault("task_id", "t1")
    if kind in ("TASK_STARTED", "SUCCESS", "FAILURE"):
        fields.setdefault("task_type", "bert")
    return WorkerEvent(event_id=event_id, kind=kind, ts=ts, **fields)


def transition(event_id: str, ts: int, to_state: str) -> CircuitStateChanged:
    return CircuitStateChanged(
        event_id=event_id, ts=ts, circuit_kind="worker", circuit_id="w1", from_state="CLOSED",
        to_state=to_state, reason="r", consecutive_failures=5, trips=1, reset_timeout_s=60.0,
        health=18.0, caused_by="e0",
    )  # fmt: skip


def retry_command(command_id: str = "c1") -> RecoveryCommand:
    return RecoveryCommand(
        command_id=command_id, ts=2_000, task_id="t1", task_type="bert", worker_id="w1",
        strategy="REDUCED_BATCH_SIZE", attempt=1, delay_s=0.0, parameters={"batch_size": "16"},
        reason="RESOURCE_EXHAUSTION ladder rung 0", caused_by="f1",
    )  # fmt: skip


def rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_every_contract_table_exists_with_record_field_columns(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    HistoryWriter(db).close()
    con = duckdb.connect(str(db), read_only=True)
    for table, columns in TABLES.items():
        names = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        assert names == list(columns), table
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                             "WHERE table_name = 'events'").fetchall())  # fmt: skip
    con.close()
    assert types["ts"] == "BIGINT"
    assert types["attributes"] == "MAP(VARCHAR, VARCHAR)"


def test_a_history_file_without_the_newer_columns_gains_them_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_inputs([event("e1", "HEARTBEAT", 1_000)])
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE events DROP COLUMN received_at")  # as an older version made it
    con.close()
    with HistoryWriter(db) as writer:
        writer.append_inputs([event("e2", "HEARTBEAT", 2_000, received_at=2_005)])
    assert rows(db, "SELECT event_id, ts, received_at FROM events ORDER BY ts") == [
        ("e1", 1_000, None),
        ("e2", 2_000, 2_005),
    ]


def test_event_delivered_twice_is_stored_once(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        beat = event("e1", "HEARTBEAT", 1_000)
        writer.append_inputs([beat])
        writer.flush()
        writer.append_inputs([beat])
    assert rows(db, "SELECT count(*) FROM events") == [(1,)]


def test_control_records_keep_their_own_fields(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_inputs([
            Tick(event_id="k1", ts=5),
            Operator(event_id="o1", ts=6, action="FORCE_OPEN", circuit_kind="worker",
                     circuit_id="w1", actor="ana"),
        ])  # fmt: skip
    assert rows(db, "SELECT kind, action, circuit_id, actor FROM control ORDER BY ts") == [
        ("TICK", None, None, None),
        ("OPERATOR", "FORCE_OPEN", "w1", "ana"),
    ]


def test_circuit_states_hold_one_current_row_per_circuit(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_derived(
            [transition("s1", 1_000, "OPEN"), transition("s2", 61_000, "HALF_OPEN")]
        )
        writer.flush()
        writer.append_derived([transition("s3", 70_000, "CLOSED")])
    assert rows(db, "SELECT count(*) FROM circuit_transitions") == [(3,)]
    assert rows(db, "SELECT circuit_id, to_state, ts FROM circuit_states") == [
        ("w1", "CLOSED", 70_000)
    ]


def test_checkpoints_keep_the_newest_per_task_even_when_an_older_arrives_late(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_inputs([event("k2", "CHECKPOINT", 2_000, checkpoint_seq=2,
                                    checkpoint_state=b"two")])  # fmt: skip
        writer.flush()
        writer.append_inputs([event("k1", "CHECKPOINT", 1_000, checkpoint_seq=1)])
    assert rows(db, "SELECT task_id, checkpoint_seq, checkpoint_state FROM checkpoints") == [
        ("t1", 2, b"two")
    ]


def test_recovery_outcome_joins_command_with_the_attempt_that_carried_it(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_derived([retry_command()])
        writer.flush()
        writer.append_inputs([
            event("s1", "TASK_STARTED", 2_500, attempt=1, recovery_command_id="c1"),
            event("ok1", "SUCCESS", 3_000, attempt=1, recovery_command_id="c1", worker_id="w2"),
        ])  # fmt: skip
    joined = rows(
        db,
        "SELECT command_id, strategy, outcome_kind, outcome_worker_id, outcome_ts "
        "FROM recovery_outcomes",
    )
    assert joined == [("c1", "REDUCED_BATCH_SIZE", "SUCCESS", "w2", 3_000)]


def test_recovery_outcome_joins_when_the_outcome_is_read_before_the_command(tmp_path: Path) -> None:
    # A projector reads two topics; the outcome may come in first.
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_inputs([event("f2", "FAILURE", 3_000, attempt=1, recovery_command_id="c1",
                                    failure_type="RESOURCE_EXHAUSTION")])  # fmt: skip
        writer.flush()
        writer.append_derived([retry_command()])
    assert rows(
        db, "SELECT command_id, outcome_kind, outcome_failure_type FROM recovery_outcomes"
    ) == [("c1", "FAILURE", "RESOURCE_EXHAUSTION")]


def test_health_snapshot_records_fleet_figures_and_open_counts(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    view = {
        "timestamp": 60_000,
        "aggregate": {"total_circuits": 4, "open_circuits": 1, "half_open_circuits": 1,
                      "closed_circuits": 2, "average_health": 67.5, "overall_health": 65.0},
        "workers": {"w1": {"state": "OPEN"}, "w2": {"state": "CLOSED"}},
        "hardware_classes": {"cuda": {"state": "HALF_OPEN"}},
        "task_types": {"bert": {"state": "CLOSED"}},
    }  # fmt: skip
    with HistoryWriter(db) as writer:
        writer.snapshot_health(60_000, view)
    snapshot = rows(
        db,
        "SELECT ts, total_circuits, open_circuits, overall_health, open_workers, "
        "open_hardware_classes FROM health_snapshots",
    )
    assert snapshot == [(60_000, 4, 1, 65.0, 1, 0)]


def test_dead_letters_keep_raw_bytes_and_reason(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_dead_letters([DeadLetter(event_id="d1", ts=1, source_topic="fs.events",
                                               source_partition=0, source_offset=9, raw=b"\x00x",
                                               reason="kind: unknown kind 'X'")])  # fmt: skip
    assert rows(db, "SELECT raw, reason FROM dead_letters") == [
        (b"\x00x", "kind: unknown kind 'X'")
    ]


def test_writer_flushes_by_itself_once_a_batch_is_full(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    writer = HistoryWriter(db, batch_size=10)
    writer.append_inputs([event(f"e{i}", "HEARTBEAT", i) for i in range(25)])
    count = writer.con.execute("SELECT count(*) FROM events").fetchone()
    writer.close()
    assert count == (25,)


def test_circuit_figures_land_one_row_each_with_the_records_fields(tmp_path: Path) -> None:
    """What the core publishes at its TICKs lands in `circuit_figures`, every record one row
    with its fields as columns: from the embedded pipeline (models) and from the projector's
    trusted decode (dicts), a redelivery stored once."""
    from faultstream.events.codec import Codec
    from faultstream.events.models import CircuitFigures
    from faultstream.projections.embedded import EmbeddedPipeline
    from faultstream.projections.schema import CIRCUIT_FIGURES

    assert list(CIRCUIT_FIGURES) == list(CircuitFigures.model_fields)
    db = tmp_path / "h.duckdb"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(db))
    for n in range(5):  # the class's threshold is 3: it opens, its worker is unavailable
        pipeline.ingest(event(f"f{n}", "FAILURE", 1_000 + n, failure_type="HARDWARE_ERROR"))
    first = pipeline.ingest(Tick(event_id="tick1", ts=2_000))
    pipeline.ingest(event("hb", "HEARTBEAT", 2_500, worker_id="w2", hardware_class="cpu"))
    second = pipeline.ingest(Tick(event_id="tick2", ts=3_000))
    pipeline.close()
    published = [r for r in first + second if isinstance(r, CircuitFigures)]
    assert [(r.caused_by, r.circuit_id) for r in published] == [
        ("tick1", "w1"), ("tick1", "cuda"), ("tick1", "bert"), ("tick2", "w2"), ("tick2", "cpu"),
    ]  # fmt: skip
    columns = ", ".join(CIRCUIT_FIGURES)
    stored = rows(db, f"SELECT {columns} FROM circuit_figures ORDER BY ts, event_id")
    expected = sorted((tuple(r.model_dump(mode="json").values()) for r in published),
                      key=lambda row: (row[1], row[0]))  # fmt: skip
    assert stored == expected
    w1 = rows(db, "SELECT live, available, workers FROM circuit_figures WHERE circuit_id = 'w1'")
    assert w1 == [(True, False, None)]
    # The projector lands the codec's trusted dicts; a record delivered again is not doubled.
    codec = Codec()
    trusted = [codec.decode_trusted(codec.encode(r))[1] for r in published[:2]]
    with HistoryWriter(db) as writer:
        writer.append_derived([*trusted, transition("c9", 4_000, "OPEN"), retry_command("c9")])
    assert rows(db, "SELECT count(*) FROM circuit_figures") == [(5,)]
    assert rows(db, "SELECT count(*) FROM circuit_transitions WHERE event_id = 'c9'") == [(1,)]
    assert rows(db, "SELECT count(*) FROM commands WHERE command_id = 'c9'") == [(1,)]
