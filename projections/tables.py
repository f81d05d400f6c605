"""The history in DuckDB: table layout (CONTRACT.md) and the bulk writer.

`HistoryWriter` is the one piece that writes the history, used by the embedded pipeline
and by the Kafka → DuckDB projector. Records are buffered and appended in batches as Arrow
tables (never `executemany`, about 1 ms a row). Every table is keyed by its record's id and
written with ON CONFLICT, so a record delivered twice is stored once.
"""

from __future__ import annotations

import gc
import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from faultstream.events.models import (
    CircuitStateChanged,
    DeadLetter,
    DerivedRecord,
    InputRecord,
    RecoveryCommand,
    WorkerEvent,
)

_STR = pa.string()
_MAP = pa.map_(pa.string(), pa.string())

# column name -> (DuckDB type, Arrow type); order is the table's column order.
Columns = dict[str, tuple[str, pa.DataType]]

EVENTS: Columns = {
    "event_id": ("VARCHAR PRIMARY KEY", _STR),
    "kind": ("VARCHAR", _STR),
    "ts": ("BIGINT", pa.int64()),
    "worker_id": ("VARCHAR", _STR),
    "hardware_class": ("VARCHAR", _STR),
    "task_id": ("VARCHAR", _STR),
    "task_type": ("VARCHAR", _STR),
    "failure_type": ("VARCHAR", _STR),
    "message": ("VARCHAR", _STR),
    "attempt": ("INTEGER", pa.int32()),
    "recovery_command_id": ("VARCHAR", _STR),
    "attributes": ("MAP(VARCHAR, VARCHAR)", _MAP),
    "checkpoint_seq": ("BIGINT", pa.int64()),
    "checkpoint_state": ("BLOB", pa.binary()),
    # Ingestion order: the decisions offset (projector) or the embedded pipeline's counter.
    "seq": ("BIGINT", pa.int64()),
}
CONTROL: Columns = {
    "event_id": ("VARCHAR PRIMARY KEY", _STR),
    "kind": ("VARCHAR", _STR),
    "ts": ("BIGINT", pa.int64()),
    "action": ("VARCHAR", _STR),
    "circuit_kind": ("VARCHAR", _STR),
    "circuit_id": ("VARCHAR", _STR),
    "actor": ("VARCHAR", _STR),
    "config": ("JSON", _STR),
    "seq": ("BIGINT", pa.int64()),
}
_TRANSITION_FIELDS: Columns = {
    "event_id": ("VARCHAR", _STR),
    "ts": ("BIGINT", pa.int64()),
    "circuit_kind": ("VARCHAR", _STR),
    "circuit_id": ("VARCHAR", _STR),
    "from_state": ("VARCHAR", _STR),
    "to_state": ("VARCHAR", _STR),
    "reason": ("VARCHAR", _STR),
    "consecutive_failures": ("INTEGER", pa.int32()),
    "trips": ("INTEGER", pa.int32()),
    "reset_timeout_s": ("DOUBLE", pa.float64()),
    "health": ("DOUBLE", pa.float64()),
    "caused_by": ("VARCHAR", _STR),
}
CIRCUIT_TRANSITIONS: Columns = {
    **_TRANSITION_FIELDS,
    "event_id": ("VARCHAR PRIMARY KEY", _STR),
}
CIRCUIT_STATES: Columns = dict(_TRANSITION_FIELDS)
COMMANDS: Columns = {
    "command_id": ("VARCHAR PRIMARY KEY", _STR),
    "ts": ("BIGINT", pa.int64()),
    "task_id": ("VARCHAR", _STR),
    "task_type": ("VARCHAR", _STR),
    "worker_id": ("VARCHAR", _STR),
    "strategy": ("VARCHAR", _STR),
    "attempt": ("INTEGER", pa.int32()),
    "delay_s": ("DOUBLE", pa.float64()),
    "target_worker_id": ("VARCHAR", _STR),
    "target_hardware_class": ("VARCHAR", _STR),
    "parameters": ("MAP(VARCHAR, VARCHAR)", _MAP),
    "checkpoint_seq": ("BIGINT", pa.int64()),
    "reason": ("VARCHAR", _STR),
    "caused_by": ("VARCHAR", _STR),
}
CHECKPOINTS: Columns = {
    "task_id": ("VARCHAR PRIMARY KEY", _STR),
    "event_id": ("VARCHAR", _STR),
    "ts": ("BIGINT", pa.int64()),
    "worker_id": ("VARCHAR", _STR),
    "hardware_class": ("VARCHAR", _STR),
    "task_type": ("VARCHAR", _STR),
    "checkpoint_seq": ("BIGINT", pa.int64()),
    "checkpoint_state": ("BLOB", pa.binary()),
}
DEAD_LETTERS: Columns = {
    "event_id": ("VARCHAR PRIMARY KEY", _STR),
    "ts": ("BIGINT", pa.int64()),
    "source_topic": ("VARCHAR", _STR),
    "source_partition": ("INTEGER", pa.int32()),
    "source_offset": ("BIGINT", pa.int64()),
    "raw": ("BLOB", pa.binary()),
    "reason": ("VARCHAR", _STR),
}
RECOVERY_OUTCOMES: Columns = {
    "command_id": ("VARCHAR PRIMARY KEY", _STR),
    "ts": ("BIGINT", pa.int64()),
    "task_id": ("VARCHAR", _STR),
    "task_type": ("VARCHAR", _STR),
    "worker_id": ("VARCHAR", _STR),
    "strategy": ("VARCHAR", _STR),
    "attempt": ("INTEGER", pa.int32()),
    "outcome_event_id": ("VARCHAR", _STR),
    "outcome_kind": ("VARCHAR", _STR),
    "outcome_ts": ("BIGINT", pa.int64()),
    "outcome_worker_id": ("VARCHAR", _STR),
    "outcome_hardware_class": ("VARCHAR", _STR),
    "outcome_failure_type": ("VARCHAR", _STR),
}
HEALTH_SNAPSHOTS: Columns = {
    "ts": ("BIGINT PRIMARY KEY", pa.int64()),
    "total_circuits": ("INTEGER", pa.int32()),
    "open_circuits": ("INTEGER", pa.int32()),
    "half_open_circuits": ("INTEGER", pa.int32()),
    "closed_circuits": ("INTEGER", pa.int32()),
    "average_health": ("DOUBLE", pa.float64()),
    "overall_health": ("DOUBLE", pa.float64()),
    "open_workers": ("INTEGER", pa.int32()),
    "open_hardware_classes": ("INTEGER", pa.int32()),
    "open_task_types": ("INTEGER", pa.int32()),
}

