"""The history writer's repeat dropping (same id and same ts), its running per-circuit
totals, and the trusted-decode path landing the same rows as the pydantic one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import duckdb
import pytest

from faultstream.cli.simulate import run_embedded_simulation
from faultstream.events.codec import Codec
from faultstream.events.config import CoreSettings
from faultstream.events.jsonl import read_input_records
from faultstream.events.models import (
    CircuitStateChanged,
    ConfigChanged,
    DeadLetter,
    InputRecord,
    Operator,
    RecoveryCommand,
    Tick,
    WorkerEvent,
)
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.queries import History
from faultstream.projections.read_models import ReadModelPublisher
from faultstream.projections.tables import TABLES, HistoryWriter


def event(event_id: str, kind: str, ts: int, **fields: Any) -> WorkerEvent:
    fields.setdefault("worker_id", "w1")
    fields.setdefault("hardware_class", "cuda")
    if kind != "HEARTBEAT":
        fields.setdefault("task_id", "t1")
    if kind in ("TASK_STARTED", "SUCCESS", "FAILURE"):
        fields.setdefault("task_type", "bert")
    return WorkerEvent(event_id=event_id, kind=kind, ts=ts, **fields)


def transition(event_id: str, ts: int) -> CircuitStateChanged:
    return CircuitStateChanged(
        event_id=event_id, ts=ts, circuit_kind="worker", circuit_id="w1", from_state="CLOSED",
        to_state="OPEN", reason="r", consecutive_failures=5, trips=1, reset_timeout_s=60.0,
        health=18.0, caused_by="e0",
    )  # fmt: skip


def command(command_id: str, ts: int) -> RecoveryCommand:
    return RecoveryCommand(
        command_id=command_id, ts=ts, task_id="t1", task_type="bert", worker_id="w1",
        strategy="REDUCED_BATCH_SIZE", attempt=1, delay_s=0.0, parameters={"batch_size": "16"},
        reason="RESOURCE_EXHAUSTION ladder rung 0", caused_by="f1",
    )  # fmt: skip


def dead_letter(event_id: str, ts: int) -> DeadLetter:
    return DeadLetter(
        event_id=event_id, ts=ts, source_topic="fs.events", source_partition=0,
        source_offset=ts, raw=b"\x00\xffraw", reason="kind: unknown kind 'X'",
    )  # fmt: skip


def feed(writer: HistoryWriter, table: str, records: list[Any]) -> None:
    if table in ("events", "control"):
        writer.append_inputs(records)
    elif table == "dead_letters":
        writer.append_dead_letters(records)
    else:
        writer.append_derived(records)


# table -> a record of it with (id, ts); each table drops repeats on its own id column.
MAKERS = {
    "events": lambda i, ts: event(i, "HEARTBEAT", ts),
    "control": lambda i, ts: Tick(event_id=i, ts=ts),
    "circuit_transitions": transition,
    "commands": command,
    "dead_letters": dead_letter,
}


def count(db: Path, table: str) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def table_rows(db: Path, table: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
    finally:
        con.close()


# --- repeats ------------------------------------------------------------------------------


@pytest.mark.parametrize("table", list(MAKERS))
def test_record_repeated_inside_one_batch_is_stored_once(tmp_path: Path, table: str) -> None:
    db, make = tmp_path / "h.duckdb", MAKERS[table]
    with HistoryWriter(db) as writer:
        feed(writer, table, [make("a", 1_000), make("b", 2_000), make("a", 1_000)])
    assert count(db, table) == 2


@pytest.mark.parametrize("table", list(MAKERS))
def test_old_record_arriving_again_in_a_later_batch_is_stored_once(
    tmp_path: Path, table: str
) -> None:
    db, make = tmp_path / "h.duckdb", MAKERS[table]
    with HistoryWriter(db) as writer:
        feed(writer, table, [make(f"old{n}", 1_000 + n) for n in range(100)])
        writer.flush()
        # The later batch spans new times too, so the old row sits inside its time range.
        feed(writer, table, [make("new", 900_000), make("old7", 1_007), make("old0", 1_000)])
    assert count(db, table) == 101


@pytest.mark.parametrize("table", list(MAKERS))
def test_old_record_arriving_again_after_a_writer_reopen_is_stored_once(
    tmp_path: Path, table: str
) -> None:
    db, make = tmp_path / "h.duckdb", MAKERS[table]
    with HistoryWriter(db) as writer:
        feed(writer, table, [make("old", 1_000), make("other", 5_000)])
    with HistoryWriter(db) as writer:
        feed(writer, table, [make("old", 1_000)])
    with HistoryWriter(db) as writer:
        feed(writer, table, [make("old", 1_000), make("later", 9_000)])
    assert count(db, table) == 3


@pytest.mark.parametrize("table", list(MAKERS))
def test_same_id_with_another_ts_is_another_record_and_stored_twice(
    tmp_path: Path, table: str
) -> None:
    # The documented semantics (schema.DEDUPE_KEYS): a repeat is the same id AND the same ts.
    db, make = tmp_path / "h.duckdb", MAKERS[table]
    with HistoryWriter(db) as writer:
        feed(writer, table, [make("x", 1_000), make("x", 1_001)])
        writer.flush()
        feed(writer, table, [make("x", 2_000)])
    assert count(db, table) == 3


def test_repeated_outcome_is_not_counted_again_in_the_circuit_totals(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    outcomes = [
        event("ok", "SUCCESS", 1_000),
        event("crash", "FAILURE", 2_000, failure_type="WORKER_CRASH"),
    ]
    with HistoryWriter(db) as writer:
        writer.append_inputs(outcomes)
        writer.flush()
        writer.append_inputs(outcomes)
    with HistoryWriter(db) as writer:
        writer.append_inputs(outcomes)
    totals = table_rows(db, "circuit_totals")
    assert ("worker", "w1", 1, 1, 0, 1) in totals
    assert ("task_type", "bert", 1, 0, 0, 0) in totals


def test_seq_continues_after_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_inputs([event("a", "HEARTBEAT", 1), Tick(event_id="k", ts=2)])
    with HistoryWriter(db) as writer:
        writer.append_inputs([event("b", "HEARTBEAT", 3)])
    con = duckdb.connect(str(db), read_only=True)
    seqs = con.execute(
        "SELECT event_id, seq FROM (SELECT event_id, seq FROM events "
        "UNION ALL SELECT event_id, seq FROM control) ORDER BY seq"
    ).fetchall()
    con.close()
    assert seqs == [("a", 0), ("k", 1), ("b", 2)]


# --- running totals -----------------------------------------------------------------------


def simulate(settings: CoreSettings) -> list[InputRecord]:
    tap = io.StringIO()
    run_embedded_simulation(
        core_settings=settings, seed=7, workers=20, duration_ms=20 * 60_000, tap=tap
    )
    return list(read_input_records(tap.getvalue().splitlines()))


# A lost worker's WORKER_DISCONNECTION is counted by the core's own timer, on no stored
# outcome, so the stored totals can only match the core where no worker is lost.
NEVER_LOST = CoreSettings.model_validate({"recovery": {"heartbeat_timeout_s": 86_400}})


@pytest.fixture(scope="module")
def simulated() -> list[InputRecord]:
    """A closed-loop demo history: crashes, OOMs, a bad release, a hardware fault, and a
    worker lost to a silence."""
    return simulate(CoreSettings())


@pytest.fixture(scope="module")
def simulated_never_lost() -> list[InputRecord]:
    return simulate(NEVER_LOST)


def core_totals(view: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
    sections = {"workers": "worker", "hardware_classes": "hardware_class",
                "task_types": "task_type"}  # fmt: skip
    return {
        (kind, circuit_id): (c["total_successes"], c["total_failures"])
        for section, kind in sections.items()
        for circuit_id, c in view[section].items()
    }


def recount(tmp_path: Path, records: list[InputRecord]) -> list[tuple]:
    """circuit_totals of the whole history written from scratch in a single batch."""
    db = tmp_path / "recount.duckdb"
    with HistoryWriter(db, batch_size=len(records) + 1) as writer:
        writer.append_inputs(records)
    return table_rows(db, "circuit_totals")


def test_totals_over_many_small_batches_and_reopens_equal_a_from_scratch_recount(
    tmp_path: Path, simulated: list[InputRecord]
) -> None:
    db = tmp_path / "h.duckdb"
    third = len(simulated) // 3
    for part in (simulated[:third], simulated[third : 2 * third], simulated[2 * third :]):
        with HistoryWriter(db, batch_size=97) as writer:  # a reopen per part
            for start in range(0, len(part), 13):
                writer.append_inputs(part[start : start + 13])
    assert table_rows(db, "circuit_totals") == recount(tmp_path, simulated)


def test_totals_stay_equal_when_the_history_is_delivered_twice(
    tmp_path: Path, simulated: list[InputRecord]
) -> None:
    db = tmp_path / "h.duckdb"
    half = len(simulated) // 2
    with HistoryWriter(db, batch_size=1_000) as writer:
        writer.append_inputs(simulated[:half])
        writer.append_inputs(simulated[:half], range(half))  # a redelivery, same seqs
        writer.append_inputs(simulated[half:])
    assert table_rows(db, "circuit_totals") == recount(tmp_path, simulated)


def embedded_totals(
    db: Path, settings: CoreSettings, records: list[InputRecord]
) -> tuple[dict[tuple[str, str], tuple[int, int]], dict[tuple[str, str], tuple[int, int]]]:
    """(stored circuit_totals, the core's view totals) after an embedded run."""
    pipeline = EmbeddedPipeline(settings, writer=HistoryWriter(db, batch_size=251))
    pipeline.ingest_many(records)
    pipeline.close()
    stored = {(k, c): (s, f) for k, c, s, f, _, _ in table_rows(db, "circuit_totals")}
    return stored, core_totals(pipeline.core.circuits_view())


def test_totals_of_an_embedded_demo_history_equal_the_cores_view_when_no_worker_is_lost(
    tmp_path: Path, simulated_never_lost: list[InputRecord]
) -> None:
    db = tmp_path / "h.duckdb"
    stored, expected = embedded_totals(db, NEVER_LOST, simulated_never_lost)
    assert any(f for _, f in expected.values()) and any(s for s, _ in expected.values())
    assert stored == expected
    with History.from_db(db, NEVER_LOST) as history:
        assert core_totals(history.circuit_breakers()) == expected


@pytest.mark.xfail(
    strict=True,
    reason="known gap: the core counts a lost worker's WORKER_DISCONNECTION (and a fleet-"
    "guard move) on circuits that no stored outcome names; circuit_totals cannot see it",
)
def test_totals_of_an_embedded_demo_history_with_a_lost_worker_equal_the_cores_view(
    tmp_path: Path, simulated: list[InputRecord]
) -> None:
    stored, expected = embedded_totals(tmp_path / "h.duckdb", CoreSettings(), simulated)
    assert stored == expected


def test_totals_through_the_read_models_equal_the_db_file_and_the_cores_view(
    tmp_path: Path, simulated_never_lost: list[InputRecord]
) -> None:
    db, directory = tmp_path / "h.duckdb", tmp_path / "read-models"
    pipeline = EmbeddedPipeline(NEVER_LOST, writer=HistoryWriter(db))
    writer = pipeline.writer
    assert writer is not None
    publisher = ReadModelPublisher(writer.con, directory)
    half = len(simulated_never_lost) // 2
    for part in (simulated_never_lost[:half], simulated_never_lost[half:]):
        pipeline.ingest_many(part)
        pipeline.flush()
        publisher.publish()
        expected = core_totals(pipeline.core.circuits_view())
        with History.from_read_models(directory, NEVER_LOST) as history:
            assert core_totals(history.circuit_breakers()) == expected
        live = History(writer.con, settings=NEVER_LOST)  # not closed: the writer's connection
        assert core_totals(live.circuit_breakers()) == expected
    pipeline.close()


# --- the trusted decode -------------------------------------------------------------------


def every_kind_of_record() -> tuple[list[Any], list[Any], list[Any]]:
    """(inputs, derived, dead letters) with every optional field somewhere."""
    inputs: list[Any] = [
        event("h1", "HEARTBEAT", 1_000, attributes={"gpu": "a100", "zone": "eu"}),
        event("s1", "TASK_STARTED", 1_100, attempt=1, recovery_command_id="c1"),
        event("k1", "CHECKPOINT", 1_200, checkpoint_seq=3, checkpoint_state=b"\x00\x01\xff"),
        event("k2", "CHECKPOINT", 1_300, task_id="t2", checkpoint_seq=1, checkpoint_state=b""),
        event("f1", "FAILURE", 1_400, failure_type="RESOURCE_EXHAUSTION", message="OOM"),
        event("f2", "FAILURE", 1_500, message="segfault in driver"),
        event("ok", "SUCCESS", 1_600, attempt=1, recovery_command_id="c1", worker_id="w2"),
        Tick(event_id="tick", ts=1_700),
        Operator(event_id="op", ts=1_800, action="FORCE_OPEN", circuit_kind="worker",
                 circuit_id="w1", actor="ana"),
        ConfigChanged(event_id="cfg", ts=1_900, actor="ana",
                      config={"circuits": {"worker": {"failure_threshold": 3}}}),
    ]  # fmt: skip
    derived: list[Any] = [transition("t1", 1_450), command("c1", 1_050)]
    return inputs, derived, [dead_letter("d1", 1_950)]


def write(db: Path, inputs: list[Any], derived: list[Any], letters: list[Any]) -> None:
    with HistoryWriter(db) as writer:
        writer.append_inputs(inputs)
        writer.append_derived(derived)
        writer.append_dead_letters(letters)


def test_trusted_decode_lands_the_same_rows_as_the_pydantic_models(tmp_path: Path) -> None:
    codec = Codec()
    inputs, derived, letters = every_kind_of_record()

    def trusted(records: list[Any]) -> list[dict[str, Any]]:
        return [codec.decode_trusted(codec.encode(r))[1] for r in records]

    write(tmp_path / "models.duckdb", inputs, derived, letters)
    write(tmp_path / "dicts.duckdb", trusted(inputs), trusted(derived), trusted(letters))
    for table in TABLES:
        models = table_rows(tmp_path / "models.duckdb", table)
        assert models == table_rows(tmp_path / "dicts.duckdb", table), table
    assert table_rows(tmp_path / "dicts.duckdb", "checkpoints")[0][-1] == b"\x00\x01\xff"
    assert table_rows(tmp_path / "dicts.duckdb", "dead_letters")[0][5] == b"\x00\xffraw"


def test_models_and_trusted_dicts_mixed_in_one_batch_keep_their_input_order(
    tmp_path: Path,
) -> None:
    codec = Codec()
    inputs, derived, letters = every_kind_of_record()
    mixed = [codec.decode_trusted(codec.encode(r))[1] if n % 2 else r for n, r in enumerate(inputs)]
    write(tmp_path / "models.duckdb", inputs, derived, letters)
    write(tmp_path / "mixed.duckdb", mixed, derived, letters)
    for table in TABLES:
        models = table_rows(tmp_path / "models.duckdb", table)
        assert models == table_rows(tmp_path / "mixed.duckdb", table), table
