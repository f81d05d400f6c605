"""The fleet figures (CIRCUITS.md's health formulas) computed from the history tables.

`circuit_figures` is the one computation behind `History.circuit_breakers()` (the current
figures) and the projector's `health_snapshots` (the figures as of an event-time boundary):
each circuit's state and health, and `fleet_aggregate` over them.

`HealthSnapshots` keeps the projector's snapshot bookkeeping in the history file itself, so
it commits in the same transaction as the rows it covers: `health_totals` (the outcome totals
of `circuit_totals`, but only over the inputs before the newest snapshot's boundary) and
`health_cursor` (that boundary and the first input `seq` past it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from faultstream.events.config import AttributionSettings
from faultstream.events.health import circuit_health, fleet_aggregate

from .outcomes import counted_sql, register_attribution, update_circuit_totals
from .schema import CIRCUIT_TOTALS, HEALTH_SNAPSHOTS

SECTIONS = {"worker": "workers", "hardware_class": "hardware_classes", "task_type": "task_types"}
CaughtUp = Callable[[int, bool], bool]
_INPUTS = "(SELECT ts, seq FROM events UNION ALL SELECT ts, seq FROM control)"


def circuit_figures(
    con: duckdb.DuckDBPyConnection,
    attribution: AttributionSettings,
    *,
    states: str = "circuit_states",
    totals: str = "circuit_totals",
    until_seq: int | None = None,
) -> dict[str, Any]:
    """{"aggregate": ..., "workers": ..., "hardware_classes": ..., "task_types": ...}.

    `states` is a relation with one transition row per circuit (its state as of the moment
    wanted), `totals` one with the circuit_totals columns over the same inputs, and only
    outcomes with `seq < until_seq` count (None: all of them).
    """
    # Totals come from `totals` (kept per batch); only the outcomes since a circuit's last
    # change are read, for the few circuits whose health depends on them: consecutive
    # failures (CLOSED after a change that is newer than its last success) and probe
    # successes (HALF_OPEN). The change sits at the seq of the input that caused it; a
    # change's cause is never older than the change itself.
    cursor = con.execute(
        f"""
        WITH states AS (SELECT * FROM {states}),
        changes AS (
            SELECT s.circuit_kind AS ck, s.circuit_id AS cid, s.to_state, s.health,
                   coalesce(i.seq, -1) AS change_seq
            FROM states s LEFT JOIN (
                SELECT event_id, seq FROM events
                WHERE ts >= (SELECT min(ts) FROM states)
                  AND event_id IN (SELECT caused_by FROM states)
                UNION ALL SELECT event_id, seq FROM control) i
              ON i.event_id = s.caused_by),
        circuits AS (
            SELECT circuit_kind AS ck, circuit_id AS cid FROM {totals}
            UNION SELECT ck, cid FROM changes)
        SELECT k.ck AS circuit_kind, k.cid AS circuit_id,
               coalesce(g.to_state, 'CLOSED') AS state, g.health,
               coalesce(g.change_seq, -1) AS change_seq,
               coalesce(t.total_successes, 0) AS total_successes,
               coalesce(t.total_failures, 0) AS total_failures,
               coalesce(t.last_success_seq, -1) AS last_success_seq,
               coalesce(t.failures_since_success, 0) AS failures_since_success
        FROM circuits k LEFT JOIN changes g USING (ck, cid)
        LEFT JOIN {totals} t ON t.circuit_kind = k.ck AND t.circuit_id = k.cid
        ORDER BY 1, 2
        """
    )
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    since_change = _outcomes_since_change(con, attribution, rows, until_seq)
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS.values()}
    pairs = []
    for row in rows:
        state = row["state"]
        key = (row["circuit_kind"], row["circuit_id"])
        if state == "CLOSED":
            failures = row["failures_since_success"]
            if key in since_change:
                failures = since_change[key][1]
            health = circuit_health(state, failures)
        elif state == "HALF_OPEN":
            probes = since_change.get(key, (0, 0))[0]
            health = circuit_health(state, half_open_successes=probes)
        else:  # OPEN and FORCED_OPEN health only changes with a transition
            health = row["health"]
        pairs.append((state, health))
        sections[SECTIONS[row["circuit_kind"]]][row["circuit_id"]] = {
            "state": state,
            "health_percentage": health,
            "total_successes": row["total_successes"],
            "total_failures": row["total_failures"],
        }
    return {"aggregate": dict(fleet_aggregate(pairs)), **sections}


def _outcomes_since_change(
    con: duckdb.DuckDBPyConnection,
    attribution: AttributionSettings,
    circuits: list[dict[str, Any]],
    until_seq: int | None,
) -> dict[tuple[str, str], tuple[int, int]]:
    """(successes at or after, failures after) each needing circuit's last change."""
    needs = [
        c
        for c in circuits
        if c["state"] == "HALF_OPEN"
        or (c["state"] == "CLOSED" and c["change_seq"] > c["last_success_seq"])
    ]
    if not needs:
        return {}
    low = min(c["change_seq"] for c in needs)
    until = "" if until_seq is None else f" AND seq < {int(until_seq)}"
    source = f"(SELECT * FROM events WHERE seq >= {int(low)}{until})"
    con.register(
        "needs",
        pa.table(
            {
                "ck": [c["circuit_kind"] for c in needs],
                "cid": [c["circuit_id"] for c in needs],
                "cs": pa.array([c["change_seq"] for c in needs], pa.int64()),
            }
        ),
    )
    try:
        register_attribution(con, source, attribution)
        rows = con.execute(
            f"""
            SELECT ck, cid, count(*) FILTER (WHERE ok AND seq >= cs),
                   count(*) FILTER (WHERE NOT ok AND seq > cs)
            FROM ({counted_sql(source)}) JOIN needs USING (ck, cid) GROUP BY ALL
            """
        ).fetchall()
    finally:
        for name in ("needs", "failure_circuits", "classified_messages"):
            with contextlib.suppress(duckdb.Error):  # not registered if it failed first
                con.unregister(name)
    # A needing CLOSED circuit with no outcome since its change has 0 consecutive failures.
    figures = {(c["circuit_kind"], c["circuit_id"]): (0, 0) for c in needs}
    figures.update({(ck, cid): (probes, failures) for ck, cid, probes, failures in rows})
    return figures