TABLES: dict[str, Columns] = {
    "events": EVENTS,
    "control": CONTROL,
    "circuit_transitions": CIRCUIT_TRANSITIONS,
    "circuit_states": CIRCUIT_STATES,
    "commands": COMMANDS,
    "checkpoints": CHECKPOINTS,
    "dead_letters": DEAD_LETTERS,
    "recovery_outcomes": RECOVERY_OUTCOMES,
    "health_snapshots": HEALTH_SNAPSHOTS,
}
_EXTRA_DDL = [
    # circuit_states is one row per circuit: the newest transition.
    "ALTER TABLE circuit_states ADD PRIMARY KEY (circuit_kind, circuit_id)",
]


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every history table that does not exist yet."""
    existing = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    for name, columns in TABLES.items():
        if name in existing:
            continue
        body = ", ".join(f"{col} {sql}" for col, (sql, _) in columns.items())
        con.execute(f"CREATE TABLE {name} ({body})")
        if name == "circuit_states":
            for ddl in _EXTRA_DDL:
                con.execute(ddl)


def _arrow(
    columns: Columns, rows: list[Any], getters: Mapping[str, Callable[[Any], Any]]
) -> pa.Table:
    names = list(columns)
    if getters:
        values = [
            [getters[col](r) for r in rows] if col in getters else [getattr(r, col) for r in rows]
            for col in names
        ]
    else:
        # One C-level attrgetter per row, then transpose: far cheaper than a loop per column.
        values = list(zip(*map(attrgetter(*names), rows), strict=True))
    arrays = [
        pa.array(vals, type=arrow_type)
        for vals, (_, arrow_type) in zip(values, columns.values(), strict=True)
    ]
    return pa.Table.from_arrays(arrays, names=names)


def _with_seq(columns: Columns, rows: list[Any], seqs: list[int], getters: Any) -> pa.Table:
    record_columns = {col: spec for col, spec in columns.items() if col != "seq"}
    table = _arrow(record_columns, rows, getters)
    return table.append_column("seq", pa.array(seqs, type=pa.int64()))


def _config_json(record: Any) -> str | None:
    config = getattr(record, "config", None)
    return None if config is None else json.dumps(config, sort_keys=True)


_CONTROL_GETTERS: dict[str, Callable[[Any], Any]] = {
    "action": lambda r: getattr(r, "action", None),
    "circuit_kind": lambda r: getattr(r, "circuit_kind", None),
    "circuit_id": lambda r: getattr(r, "circuit_id", None),
    "actor": lambda r: getattr(r, "actor", None),
    "config": _config_json,
}

_OUTCOME_SELECT = """
    SELECT c.command_id, c.ts, c.task_id, c.task_type, c.worker_id, c.strategy, c.attempt,
           e.event_id AS outcome_event_id, e.kind AS outcome_kind, e.ts AS outcome_ts,
           e.worker_id AS outcome_worker_id, e.hardware_class AS outcome_hardware_class,
           e.failure_type AS outcome_failure_type
    FROM {commands} c JOIN {events} e ON e.recovery_command_id = c.command_id
    WHERE e.kind IN ('SUCCESS', 'FAILURE')
