"""The fleet figures the read side shows, from what the core published: `circuit_figures`.

The core publishes a `circuit_figures` record at each TICK for every circuit whose figures
changed since the last one (events/models.py `CircuitFigures`), so the figures of the fleet
at any moment are the newest record of each circuit at or before that moment. Nothing here
counts, attributes or decides anything: the figures are the core's, and only
`fleet_aggregate` (the same function as the core's view) runs over them.

`figures_document` turns those newest records into the GET /api/circuit-breakers shape, for
`History.circuit_breakers()`, the projector's `health_snapshots` (`HealthSnapshots`, the
figures as of each event-time boundary) and the dashboard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import duckdb

from faultstream.events.health import fleet_aggregate

from .schema import HEALTH_SNAPSHOTS

SECTIONS = {"worker": "workers", "hardware_class": "hardware_classes", "task_type": "task_types"}
# circuits_view's order: by kind (worker, hardware_class, task_type), then by id.
_KIND_RANK = {kind: rank for rank, kind in enumerate(SECTIONS)}
FIGURES_TABLE = "circuit_figures"
CaughtUp = Callable[[int, bool], bool]
_INPUTS = "(SELECT ts, seq FROM events UNION ALL SELECT ts, seq FROM control)"


def newest_figures_sql(relation: str, landing: tuple[str, ...], at: int | None = None) -> str:
    """The newest row of each circuit in `relation` (rows of `circuit_figures`), with
    `ts <= at` when `at` is given; the `landing` columns order the rows of one circuit that
    share a `ts` (their landing order: a later row is newer)."""
    where = "" if at is None else f"WHERE ts <= {int(at)}"
    later_first = ", ".join(f"{column} DESC" for column in landing)
    # Each circuit's newest ts first (a hash aggregate), then only its rows at that ts are
    # ordered: a window over the whole table sorts every row (70 times slower on 5M rows).
    return (
        f"SELECT f.* FROM {relation} f JOIN (SELECT circuit_kind, circuit_id, max(ts) AS ts "
        f"FROM {relation} {where} GROUP BY ALL) newest USING (circuit_kind, circuit_id, ts) "
        "QUALIFY row_number() OVER "
        f"(PARTITION BY circuit_kind, circuit_id ORDER BY {later_first}) = 1"
    )


def in_view_order(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Figures rows in circuits_view's order: by kind, then by id."""
    return sorted(rows, key=lambda r: (_KIND_RANK[str(r["circuit_kind"])], r["circuit_id"]))


