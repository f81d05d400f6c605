"""The bulk writer of the history in DuckDB (the layout is in schema.py).

`HistoryWriter` is the one piece that writes the history, used by the embedded pipeline
and by the Kafka → DuckDB projector. Records (pydantic models, the plain dicts of the
codec's trusted decode, or worker events already in Arrow columns from the projector's
columnar decode) are buffered and appended in batches as Arrow tables (never
`executemany`, about 1 ms a row). A record delivered twice is stored once: each batch is
anti-joined on (id, ts) against the rows of its own time range (see schema.DEDUPE_KEYS).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from faultstream.events.gcpause import gc_paused
from faultstream.events.models import Alert, CircuitFigures, CircuitStateChanged, WorkerEvent

from .schema import (
    ALERTS,
    CHECKPOINTS,
    CIRCUIT_FIGURES,
    CIRCUIT_TRANSITIONS,
    COMMANDS,
    CONTROL,
    DEAD_LETTERS,
    DEDUPE_KEYS,
    EVENTS,
    HEALTH_SNAPSHOTS,
    Columns,
    arrow_schema,
    create_tables,
)

Row = Any  # a record model or the dict of its fields


_FIELDS = attrgetter("__dict__")  # a pydantic model's __dict__ is exactly its fields


def _arrow(columns: Columns, rows: list[Row]) -> pa.Table:
    """Rows (models, or the dicts of the trusted decode, mixed in any order) as one Arrow
    table. Arrow reads each record's fields by name in C (a struct array, then split into
    columns): no Python loop per column, no transpose."""
    if not rows:
        return arrow_schema(columns).empty_table()
    fields = [r if type(r) is dict else _FIELDS(r) for r in rows]
    struct = pa.array(fields, type=pa.struct(list(arrow_schema(columns))))
    return pa.Table.from_struct_array(struct)


def _with_seq(columns: Columns, rows: list[Row], seqs: list[int]) -> pa.Table:
    record_columns = {col: spec for col, spec in columns.items() if col != "seq"}
    table = _arrow(record_columns, rows)
    return table.append_column("seq", pa.array(seqs, type=pa.int64()))


def _events(b: Batch) -> pa.Table:
    """The batch's worker events as one table, in `seq` order."""
    tables = list(b.event_tables)
    if b.events:
        tables.append(_with_seq(EVENTS, b.events, b.event_seqs))
    if len(tables) == 1:
        return tables[0]
    events = pa.concat_tables(tables)
    # Rows decoded one by one (rare beside columns) go back to their place in the input.
    return events.sort_by("seq") if b.events and b.event_tables else events


def _control_fields(record: Row) -> dict[str, Any]:
    """A control record's columns: the trusted decode's dict already has them (config as
    JSON text); a model's config is written as the same sorted JSON."""
    if type(record) is dict:
        return record
    fields = dict(_FIELDS(record))
    config = fields.get("config")
    fields["config"] = None if config is None else json.dumps(config, sort_keys=True)
    return fields


# At least one DuckDB row group (122,880 rows) per transaction: a full group goes straight
# to the file instead of through the WAL and a later checkpoint (~1.5x cheaper than 50k).
DEFAULT_BATCH_SIZE = 131_072

_OUTCOME_SELECT = """
    SELECT c.command_id, c.ts, c.task_id, c.task_type, c.worker_id, c.strategy, c.attempt,
           e.event_id AS outcome_event_id, e.kind AS outcome_kind, e.ts AS outcome_ts,
           e.worker_id AS outcome_worker_id, e.hardware_class AS outcome_hardware_class,
           e.failure_type AS outcome_failure_type
    FROM {commands} c JOIN {events} e ON e.recovery_command_id = c.command_id
    WHERE e.kind IN ('SUCCESS', 'FAILURE')
"""
_CHECKPOINT_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in CHECKPOINTS if c != "task_id")


