"""The history's table layout in DuckDB (CONTRACT.md) and its DDL.

The append-only tables (events, control, circuit_transitions, commands, dead_letters,
circuit_figures, alerts) have no PRIMARY KEY: keeping an ART index on a VARCHAR id costs
about four times the insert itself. The writer drops repeats with an anti-join on (id, ts)
instead (see `DEDUPE_KEYS`).
The upserted tables (circuit_states, checkpoints, recovery_outcomes, health_snapshots)
keep their keys: they are small or change in place.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

_STR = pa.string()
_MAP = pa.map_(pa.string(), pa.string())

# column name -> (DuckDB type, Arrow type); order is the table's column order.
Columns = dict[str, tuple[str, pa.DataType]]

EVENTS: Columns = {
    "event_id": ("VARCHAR", _STR),
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
    # The broker's append time, what decisions ran on (null: a history without it).
    "received_at": ("BIGINT", pa.int64()),
    # Ingestion order: the `.ordered` offset (projector) or the embedded pipeline's counter.
    "seq": ("BIGINT", pa.int64()),
}
CONTROL: Columns = {
    "event_id": ("VARCHAR", _STR),
    "kind": ("VARCHAR", _STR),
    "ts": ("BIGINT", pa.int64()),
    "action": ("VARCHAR", _STR),
    "circuit_kind": ("VARCHAR", _STR),
    "circuit_id": ("VARCHAR", _STR),
    "actor": ("VARCHAR", _STR),
    "config": ("JSON", _STR),
    "received_at": ("BIGINT", pa.int64()),
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
CIRCUIT_TRANSITIONS: Columns = dict(_TRANSITION_FIELDS)
CIRCUIT_STATES: Columns = dict(_TRANSITION_FIELDS)
COMMANDS: Columns = {
    "command_id": ("VARCHAR", _STR),
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
    "event_id": ("VARCHAR", _STR),
    "ts": ("BIGINT", pa.int64()),
    "source_topic": ("VARCHAR", _STR),
    "source_partition": ("INTEGER", pa.int32()),
    "source_offset": ("BIGINT", pa.int64()),
    "raw": ("BLOB", pa.binary()),  # the first DEAD_LETTER_RAW_BYTES of the value
    "reason": ("VARCHAR", _STR),
    "raw_size": ("BIGINT", pa.int64()),  # of the whole value (null: an older letter)
    "raw_sha256": ("VARCHAR", _STR),
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
# What the core counts on a circuit: every `circuit_figures` record it published (at a TICK,
# for each circuit whose figures changed), one row each, with the record's fields as columns.
# The worker columns (hardware_class, live, available) are null but on worker circuits, the
# capacity columns (workers, live_workers, available_workers) but on hardware_class ones.
CIRCUIT_FIGURES: Columns = {
    "event_id": ("VARCHAR", _STR),
    "ts": ("BIGINT", pa.int64()),
    "circuit_kind": ("VARCHAR", _STR),
    "circuit_id": ("VARCHAR", _STR),
    "state": ("VARCHAR", _STR),
    "consecutive_failures": ("INTEGER", pa.int32()),
    "half_open_successes": ("INTEGER", pa.int32()),
    "trips": ("INTEGER", pa.int32()),
    "total_trips": ("INTEGER", pa.int32()),
    "total_successes": ("BIGINT", pa.int64()),
    "total_failures": ("BIGINT", pa.int64()),
    "health": ("DOUBLE", pa.float64()),
    "caused_by": ("VARCHAR", _STR),
    "hardware_class": ("VARCHAR", _STR),
    "live": ("BOOLEAN", pa.bool_()),
    "available": ("BOOLEAN", pa.bool_()),
    "workers": ("INTEGER", pa.int32()),
    "live_workers": ("INTEGER", pa.int32()),
    "available_workers": ("INTEGER", pa.int32()),
}
# What an operator should know now: every `alert` record the core published, one row each,
# with the record's fields as columns. An alert is firing while its alert_id has a FIRING
# row and no RESOLVED one.
ALERTS: Columns = {
    "alert_id": ("VARCHAR", _STR),
    "ts": ("BIGINT", pa.int64()),
    "rule": ("VARCHAR", _STR),
    "subject_kind": ("VARCHAR", _STR),
    "subject_id": ("VARCHAR", _STR),
    "severity": ("VARCHAR", _STR),
    "state": ("VARCHAR", _STR),
    "message": ("VARCHAR", _STR),
    "caused_by": ("VARCHAR", _STR),
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
    "circuit_figures": CIRCUIT_FIGURES,
    # The newest circuit_figures row of each circuit, kept by the writer: what "now" reads,
    # in one row per circuit however long the history (circuit_figures grows every TICK).
    "circuit_figures_now": CIRCUIT_FIGURES,
    "alerts": ALERTS,
}
# A record delivered again is the same record: same id and same ts. Matching on ts too lets
# DuckDB skip every row group outside the batch's time range (zone maps), so the anti-join
# reads a few row groups instead of the whole id column. The key is the columns listed, ts
# last: an alert's FIRING and RESOLVED records share its alert_id, so its state is key too.
DEDUPE_KEYS: dict[str, tuple[str, ...]] = {
    "events": ("event_id", "ts"),
    "control": ("event_id", "ts"),
    "circuit_transitions": ("event_id", "ts"),
    "commands": ("command_id", "ts"),
    "dead_letters": ("event_id", "ts"),
    "circuit_figures": ("event_id", "ts"),
    "alerts": ("alert_id", "state", "ts"),
}
_EXTRA_DDL = [
    # circuit_states is one row per circuit: the newest transition.
    "ALTER TABLE circuit_states ADD PRIMARY KEY (circuit_kind, circuit_id)",
    "ALTER TABLE circuit_figures_now ADD PRIMARY KEY (circuit_kind, circuit_id)",
]
# Filled from the history when a file written before it gets the table.
_BACKFILL = {
    "circuit_figures_now": "INSERT INTO circuit_figures_now SELECT * FROM circuit_figures "
    "QUALIFY row_number() OVER (PARTITION BY circuit_kind, circuit_id "
    "ORDER BY ts DESC, rowid DESC) = 1",
}


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every history table that does not exist yet, and add the columns a table of
    an older history file lacks (at its end: the writers insert by name)."""
    existing = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    for name, columns in TABLES.items():
        if name in existing:
            have = {
                row[0]
                for row in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [name]
                ).fetchall()
            }
            for col, (sql, _) in columns.items():
                if col not in have:
                    con.execute(f"ALTER TABLE {name} ADD COLUMN {col} {sql.split()[0]}")
            continue
        body = ", ".join(f"{col} {sql}" for col, (sql, _) in columns.items())
        con.execute(f"CREATE TABLE {name} ({body})")
        for ddl in _EXTRA_DDL:
            if f" {name} " in ddl:
                con.execute(ddl)
        if name in _BACKFILL and existing:
            con.execute(_BACKFILL[name])


def arrow_schema(columns: Columns) -> pa.Schema:
    return pa.schema([(col, arrow_type) for col, (_, arrow_type) in columns.items()])