def figures_document(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """{"aggregate", "workers", "hardware_classes", "task_types"} (the GET
    /api/circuit-breakers shape without its timestamp) from the newest figures of each
    circuit: `circuit_figures` rows, or the fields of `CircuitFigures` records."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS.values()}
    pairs = []
    for row in in_view_order(rows):
        state, health = str(row["state"]), row["health"]
        pairs.append((state, health))
        sections[SECTIONS[str(row["circuit_kind"])]][row["circuit_id"]] = {
            "state": state,
            "health_percentage": health,
            "total_successes": row["total_successes"],
            "total_failures": row["total_failures"],
        }
    return {"aggregate": dict(fleet_aggregate(pairs)), **sections}


def snapshot_row(ts: int, figures: dict[str, Any]) -> dict[str, Any]:
    """A `health_snapshots` row from `figures_document` (or a core's `circuits_view()`)."""

    def open_in(section: str) -> int:
        circuits = figures.get(section) or {}
        return sum(1 for c in circuits.values() if c["state"] in ("OPEN", "FORCED_OPEN"))

    aggregate = figures["aggregate"]
    return {
        "ts": ts,
        **{k: aggregate[k] for k in HEALTH_SNAPSHOTS if k in aggregate},
        "open_workers": open_in("workers"),
        "open_hardware_classes": open_in("hardware_classes"),
        "open_task_types": open_in("task_types"),
    }


class HealthSnapshots:
    """Writes one `health_snapshots` row per event-time boundary (multiples of
    `interval_ms`), with the figures as of the boundary: the newest `circuit_figures` row
    of each circuit with `ts <= boundary` (ties of one circuit: the one landed last),
    aggregated by `fleet_aggregate`.

    A boundary is written once the landed inputs have passed it and `caught_up` says the
    records up to it have landed. `health_cursor` (the last boundary written and the first
    input `seq` past it) lives in the history file, so it commits with the rows it covers.
    The newest figures as of the last boundary are kept in memory and brought forward with
    only the rows that can have changed them (those dated after it, and those landed since);
    a cursor that no longer matches them (a rolled-back batch, another start) means they are
    read afresh. `record(con, caught_up)` runs inside the projector's batch transaction.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, interval_ms: int) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms: {interval_ms} is not a positive interval")
        self.interval_ms = interval_ms
        self._first: tuple[int, int] | None = None
        # (circuit_kind, circuit_id) -> its newest row as of the boundary `_as_of`, among the
        # rows with rowid < `_landed`; None: not read yet.
        self._newest: dict[tuple[str, str], dict[str, Any]] | None = None
        self._as_of: int | None = None
        self._landed = 0
        con.execute("CREATE TABLE IF NOT EXISTS health_cursor (boundary BIGINT, cut_seq BIGINT)")
        # The outcome totals older versions kept beside the cursor: no longer read.
        con.execute("DROP TABLE IF EXISTS health_totals")

    def next_boundary(self, con: duckdb.DuckDBPyConnection) -> tuple[int, int] | None:
        """(the next boundary to snapshot, the first input seq past the previous one), or
        None before any input landed."""
        rows = con.execute("SELECT boundary, cut_seq FROM health_cursor").fetchall()
        if rows:
            row = rows[0]
            return row[0] + self.interval_ms, row[1]
        if self._first is None:  # the first input never changes once landed: ask once
            firsts = con.execute(f"SELECT ts, seq FROM {_INPUTS} ORDER BY seq LIMIT 1").fetchall()
            if not firsts:
                return None
            interval = self.interval_ms
            # The first boundary is the first multiple of the interval at or after it.
            self._first = (-(-firsts[0][0] // interval) * interval, firsts[0][1])
        return self._first

    def passed(self, con: duckdb.DuckDBPyConnection, boundary: int, from_seq: int) -> int | None:
        """The seq of the first landed input past `boundary` (None: not passed yet)."""
        ((cut,),) = con.execute(
            f"SELECT min(seq) FROM {_INPUTS} WHERE seq >= ? AND ts > ?", [from_seq, boundary]
        ).fetchall()
        return cut

    def record(self, con: duckdb.DuckDBPyConnection, caught_up: CaughtUp) -> list[int]:
        """Snapshot, in order, every boundary the landed inputs have passed for which
        `caught_up(boundary, settled)` says the records up to it have landed (`settled`:
        the inputs have passed the boundary by a whole interval too); returns the boundaries
        written."""
        written: list[int] = []
        while (step := self.next_boundary(con)) is not None:
            boundary, from_seq = step
            cut = self.passed(con, boundary, from_seq)
            if cut is None:
                break
            settled = self.passed(con, boundary + self.interval_ms, cut) is not None
            if not caught_up(boundary, settled):
                break
            rows = self.figures_as_of(con, boundary)
            _insert_snapshot(con, snapshot_row(boundary, figures_document(rows)))
            con.execute("DELETE FROM health_cursor")
            con.execute("INSERT INTO health_cursor VALUES (?, ?)", [boundary, cut])
            written.append(boundary)
        return written

    def figures_as_of(self, con: duckdb.DuckDBPyConnection, boundary: int) -> list[dict[str, Any]]:
        """The newest figures row of each circuit with `ts <= boundary`."""
        previous = self._cursor_boundary(con)
        # Rows of the open transaction have provisional rowids until it commits; the table
        # is only appended to, so afterwards the rows seen now are exactly rowid < count.
        ((landed,),) = con.execute(f"SELECT count(*) FROM {FIGURES_TABLE}").fetchall()
        rows = f"SELECT *, rowid AS _landing FROM {FIGURES_TABLE}"
        if self._newest is None or previous is None or self._as_of != previous:
            newest: dict[tuple[str, str], dict[str, Any]] = {}
            relation = f"({rows})"
        else:
            # What can have changed them: rows dated after the last boundary, and rows
            # landed since (one dated at or before it that landed late). Two scans that
            # each skip most row groups (ts and rowid ranges), where an OR would read all.
            newest = self._newest
            relation = (
                f"({rows} WHERE ts > {int(previous)} UNION ALL {rows} "
                f"WHERE rowid >= {int(self._landed)} AND ts <= {int(previous)})"
            )
        cursor = con.execute(newest_figures_sql(relation, ("_landing",), boundary))
        names = [d[0] for d in cursor.description]
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            del row["_landing"]
            key = (row["circuit_kind"], row["circuit_id"])
            kept = newest.get(key)
            # A kept row is dated at or before the last boundary and landed before these
            # rows: a row of the same ts is newer.
            if kept is None or row["ts"] >= kept["ts"]:
                newest[key] = row
        self._newest, self._as_of, self._landed = newest, boundary, landed
        return list(newest.values())

    @staticmethod
    def _cursor_boundary(con: duckdb.DuckDBPyConnection) -> int | None:
        rows = con.execute("SELECT boundary FROM health_cursor").fetchall()
        return rows[0][0] if rows else None


def _insert_snapshot(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> None:
    columns = ", ".join(HEALTH_SNAPSHOTS)
    marks = ", ".join("?" for _ in HEALTH_SNAPSHOTS)
    # Keyed by ts: a boundary is written once even if a restart reaches it again.
    con.execute(
        f"INSERT INTO health_snapshots ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING",
        [row[c] for c in HEALTH_SNAPSHOTS],
    )