"""


class HistoryWriter:
    """Appends records to the history tables of one DuckDB file, in batches.

    Call `flush()` (or `close()`) to make buffered records visible to queries; the writer
    also flushes by itself once `batch_size` records are waiting.
    """

    def __init__(self, db_path: str | Path, *, batch_size: int = 50_000) -> None:
        self.db_path = str(db_path)
        self.batch_size = batch_size
        self.con = duckdb.connect(self.db_path)
        create_tables(self.con)
        self._events: list[WorkerEvent] = []
        self._control: list[InputRecord] = []
        self._transitions: list[CircuitStateChanged] = []
        self._commands: list[RecoveryCommand] = []
        self._dead_letters: list[DeadLetter] = []
        self._health: list[dict[str, Any]] = []
        self._pending = 0
        self._event_seqs: list[int] = []
        self._control_seqs: list[int] = []
        (self._next_seq,) = self.con.execute(
            "SELECT coalesce(max(seq) + 1, 0) FROM "
            "(SELECT max(seq) AS seq FROM events UNION ALL SELECT max(seq) FROM control)"
        ).fetchone()

    # --- buffering ----------------------------------------------------------------------

    def append_inputs(
        self, records: Iterable[InputRecord], seqs: Iterable[int] | None = None
    ) -> None:
        """`seqs` is each record's place in the input order (default: the next numbers)."""
        if seqs is None:
            seqs = itertools.count(self._next_seq)
        seq = self._next_seq - 1
        for record, seq in zip(records, seqs, strict=False):
            if isinstance(record, WorkerEvent):
                self._events.append(record)
                self._event_seqs.append(seq)
            else:
                self._control.append(record)
                self._control_seqs.append(seq)
            self._pending += 1
        self._next_seq = max(self._next_seq, seq + 1)
        self._maybe_flush()

    def append_derived(self, records: Iterable[DerivedRecord]) -> None:
        for record in records:
            if isinstance(record, CircuitStateChanged):
                self._transitions.append(record)
            else:
                self._commands.append(record)
            self._pending += 1
        self._maybe_flush()

    def append_dead_letters(self, records: Iterable[DeadLetter]) -> None:
        for record in records:
            self._dead_letters.append(record)
            self._pending += 1
        self._maybe_flush()

    def snapshot_health(self, ts: int, view: Mapping[str, Any]) -> None:
        """Record the fleet figures of a `circuits_view()` as of event time `ts`."""
        aggregate = view.get("aggregate", {})

        def open_in(section: str) -> int:
            circuits = view.get(section, {}) or {}
            return sum(1 for c in circuits.values() if c.get("state") in ("OPEN", "FORCED_OPEN"))

        self._health.append(
            {
                "ts": ts,
                "total_circuits": aggregate.get("total_circuits", 0),
                "open_circuits": aggregate.get("open_circuits", 0),
                "half_open_circuits": aggregate.get("half_open_circuits", 0),
                "closed_circuits": aggregate.get("closed_circuits", 0),
                "average_health": aggregate.get("average_health", 100.0),
                "overall_health": aggregate.get("overall_health", 100.0),
                "open_workers": open_in("workers"),
                "open_hardware_classes": open_in("hardware_classes"),
                "open_task_types": open_in("task_types"),
            }
        )
        self._pending += 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self._pending >= self.batch_size:
            self.flush()

    # --- writing ------------------------------------------------------------------------

    def flush(
        self, before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None
    ) -> None:
        """Write what is buffered in one transaction; `before_commit(con)` runs inside it
        (the projector stores its Kafka offsets there, so rows and offsets commit together)."""
        if not self._pending and before_commit is None:
            return
        con = self.con
        # Building columns from many live objects triggers needless GC passes.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        con.begin()
        try:
            events = self._events and _with_seq(EVENTS, self._events, self._event_seqs, {})
            commands = self._commands and _arrow(COMMANDS, self._commands, {})
            if events:
                self._insert("events", events)
            if self._control:
                control = _with_seq(CONTROL, self._control, self._control_seqs, _CONTROL_GETTERS)
                self._insert("control", control)
            if self._transitions:
                transitions = _arrow(CIRCUIT_TRANSITIONS, self._transitions, {})
                self._insert("circuit_transitions", transitions)
                self._upsert_circuit_states()
            if commands:
                self._insert("commands", commands)
            if events:
                self._upsert_checkpoints()
                self._join_outcomes(events, "batch_events", _OUTCOME_SELECT, "events")
            if commands:
                self._join_outcomes(commands, "batch_commands", _OUTCOME_SELECT, "commands")
            if self._dead_letters:
                self._insert("dead_letters", _arrow(DEAD_LETTERS, self._dead_letters, {}))
            if self._health:
                health = pa.Table.from_pylist(self._health, schema=_schema(HEALTH_SNAPSHOTS))
                self._insert("health_snapshots", health)
            if before_commit is not None:
                before_commit(con)
            con.commit()
            for name in ("batch", "batch_events", "batch_commands"):
                con.unregister(name)  # let the batch's Arrow memory go
        except BaseException:
            con.rollback()
            raise
        finally:
            if gc_was_enabled:
                gc.enable()
        self._events, self._control, self._transitions = [], [], []
        self._commands, self._dead_letters, self._health = [], [], []
        self._event_seqs, self._control_seqs = [], []
        self._pending = 0

    def _insert(self, table: str, batch: pa.Table) -> None:
        self.con.register("batch", batch)
        self.con.execute(f"INSERT INTO {table} SELECT * FROM batch ON CONFLICT DO NOTHING")

    def _upsert_circuit_states(self) -> None:
        # A batch may hold several changes of one circuit; the last one is current.
        current = {(t.circuit_kind, t.circuit_id): t for t in self._transitions}
        batch = _arrow(CIRCUIT_STATES, list(current.values()), {})
        self.con.register("batch", batch)
        self.con.execute("INSERT OR REPLACE INTO circuit_states SELECT * FROM batch")

    def _upsert_checkpoints(self) -> None:
        newest: dict[str, WorkerEvent] = {}
        for event in self._events:
            if event.checkpoint_seq is None:
                continue
            seen = newest.get(event.task_id)  # type: ignore[arg-type]
            if seen is None or (event.ts, event.checkpoint_seq) >= (seen.ts, seen.checkpoint_seq):
                newest[event.task_id] = event  # type: ignore[index]
        if not newest:
            return
        batch = _arrow(CHECKPOINTS, list(newest.values()), {})
        updates = ", ".join(f"{col} = excluded.{col}" for col in CHECKPOINTS if col != "task_id")
        self.con.register("batch", batch)
        self.con.execute(
            "INSERT INTO checkpoints SELECT * FROM batch ON CONFLICT (task_id) DO UPDATE "
            f"SET {updates} WHERE excluded.ts >= checkpoints.ts"
        )

    def _join_outcomes(self, batch: pa.Table, name: str, select: str, side: str) -> None:
        # New outcomes meet stored commands, and new commands meet stored outcomes, so the
        # join holds whichever of the two a projector happens to read first.
        other = "commands" if side == "events" else "events"
        sql = select.format(**{side: name, other: other})
        self.con.register(name, batch)
        self.con.execute(
            f"INSERT INTO recovery_outcomes {sql} "
            "QUALIFY row_number() OVER (PARTITION BY c.command_id "
            "ORDER BY e.ts, e.event_id) = 1 ON CONFLICT DO NOTHING"
        )

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.con.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _schema(columns: Columns) -> pa.Schema:
    return pa.schema([(col, arrow_type) for col, (_, arrow_type) in columns.items()])
