"""`History`: the one set of queries over the history that the API, the dashboard, replay
and tune share.

It opens either the Parquet read models the projector publishes (in-memory DuckDB with a
view per table over the files the manifest lists; re-read when the manifest changes), or a
DuckDB file that nobody is writing (read-only). Never the projector's live file.
"""

from __future__ import annotations

import heapq
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import ConfigChanged, InputRecord, Operator, Tick, WorkerEvent

from .health import FIGURES_TABLE, figures_document, in_view_order, newest_figures_sql
from .read_models import MANIFEST, read_manifest
from .schema import TABLES

_BUCKET = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_FETCH_ROWS = 10_000
# The event column that names each kind of circuit.
_CIRCUIT_COLUMNS = {"worker": "worker_id", "hardware_class": "hardware_class",
                    "task_type": "task_type"}  # fmt: skip
# `circuit_figures` with its landing order (the newer of two rows of one circuit with the
# same ts is the one landed later): (file, row in file) in the read models, where parts are
# named in append order; rowid in a DuckDB file.
_LANDED_FIGURES = "landed_circuit_figures"
FIGURES_NOW_TABLE = "circuit_figures_now"
_LANDING = ("_landing_file", "_landing_row")


class HistoryError(FaultstreamError):
    """A history that cannot be opened or a query argument that makes no sense."""