def snapshot_row(ts: int, figures: dict[str, Any]) -> dict[str, Any]:
    """A `health_snapshots` row from `circuit_figures` (or a core's `circuits_view()`)."""

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
    `interval_ms`), with the figures as of the boundary: circuits in the state of their
    newest transition with `ts <= boundary`, outcomes of the inputs (in `seq` order) before
    the first one with `ts > boundary`. An input landing after that one with an older `ts`
    counts from the next boundary on.

    `record(con, caught_up)` runs inside the projector's batch transaction.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, interval_ms: int, attribution: AttributionSettings
    ) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms: {interval_ms} is not a positive interval")
        self.interval_ms = interval_ms
        self.attribution = attribution
        self._first: tuple[int, int] | None = None
        body = ", ".join(f"{col} {sql}" for col, (sql, _) in CIRCUIT_TOTALS.items())
        con.execute(
            f"CREATE TABLE IF NOT EXISTS health_totals ({body}, "
            "PRIMARY KEY (circuit_kind, circuit_id))"
        )
        con.execute("CREATE TABLE IF NOT EXISTS health_cursor (boundary BIGINT, cut_seq BIGINT)")

    def next_boundary(self, con: duckdb.DuckDBPyConnection) -> tuple[int, int] | None:
        """(the next boundary to snapshot, the first input seq not yet in health_totals),
        or None before any input landed."""
        # fetchall: an unfinished result would block the next register() on `con`.
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
        `caught_up(boundary, settled)` says the transitions up to it have landed (`settled`:
        the inputs have passed the boundary by a whole interval too); returns the boundaries
        written."""
        written: list[int] = []
        figures: dict[str, Any] | None = None
        while (step := self.next_boundary(con)) is not None:
            boundary, from_seq = step
            cut = self.passed(con, boundary, from_seq)
            if cut is None:
                break
            settled = self.passed(con, boundary + self.interval_ms, cut) is not None
            if not caught_up(boundary, settled):
                break
            folded = cut > from_seq and self._fold(con, from_seq, cut)
            ((changed,),) = con.execute(
                "SELECT count(*) FROM circuit_transitions WHERE ts > ? AND ts <= ?",
                [boundary - self.interval_ms, boundary],
            ).fetchall()
            if figures is None or folded or changed:  # else the figures stayed the same
                figures = circuit_figures(
                    con,
                    self.attribution,
                    states=_states_as_of(boundary),
                    totals="health_totals",
                    until_seq=cut,
                )
            _insert_snapshot(con, snapshot_row(boundary, figures))
            con.execute("DELETE FROM health_cursor")
            con.execute("INSERT INTO health_cursor VALUES (?, ?)", [boundary, cut])
            written.append(boundary)
        return written

    def _fold(self, con: duckdb.DuckDBPyConnection, from_seq: int, cut: int) -> bool:
        """Add the events with `from_seq <= seq < cut` to health_totals."""
        source = f"(SELECT * FROM events WHERE seq >= {int(from_seq)} AND seq < {int(cut)})"
        ((count,),) = con.execute(f"SELECT count(*) FROM {source}").fetchall()
        if count:
            update_circuit_totals(con, source, self.attribution, table="health_totals")
        return bool(count)


def _states_as_of(boundary: int) -> str:
    # The newest transition of each circuit at or before the boundary; rowid (landing order)
    # breaks ties between changes of one circuit at the same ts.
    return (
        f"(SELECT * FROM circuit_transitions WHERE ts <= {int(boundary)} QUALIFY row_number() "
        "OVER (PARTITION BY circuit_kind, circuit_id ORDER BY ts DESC, rowid DESC) = 1)"
    )


def _insert_snapshot(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> None:
    columns = ", ".join(HEALTH_SNAPSHOTS)
    marks = ", ".join("?" for _ in HEALTH_SNAPSHOTS)
    # Keyed by ts: a boundary is written once even if a restart reaches it again.
    con.execute(
        f"INSERT INTO health_snapshots ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING",
        [row[c] for c in HEALTH_SNAPSHOTS],
    )
