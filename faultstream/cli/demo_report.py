"""The demo's closing report: for each scripted incident, what the DuckDB history says.

When it began, when a circuit opened or a first command answered it, which rule caught it
and how long after it began (`processors/simulator/catches.py`), what was done and how
many of its tasks recovered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from faultstream.dashboard.stamps import utc
from faultstream.processors.simulator import EPOCH_MS, IncidentState
from faultstream.processors.simulator.catches import (
    CLASS_KINDS,
    RULE_MARKS,
    WORKER_KINDS,
    Catch,
    Signal,
    alert_signal,
    circuit_signal,
    command_signals,
    first_catch,
)

if TYPE_CHECKING:  # DuckDB (the [history] extra) is imported where it runs
    import duckdb


@dataclass
class IncidentReport:
    name: str
    kind: str
    began_ms: int | None  # event time
    target: str
    opened: list[tuple[str, int]] = field(default_factory=list)  # (circuit key, ts)
    first_command_ms: int | None = None
    strategies: dict[str, int] = field(default_factory=dict)
    tasks: int = 0
    recovered: int = 0
    escalated: int = 0
    caught: Catch | None = None


def incident_reports(db_path: Path, incidents: list[IncidentState]) -> list[IncidentReport]:
    """What the history in `db_path` says about each scripted incident."""
    import duckdb

    started = [state for state in incidents if state.started_at is not None]
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        signals = history_signals(con, min((s.started_at or 0 for s in started), default=0))
        reports = [_report(con, state, signals) for state in started]
    finally:
        con.close()
    return sorted(reports, key=lambda report: (report.began_ms or 0, report.name))


def history_signals(con: duckdb.DuckDBPyConnection, since: int) -> list[Signal]:
    """Every derived record from `since` on that names a rule: circuit changes, commands
    and (in a history that has them) alerts."""
    marks = " OR ".join("reason LIKE ?" for _ in RULE_MARKS)
    patterns = [f"%{mark}%" for _, mark in RULE_MARKS]
    classes = dict(con.execute("SELECT DISTINCT worker_id, hardware_class FROM events").fetchall())
    signals = [
        circuit_signal(*row)
        for row in con.execute(
            "SELECT ts, circuit_kind, circuit_id, to_state, reason FROM circuit_transitions "
            f"WHERE ts >= ? AND ({marks})",
            [since, *patterns],
        ).fetchall()
    ]
    for ts, worker, task_type, strategy, reason in con.execute(
        f"SELECT ts, worker_id, task_type, strategy, reason FROM commands WHERE ts >= ? AND "
        f"({marks})",
        [since, *patterns],
    ).fetchall():
        signals += command_signals(ts, worker, classes.get(worker), task_type, strategy, reason)
    has_alerts = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'alerts'"
    ).fetchone()[0]
    if has_alerts:
        signals += [
            alert_signal(*row)
            for row in con.execute(
                "SELECT ts, rule, subject_kind, subject_id, state FROM alerts WHERE ts >= ?",
                [since],
            ).fetchall()
        ]
    return [signal for signal in signals if signal is not None]


def _report(
    con: duckdb.DuckDBPyConnection, state: IncidentState, signals: list[Signal]
) -> IncidentReport:
    spec = state.spec
    circuits = _circuits_of(state)
    target = ", ".join(f"{kind}:{cid}" for kind, cid in circuits) or "-"
    if spec.kind == "first_rung_fails" and spec.task_type:
        target += f" ({spec.task_type})"
    report = IncidentReport(spec.name, spec.kind, state.started_at, target, tasks=len(state.tasks))
    report.caught = first_catch(state, signals)
    for kind, cid in circuits:
        row = con.execute(
            "SELECT min(ts) FROM circuit_transitions WHERE circuit_kind = ? AND circuit_id = ? "
            "AND to_state = 'OPEN' AND ts >= ?",
            [kind, cid, state.started_at],
        ).fetchone()
        if row and row[0] is not None:
            report.opened.append((f"{kind}:{cid}", row[0]))
    if not state.tasks:
        return report
    tasks = sorted(state.tasks)
    rows = con.execute(
        "SELECT strategy, count(*), min(ts) FROM commands "
        "WHERE list_contains(?, task_id) AND ts >= ? GROUP BY strategy "
        "ORDER BY count(*) DESC, strategy",
        [tasks, state.started_at],
    ).fetchall()
    report.strategies = {strategy: count for strategy, count, _ in rows}
    report.first_command_ms = min((first for _, _, first in rows), default=None)
    report.recovered = con.execute(
        "SELECT count(DISTINCT task_id) FROM events WHERE kind = 'SUCCESS' "
        "AND list_contains(?, task_id)",
        [tasks],
    ).fetchone()[0]
    report.escalated = con.execute(
        "SELECT count(DISTINCT task_id) FROM commands WHERE strategy = 'ESCALATION' "
        "AND list_contains(?, task_id)",
        [tasks],
    ).fetchone()[0]
    return report


def _circuits_of(state: IncidentState) -> list[tuple[str, str]]:
    spec = state.spec
    if spec.kind in WORKER_KINDS:
        return [("worker", w) for w in state.workers]
    if spec.kind in CLASS_KINDS:
        return [("hardware_class", spec.hardware_class or "")]
    return [("task_type", spec.task_type or "")]


# The dashboard shows moments as UTC; the report as simulated time since the start, labelled.
REPORT_HEADER = f"Incidents, in the order they began (t+MM:SS = time since {utc(EPOCH_MS)}):"


def _clock(ts: int | None) -> str:
    if ts is None:
        return "t+--:--"
    seconds = (ts - EPOCH_MS) // 1000
    return f"t+{seconds // 60:02d}:{seconds % 60:02d}"


def _span(ms: int) -> str:
    seconds = ms // 1000
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def format_catch(catch: Catch | None, answered: bool = False) -> str:
    if catch is None:
        # Commands without a rule in their reason: each failure got its ladder's rung.
        return "    caught by: not caught" + (" (each failure got its ladder)" if answered else "")
    return (
        f"    caught by: {catch.rule} at {_clock(catch.ts)}, {_span(catch.delay_ms)} after "
        f"it began ({catch.what})"
    )


def format_report(report: IncidentReport) -> str:
    lines = [
        f"* {report.name} ({report.kind}) began at {_clock(report.began_ms)} on {report.target}"
    ]
    if report.opened:
        opened = ", ".join(f"{key} OPEN at {_clock(ts)}" for key, ts in report.opened)
        lines.append(f"    detected: circuit {opened}")
    elif report.first_command_ms is not None:
        lines.append(f"    detected: first recovery command at {_clock(report.first_command_ms)}")
    else:
        lines.append("    detected: not yet")
    lines.append(format_catch(report.caught, report.first_command_ms is not None))
    if report.strategies:
        done = ", ".join(f"{s} x{n}" for s, n in report.strategies.items())
        lines.append(f"    done: {done}")
    lines.append(
        f"    tasks hit: {report.tasks}, recovered: {report.recovered}, "
        f"escalated: {report.escalated}"
    )
    return "\n".join(lines)