@dataclass
class Batch:
    """The records buffered for one transaction."""

    events: list[Row] = field(default_factory=list)
    event_seqs: list[int] = field(default_factory=list)
    event_tables: list[pa.Table] = field(default_factory=list)  # columnar, `seq` included
    control: list[Row] = field(default_factory=list)
    control_seqs: list[int] = field(default_factory=list)
    transitions: list[Row] = field(default_factory=list)
    commands: list[Row] = field(default_factory=list)
    figures: list[Row] = field(default_factory=list)
    alerts: list[Row] = field(default_factory=list)
    dead_letters: list[Row] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0


class HistoryWriter:
    """Appends records to the history tables of one DuckDB file, in batches.

    Call `flush()` (or `close()`) to make buffered records visible to queries; the writer
    also flushes by itself once `batch_size` records are waiting.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.db_path = str(db_path)
        self.batch_size = batch_size
        self.con = duckdb.connect(self.db_path)
        create_tables(self.con)
        self._batch = Batch()
        (self._next_seq,) = self.con.execute(
            "SELECT coalesce(max(seq) + 1, 0) FROM "
            "(SELECT max(seq) AS seq FROM events UNION ALL SELECT max(seq) FROM control)"
        ).fetchone()

    # --- buffering ----------------------------------------------------------------------

    def append_inputs(self, records: Iterable[Row], seqs: Iterable[int] | None = None) -> None:
        """`seqs` is each record's place in the input order (default: the next numbers).
        A record is a model or, from the trusted decode, a dict with every field."""
        records = records if isinstance(records, list) else list(records)
        if seqs is None:
            seqs = range(self._next_seq, self._next_seq + len(records))
        seqs = seqs if isinstance(seqs, (list, range)) else list(seqs)
        batch = self._batch
        kinds = set(map(type, records))
        if kinds == {WorkerEvent}:  # the common case: no control records at all
            batch.events.extend(records)
            batch.event_seqs.extend(seqs)
        else:
            for record, seq in zip(records, seqs, strict=True):
                if _is_worker_event(record):
                    batch.events.append(record)
                    batch.event_seqs.append(seq)
                else:
                    batch.control.append(record)
                    batch.control_seqs.append(seq)
        if records:
            self._next_seq = max(self._next_seq, seqs[-1] + 1)
        batch.size += len(records)
        self._maybe_flush()

    def append_event_table(self, table: pa.Table) -> None:
        """Worker events already in columns: the EVENTS layout, `seq` included (the
        projector's columnar decode, columns.py)."""
        if not table.num_rows:
            return
        self._batch.event_tables.append(table)
        self._next_seq = max(self._next_seq, pc.max(table.column("seq")).as_py() + 1)
        self._batch.size += table.num_rows
        self._maybe_flush()

    def append_derived(self, records: Iterable[Row]) -> None:
        """Circuit transitions, recovery commands, circuit figures and alerts, as models or
        as the dicts of the trusted decode, in any mix."""
        batch = self._batch
        for record in records:
            kind = type(record)
            if kind is dict:
                if "to_state" in record:
                    batch.transitions.append(record)
                elif "total_trips" in record:
                    batch.figures.append(record)
                elif "alert_id" in record:
                    batch.alerts.append(record)
                else:
                    batch.commands.append(record)
            elif kind is CircuitStateChanged:
                batch.transitions.append(record)
            elif kind is CircuitFigures:
                batch.figures.append(record)
            elif kind is Alert:
                batch.alerts.append(record)
            else:
                batch.commands.append(record)
            batch.size += 1
        self._maybe_flush()

    def append_dead_letters(self, records: Iterable[Row]) -> None:
        batch = self._batch
        for record in records:
            batch.dead_letters.append(record)
            batch.size += 1
        self._maybe_flush()

    def snapshot_health(self, ts: int, view: Mapping[str, Any]) -> None:
        """Record the fleet figures of a `circuits_view()` as of event time `ts`."""
        aggregate = view.get("aggregate", {})

        def open_in(section: str) -> int:
            circuits = view.get(section, {}) or {}
            return sum(1 for c in circuits.values() if c.get("state") in ("OPEN", "FORCED_OPEN"))

        self._batch.health.append(
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
        self._batch.size += 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self._batch.size >= self.batch_size:
            self.flush()

    # --- writing ------------------------------------------------------------------------

    def flush(
        self, before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None
    ) -> None:
        """Write what is buffered in one transaction; `before_commit(con)` runs inside it
        (the projector stores its Kafka offsets there, so rows and offsets commit together)."""
        self.write_batch(self.take_batch(), before_commit)

    def take_batch(self) -> Batch:
        """What is buffered, for `write_batch`; buffering starts afresh. (The projector
        takes a batch on its consuming thread and writes it on its landing thread.)"""
        batch, self._batch = self._batch, Batch()
        return batch

    def write_batch(
        self,
        batch: Batch,
        before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> None:
        """Write a taken batch in one transaction, as `flush` does."""
        if not batch.size and before_commit is None:
            return
        self.con.begin()
        try:
            self._write_rows(batch)
            if before_commit is not None:
                before_commit(self.con)
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def _write_rows(self, b: Batch) -> None:
        """Every table's rows of one batch, inside the caller's transaction."""
        con = self.con
        registered: list[str] = []
        # Building columns from many live objects triggers needless GC passes.
        with gc_paused():
            try:
                self._write_tables(b, registered)
            finally:
                for name in registered:
                    con.unregister(name)  # let the batch's Arrow memory go

    def _write_tables(self, b: Batch, registered: list[str]) -> None:
        con = self.con
        events = commands = None
        if b.events or b.event_tables:
            events = self._append("events", _events(b), registered)
        if b.control:
            control = list(map(_control_fields, b.control))
            batch = _with_seq(CONTROL, control, b.control_seqs)
            self._append("control", batch, registered)
        if b.transitions:
            batch = _arrow(CIRCUIT_TRANSITIONS, b.transitions)
            transitions = self._append("circuit_transitions", batch, registered)
            self._upsert_circuit_states(transitions)
        if b.commands:
            commands = self._append("commands", _arrow(COMMANDS, b.commands), registered)
        if b.figures:
            figures = self._append(
                "circuit_figures", _arrow(CIRCUIT_FIGURES, b.figures), registered
            )
            if figures.num_rows:
                self._upsert_current("circuit_figures_now", figures)
        if b.alerts:
            self._append("alerts", _arrow(ALERTS, b.alerts), registered)
        if events is not None and events.num_rows:
            self._upsert_checkpoints()
            self._join_outcomes("new_events", "events")
        if commands is not None and commands.num_rows:
            self._join_outcomes("new_commands", "commands")
        if b.dead_letters:
            self._append("dead_letters", _arrow(DEAD_LETTERS, b.dead_letters), registered)
        if b.health:
            health = pa.Table.from_pylist(b.health, schema=arrow_schema(HEALTH_SNAPSHOTS))
            con.register("new_health", health)
            registered.append("new_health")
            con.execute("INSERT INTO health_snapshots SELECT * FROM new_health "
                        "ON CONFLICT DO NOTHING")  # fmt: skip

    def _append(self, table: str, batch: pa.Table, registered: list[str]) -> pa.Table:
        """Insert the rows of `batch` not stored yet; registers them as `new_<table>`."""
        key = DEDUPE_KEYS[table]
        id_col, ts_col = key[0], key[-1]
        ids = batch.column(id_col)
        if pc.count_distinct(ids).as_py() != batch.num_rows:
            # Repeats inside the batch itself: keep the first of each.
            first = {}
            columns = [batch.column(col).to_pylist() for col in key]
            for i, row_key in enumerate(zip(*columns, strict=True)):
                first.setdefault(row_key, i)
            batch = batch.take(sorted(first.values()))
        bounds = pc.min_max(batch.column(ts_col)).as_py()
        listed = ", ".join(key)
        self.con.register("incoming", batch)
        stored = self.con.execute(
            f"SELECT {', '.join(f'b.{col}' for col in key)} FROM incoming b SEMI JOIN "
            f"(SELECT {listed} FROM {table} WHERE {ts_col} BETWEEN ? AND ?) t "
            f"USING ({listed})",
            [bounds["min"], bounds["max"]],
        ).fetchall()
        self.con.unregister("incoming")
        if stored and len(key) == 2:
            repeated = pa.array([row[0] for row in stored], pa.string())
            batch = batch.filter(pc.invert(pc.is_in(batch.column(id_col), repeated)))
        elif stored:
            # A key of several columns (an alert's): the id alone names several records.
            seen = set(stored)
            columns = [batch.column(col).to_pylist() for col in key]
            fresh = [row_key not in seen for row_key in zip(*columns, strict=True)]
            batch = batch.filter(pa.array(fresh, pa.bool_()))
        name = f"new_{table}"
        self.con.register(name, batch)
        registered.append(name)
        # By name: a history file made before a column was added has it last.
        self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {name}")
        return batch

    def _upsert_circuit_states(self, transitions: pa.Table) -> None:
        # A batch may hold several changes of one circuit; the last one is current.
        order = pa.array(range(transitions.num_rows), pa.int64())
        self.con.register("ordered_transitions", transitions.append_column("n", order))
        self.con.execute(
            "INSERT OR REPLACE INTO circuit_states SELECT * EXCLUDE (n) FROM ordered_transitions "
            "QUALIFY row_number() OVER (PARTITION BY circuit_kind, circuit_id ORDER BY n DESC) = 1"
        )
        self.con.unregister("ordered_transitions")

    def _upsert_current(self, table: str, rows: pa.Table) -> None:
        """Each circuit's newest row of `rows` replaces its row in `table`, unless that one
        is newer (a redelivered old record); rows of one ts: the later one landed wins."""
        order = pa.array(range(rows.num_rows), pa.int64())
        self.con.register("ordered_rows", rows.append_column("n", order))
        columns = [name for name in rows.column_names if name not in ("circuit_kind", "circuit_id")]
        updates = ", ".join(f"{name} = excluded.{name}" for name in columns)
        self.con.execute(
            f"INSERT INTO {table} SELECT * EXCLUDE (n) FROM ordered_rows "
            "QUALIFY row_number() OVER (PARTITION BY circuit_kind, circuit_id "
            "ORDER BY ts DESC, n DESC) = 1 "
            f"ON CONFLICT (circuit_kind, circuit_id) DO UPDATE SET {updates} "
            f"WHERE excluded.ts >= {table}.ts"
        )
        self.con.unregister("ordered_rows")

    def _upsert_checkpoints(self) -> None:
        columns = ", ".join(CHECKPOINTS)
        self.con.execute(
            f"INSERT INTO checkpoints SELECT {columns} FROM new_events "
            "WHERE checkpoint_seq IS NOT NULL AND task_id IS NOT NULL "
            "QUALIFY row_number() OVER (PARTITION BY task_id "
            "ORDER BY ts DESC, checkpoint_seq DESC, seq DESC) = 1 "
            f"ON CONFLICT (task_id) DO UPDATE SET {_CHECKPOINT_UPDATES} "
            "WHERE excluded.ts >= checkpoints.ts"
        )

    def _join_outcomes(self, name: str, side: str) -> None:
        # New outcomes meet stored commands, and new commands meet stored outcomes, so the
        # join holds whichever of the two a projector happens to read first.
        other = "commands" if side == "events" else "events"
        sql = _OUTCOME_SELECT.format(**{side: name, other: other})
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


def _is_worker_event(record: Row) -> bool:
    kind = type(record)
    return kind is WorkerEvent or (kind is dict and "worker_id" in record)