def bucket_ms(bucket: str) -> int:
    """'15m', '1h', '1d' → milliseconds."""
    match = _BUCKET.match(bucket.strip())
    if not match or int(match.group(1)) <= 0:
        raise HistoryError(f"bucket: {bucket!r} is not a positive duration like 15m, 1h or 1d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


class History:
    """Queries over one recorded history. Thread-safe (one lock around the connection)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        read_models_dir: Path | None = None,
        settings: CoreSettings | None = None,
    ) -> None:
        self.con = con
        self.read_models_dir = read_models_dir
        self.settings = settings or CoreSettings()
        self._lock = threading.RLock()
        self._manifest_stamp: tuple[int, int] | None = None
        self._cache: dict[str, Any] = {}

    # --- opening --------------------------------------------------------------------------

    @classmethod
    def from_read_models(
        cls, directory: str | Path, settings: CoreSettings | None = None
    ) -> History:
        history = cls(duckdb.connect(), read_models_dir=Path(directory), settings=settings)
        history.refresh()
        return history

    @classmethod
    def from_db(cls, path: str | Path, settings: CoreSettings | None = None) -> History:
        if not Path(path).is_file():
            raise HistoryError(f"{path}: no such DuckDB file")
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.IOException as exc:
            raise HistoryError(
                f"{path}: cannot open read-only ({exc}); while the projector writes it, "
                "read its read models instead"
            ) from None
        return cls(con, settings=settings)

    def refresh(self) -> None:
        """Point the views at the newest published files (no-op on a DuckDB file)."""
        if self.read_models_dir is None:
            return
        with self._lock:
            try:
                stat = (self.read_models_dir / MANIFEST).stat()
            except FileNotFoundError:
                stat = None
            stamp = (stat.st_mtime_ns, stat.st_ino) if stat else None
            if stamp is not None and stamp == self._manifest_stamp:
                return
            manifest = read_manifest(self.read_models_dir)
            for table in TABLES:
                published = manifest.files.get(table)
                if published is None:  # by a projector older than this table: none of it yet
                    continue
                files = [str(self.read_models_dir / path) for path, _ in published]
                listed = ", ".join(f"'{f}'" for f in files)
                self.con.execute(
                    f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet([{listed}])"
                )
                if table == FIGURES_TABLE:
                    self.con.execute(
                        f"CREATE OR REPLACE VIEW {_LANDED_FIGURES} AS SELECT * EXCLUDE "
                        "(filename, file_row_number), filename AS _landing_file, "
                        "file_row_number AS _landing_row FROM read_parquet("
                        f"[{listed}], filename = true, file_row_number = true)"
                    )
            self._manifest_stamp = stamp
            self._cache.clear()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self.refresh()
            cursor = self.con.execute(sql, params or [])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # --- the API's documents --------------------------------------------------------------

    def circuit_breakers(self) -> dict[str, Any]:
        """The GET /api/circuit-breakers document (CONTRACT.md): every circuit any event
        names, its current state and health, and the outcomes counted on it."""
        with self._lock:
            self.refresh()
            cached = self._cache.get("circuit_breakers")
            if cached is None:
                cached = self._cache["circuit_breakers"] = self._circuit_breakers()
            return cached

    def _circuit_breakers(self) -> dict[str, Any]:
        return {"timestamp": self.now(), **figures_document(self.figures())}

    # --- what the core published: circuit_figures -----------------------------------------

    def figures(self, at: int | None = None) -> list[dict[str, Any]]:
        """The newest `circuit_figures` row of each circuit (the core's figures as of its
        last TICK), or the newest with `ts <= at`; by kind (worker, hardware_class,
        task_type), then id. The current ones are kept until the read models change, as
        the API document is (the API, workers and capacity all read them)."""
        with self._lock:
            self.refresh()
            cached = self._cache.get("figures") if at is None else None
            if cached is None:
                if at is None and self._has(FIGURES_NOW_TABLE):
                    rows = self._rows(f"SELECT * FROM {FIGURES_NOW_TABLE}")  # kept by the writer
                else:
                    sql = newest_figures_sql(self._landed_figures(), _LANDING, at)
                    rows = self._rows(
                        f"SELECT * EXCLUDE (_landing_file, _landing_row) FROM ({sql})"
                    )
                cached = in_view_order(rows)
                if at is None:
                    self._cache["figures"] = cached
            return [dict(row) for row in cached]

    def circuit_figures(self, kind: str, circuit_id: str) -> dict[str, Any] | None:
        """One circuit's newest `circuit_figures` row, or None."""
        landed = self._landed_figures()
        rows = self._rows(
            f"SELECT * EXCLUDE (_landing_file, _landing_row) FROM {landed} "
            "WHERE circuit_kind = ? AND circuit_id = ? "
            "ORDER BY ts DESC, _landing_file DESC, _landing_row DESC LIMIT 1",
            [kind, circuit_id],
        )
        return rows[0] if rows else None

    def circuits_at(self, at: int) -> dict[str, Any]:
        """The GET /api/circuit-breakers document as of `at`: the figures the core had
        published by then (its decision time)."""
        return {"timestamp": at, **figures_document(self.figures(at))}

    def workers(self, at: int | None = None) -> dict[str, dict[str, Any]]:
        """Each known worker as the core's `workers_view` gives it, now or as of `at`: its
        hardware class, live or lost, circuit state and health, and whether it is
        available, from its worker circuit's newest figures; `last_seen` is its newest
        input's decision time (an event in the history), `silent_s` the time since."""
        now = self.now() if at is None else at
        where, params = "", []
        if at is not None:
            where, params = f"WHERE {_RECEIVED_AT} <= ?", [at]
        seen = self._rows(
            f"SELECT worker_id, max({_RECEIVED_AT}) AS last_seen FROM events {where} "
            "GROUP BY worker_id",
            params,
        )
        last_seen = {row["worker_id"]: row["last_seen"] for row in seen}
        view = {}
        for row in self.figures(at):
            if row["circuit_kind"] != "worker" or row["hardware_class"] is None:
                continue  # a worker circuit of no known worker (an operator's) has no worker
            worker_id = row["circuit_id"]
            seen_at = last_seen.get(worker_id, row["ts"])
            view[worker_id] = {
                "hardware_class": row["hardware_class"],
                "status": "live" if row["live"] else "lost",
                "last_seen": seen_at,
                "silent_s": (now - seen_at) / 1000,
                "state": row["state"],
                "health_percentage": row["health"],
                "available": bool(row["available"]),
            }
        return view

    def capacity(self, at: int | None = None) -> dict[str, dict[str, Any]]:
        """Per hardware class, as the core's `capacity_view` gives it (now or as of `at`):
        its circuit's state, its known workers, the live ones and the available ones."""
        return {
            row["circuit_id"]: {
                "state": row["state"],
                "workers": row["workers"] or 0,
                "live": row["live_workers"] or 0,
                "available": row["available_workers"] or 0,
            }
            for row in self.figures(at)
            if row["circuit_kind"] == "hardware_class"
        }

    def _has(self, table: str) -> bool:
        """Whether the history has `table` (a view over read models counts)."""
        (found,) = self._rows(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?", [table]
        )
        return bool(found["n"])

    def _landed_figures(self) -> str:
        """`circuit_figures` with its landing-order columns (`_LANDING`)."""
        if self.read_models_dir is not None:
            return _LANDED_FIGURES
        (found,) = self._rows(
            "SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = ?", [FIGURES_TABLE]
        )
        if not found["n"]:
            raise HistoryError(
                "this history has no circuit_figures table (recorded before the core "
                "published its figures): replay its inputs into a new history file"
            )
        return f"(SELECT *, '' AS _landing_file, rowid AS _landing_row FROM {FIGURES_TABLE})"

    def now(self) -> int:
        """Decision time of the history: the largest `received_at` of any input (its `ts`
        where it has none; 0 when empty). A worker's own clock never moves it."""
        (row,) = self._rows(
            f"SELECT greatest((SELECT coalesce(max({_RECEIVED_AT}), 0) FROM events), "
            f"(SELECT coalesce(max({_RECEIVED_AT}), 0) FROM control)) AS now"
        )
        return int(row["now"])

    def checkpoint(self, task_id: str) -> dict[str, Any] | None:
        """The task's newest checkpoint (`checkpoint_state` as bytes), or None."""
        rows = self._rows("SELECT * FROM checkpoints WHERE task_id = ?", [task_id])
        return rows[0] if rows else None

    # --- dashboard-sized queries ----------------------------------------------------------

    def current_states(self) -> list[dict[str, Any]]:
        """One row per circuit that ever changed state: its newest transition."""
        return self._rows("SELECT * FROM circuit_states ORDER BY circuit_kind, circuit_id")

    def transitions(self, since: int | None = None, until: int | None = None) -> list[dict]:
        """Circuit transitions with `since <= ts < until`, in time order."""
        where, params = _time_range(since, until)
        return self._rows(
            f"SELECT * FROM circuit_transitions {where} ORDER BY ts, event_id", params
        )

    def failure_rates(
        self,
        bucket: str = "1h",
        *,
        since: int | None = None,
        until: int | None = None,
        by: str | None = None,
    ) -> list[dict[str, Any]]:
        """Successes, failures and failure rate per time bucket (optionally per `by`:
        worker_id, hardware_class or task_type)."""
        size = bucket_ms(bucket)
        if by is not None and by not in _CIRCUIT_COLUMNS.values():
            raise HistoryError(f"by: {by!r} is not one of {sorted(_CIRCUIT_COLUMNS.values())}")
        where, params = _time_range(since, until)
        where = f"{where} {'AND' if where else 'WHERE'} kind IN ('SUCCESS', 'FAILURE')"
        group = f", {by}" if by else ""
        return self._rows(
            f"""
            SELECT ts // {size} * {size} AS bucket_start{group},
                   count(*) FILTER (WHERE kind = 'SUCCESS') AS successes,
                   count(*) FILTER (WHERE kind = 'FAILURE') AS failures,
                   failures / count(*) AS failure_rate
            FROM events {where}
            GROUP BY ALL ORDER BY ALL
            """,
            params,
        )

    # --- the recorded inputs, for replay and tune -----------------------------------------

    def input_records(
        self, since: int | None = None, until: int | None = None
    ) -> Iterator[InputRecord]:
        """Worker events and control records in the order the processor saw them (`seq`),
        `since <= received_at < until`."""
        where, params = _time_range(since, until, _RECEIVED_AT)
        with self._lock:
            self.refresh()
            events = self.con.cursor()
            control = self.con.cursor()
        events.execute(f"SELECT * EXCLUDE (seq), seq FROM events {where} ORDER BY seq", params)
        control.execute(f"SELECT * EXCLUDE (seq), seq FROM control {where} ORDER BY seq", params)
        try:
            yield from (
                record
                for _, record in heapq.merge(
                    _stream(events, _worker_event), _stream(control, _control_record),
                    key=lambda pair: pair[0],
                )
            )  # fmt: skip
        finally:
            events.close()
            control.close()


# An input's decision time (models.received_at).
_RECEIVED_AT = "coalesce(received_at, ts)"


def _time_range(since: int | None, until: int | None, column: str = "ts") -> tuple[str, list[Any]]:
    clauses, params = [], []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(until)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _stream(cursor: duckdb.DuckDBPyConnection, build: Any) -> Iterator[tuple[int, Any]]:
    names = [d[0] for d in cursor.description]
    while rows := cursor.fetchmany(_FETCH_ROWS):
        for row in rows:
            fields = dict(zip(names, row, strict=True))
            seq = fields.pop("seq")
            yield seq, build(fields)


def _worker_event(fields: dict[str, Any]) -> WorkerEvent:
    fields["attributes"] = fields["attributes"] or {}
    return WorkerEvent.model_validate({k: v for k, v in fields.items() if v is not None})


def _control_record(fields: dict[str, Any]) -> InputRecord:
    kind = fields["kind"]
    received_at = fields.get("received_at")
    if kind == "TICK":
        return Tick(event_id=fields["event_id"], ts=fields["ts"], received_at=received_at)
    if kind == "OPERATOR":
        names = ("event_id", "ts", "action", "circuit_kind", "circuit_id", "actor", "received_at")
        return Operator.model_validate({k: fields.get(k) for k in names})
    if kind == "CONFIG_CHANGED":
        return ConfigChanged(
            event_id=fields["event_id"],
            ts=fields["ts"],
            config=json.loads(fields["config"]),
            actor=fields["actor"],
            received_at=received_at,
        )
    raise HistoryError(f"control {fields['event_id']}: unknown kind {kind!r}")
