"""The build and fleet health report behind `faultstream report` (docs/ci.md).

Reads a history (the DuckDB file or the read models, through `History`) for what the
pytest plugin recorded — each test's attempts as TASK_STARTED/SUCCESS/FAILURE events and
the quarantined ones as HEARTBEATs, all carrying `pytest.run` and `pytest.test` — and for
the fleet's state: the circuits open now, the alerts, the failure types. A run is the
pytest session named by `pytest.run`; the report covers the runs since a moment or a run
(by default the newest run) and compares them with the runs before.

- **tests**: distinct tests that ran (a quarantined one that was skipped did not run);
- **failed**: tests whose last attempt failed; **flaky**: tests that failed, then passed
  on a retry; **retried**: tests run more than once; **quarantined**: tests the plugin
  skipped or ran as xfail because their circuit was open.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from faultstream.events.exceptions import FaultstreamError

from .alerts import FIRING_SQL
from .queries import History

RUN = "map_extract(attributes, 'pytest.run')[1]"
TEST = "map_extract(attributes, 'pytest.test')[1]"
ATTR = "map_extract(attributes, '{}')[1]"
LIST_LIMIT = 20  # failed, flaky and quarantined tests listed by name
TREND_RUNS = 10
_OPENISH = "('OPEN', 'FORCED_OPEN')"


class ReportError(FaultstreamError):
    """A report that cannot be made as asked (an unknown run, an empty history)."""


def _rows(history: History, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    return history._rows(sql, params)


def _has_table(history: History, name: str) -> bool:
    rows = _rows(
        history,
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?",
        [name],
    )
    return bool(rows[0]["n"])


def runs(history: History) -> list[dict[str, Any]]:
    """Every run of the history, oldest first, with its figures."""
    if not _has_table(history, "events"):
        return []
    sessions = _rows(
        history,
        f"""
        SELECT {RUN} AS run, min(ts) AS started, max(ts) AS ended,
               max({ATTR.format("pytest.exitstatus")}) AS exitstatus
        FROM events WHERE {RUN} IS NOT NULL
        GROUP BY 1 ORDER BY started, run
        """,
    )
    tests = {
        row["run"]: row
        for row in _rows(
            history,
            f"""
        WITH attempts AS (
            SELECT {RUN} AS run, {TEST} AS test, kind, attempt, seq
            FROM events WHERE kind IN ('SUCCESS', 'FAILURE') AND {RUN} IS NOT NULL
        ), tests AS (
            SELECT run, test, arg_max(kind, seq) AS last, max(attempt) AS attempts,
                   count(*) FILTER (WHERE kind = 'FAILURE') AS failures
            FROM attempts GROUP BY run, test
        )
        SELECT run, count(*) AS tests,
               count(*) FILTER (WHERE last = 'FAILURE') AS failed,
               count(*) FILTER (WHERE last = 'SUCCESS' AND failures > 0) AS flaky,
               count(*) FILTER (WHERE attempts > 0) AS retried
        FROM tests GROUP BY run
        """,
        )
    }
    quarantined = {
        row["run"]: row["n"]
        for row in _rows(
            history,
            f"""
        SELECT {RUN} AS run, count(DISTINCT {TEST}) AS n FROM events
        WHERE kind = 'HEARTBEAT' AND {ATTR.format("pytest.quarantined")} IS NOT NULL
        GROUP BY 1
        """,
        )
    }
    out = []
    for row in sessions:
        figures = tests.get(row["run"], {})
        exitstatus = row["exitstatus"]
        out.append(
            {
                "run": row["run"],
                "started": int(row["started"]),
                "duration_s": round((row["ended"] - row["started"]) / 1000, 1),
                "tests": int(figures.get("tests", 0)),
                "failed": int(figures.get("failed", 0)),
                "flaky": int(figures.get("flaky", 0)),
                "retried": int(figures.get("retried", 0)),
                "quarantined": int(quarantined.get(row["run"], 0)),
                "exitstatus": int(exitstatus) if str(exitstatus).isdigit() else exitstatus,
            }
        )
    return out


def _window(all_runs: list[dict[str, Any]], since: str | None) -> tuple[int | None, list[str]]:
    """(the window's start in ms, the runs in it): since a run id, since a moment, or the
    newest run."""
    if since is None:
        if not all_runs:
            return None, []
        newest = all_runs[-1]
        return newest["started"], [newest["run"]]
    by_id = {run["run"]: run for run in all_runs}
    if since in by_id:
        start = by_id[since]["started"]
    else:
        from faultstream.events.times import parse_time

        try:
            start = parse_time(since, "--since")
        except FaultstreamError:
            raise ReportError(
                f"--since {since!r}: neither a run of this history nor a moment "
                "(epoch milliseconds or ISO-8601, e.g. 2025-11-28T18:40:00Z)"
            ) from None
    return start, [run["run"] for run in all_runs if run["started"] >= start]


def build_report(history: History, since: str | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict (the `--format json` document)."""
    all_runs = runs(history)
    start, selected = _window(all_runs, since)
    chosen = [run for run in all_runs if run["run"] in set(selected)]
    report: dict[str, Any] = {
        "since": start,
        "runs": selected,
        **{key: sum(run[key] for run in chosen) for key in _FIGURES},
    }
    report["failed_tests"], report["flaky_tests"], report["quarantined_tests"] = _tests(
        history, selected
    )
    report["open_circuits"] = _open_circuits(history, start)
    report["new_open_circuits"] = sum(1 for c in report["open_circuits"] if c["new"])
    report["alerts"] = _alerts(history, start)
    report["top_failure_types"] = _failure_types(history, start)
    newest = all_runs.index(chosen[-1]) if chosen else len(all_runs)
    report["trend"] = all_runs[max(0, newest + 1 - TREND_RUNS) : newest + 1]
    report["previous"] = all_runs[newest - 1] if chosen and newest > 0 else None
    return report


_FIGURES = ("tests", "failed", "flaky", "retried", "quarantined")


def _tests(
    history: History, selected: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    if not selected:
        return [], [], []
    marks = ", ".join("?" for _ in selected)
    attempts = _rows(
        history,
        f"""
        WITH attempts AS (
            SELECT {RUN} AS run, {TEST} AS test, kind, attempt, failure_type, message, seq
            FROM events WHERE kind IN ('SUCCESS', 'FAILURE') AND {RUN} IN ({marks})
        )
        SELECT run, test, arg_max(kind, seq) AS last, max(attempt) + 1 AS attempts,
               count(*) FILTER (WHERE kind = 'FAILURE') AS failures,
               arg_max(failure_type, seq) FILTER (WHERE kind = 'FAILURE') AS failure_type,
               arg_max(message, seq) FILTER (WHERE kind = 'FAILURE') AS message
        FROM attempts GROUP BY run, test ORDER BY test, run
        """,
        selected,
    )
    failed = [_brief(row) for row in attempts if row["last"] == "FAILURE"]
    flaky = [_brief(row) for row in attempts if row["last"] == "SUCCESS" and row["failures"]]
    quarantined = _rows(
        history,
        f"""
        SELECT {RUN} AS run, {TEST} AS test,
               arg_max({ATTR.format("pytest.quarantined")}, seq) AS reason
        FROM events WHERE kind = 'HEARTBEAT' AND {RUN} IN ({marks})
          AND {ATTR.format("pytest.quarantined")} IS NOT NULL
        GROUP BY 1, 2 ORDER BY test, run
        """,
        selected,
    )
    return failed, flaky, quarantined


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    message = (row["message"] or "").strip().splitlines()
    return {
        "run": row["run"],
        "test": row["test"],
        "attempts": int(row["attempts"]),
        "failure_type": row["failure_type"],
        "message": message[0][:200] if message else None,
    }


def _open_circuits(history: History, start: int | None) -> list[dict[str, Any]]:
    if not _has_table(history, "circuit_states"):
        return []
    rows = _rows(
        history,
        f"""
        SELECT circuit_kind AS kind, circuit_id AS id, to_state AS state, ts AS since, reason
        FROM circuit_states WHERE to_state IN {_OPENISH} ORDER BY ts, kind, id
        """,
    )
    for row in rows:
        row["new"] = start is not None and row["since"] >= start
    return rows


def _alerts(history: History, start: int | None) -> dict[str, Any]:
    """Alerts firing now that fired in the window; `available` is False for a history
    without them."""
    if not _has_table(history, "alerts"):
        return {"available": False, "firing": 0}
    where, params = ("WHERE ts >= ?", [start]) if start is not None else ("", [])
    try:
        rows = _rows(history, f"SELECT count(*) AS n FROM ({FIRING_SQL}) {where}", params)
    except duckdb.Error:  # a table of another layout: say nothing rather than guess
        return {"available": False, "firing": 0}
    return {"available": True, "firing": int(rows[0]["n"])}


def _failure_types(history: History, start: int | None) -> list[dict[str, Any]]:
    where = "WHERE kind = 'FAILURE'" + (" AND ts >= ?" if start is not None else "")
    return _rows(
        history,
        f"""
        SELECT coalesce(failure_type, 'UNCLASSIFIED') AS failure_type, count(*) AS failures
        FROM events {where} GROUP BY 1 ORDER BY failures DESC, failure_type LIMIT 5
        """,
        [start] if start is not None else [],
    )


def failing(report: dict[str, Any], conditions: list[str]) -> list[str]:
    """What of `conditions` (cli/report.py's FAIL_ON) holds, said for a person:
    ["2 failed tests", "1 new open circuit"]."""
    counts = {
        "failures": (report["failed"], "failed test"),
        "flaky": (report["flaky"], "flaky test"),
        "quarantined": (report["quarantined"], "quarantined test"),
        "new-open-circuits": (report["new_open_circuits"], "new open circuit"),
        "open-circuits": (len(report["open_circuits"]), "open circuit"),
        "alerts": (report["alerts"]["firing"], "firing alert"),
    }
    said = []
    for condition in dict.fromkeys(conditions):
        count, noun = counts[condition]
        if count:
            said.append(f"{count} {noun}{'' if count == 1 else 's'}")
    return said


# --- Markdown -----------------------------------------------------------------------------


def _cell(text: Any) -> str:
    """Table-safe: a node id with | or a backtick breaks neither the row nor the code."""
    value = re.sub(r"\s+", " ", str(text if text is not None else "")).strip()
    return value.replace("\\", "\\\\").replace("|", "\\|")


def _code(text: Any) -> str:
    value = _cell(text)
    fence = "``" if "`" in value else "`"
    return f"{fence}{value}{fence}" if value else ""


def _iso(ms: int | None) -> str:
    import time

    return "" if ms is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def _delta(now: int, before: int | None) -> str:
    if before is None:
        return ""
    change = now - before
    return f"{change:+d}" if change else "="


def render_markdown(report: dict[str, Any]) -> str:
    """For $GITHUB_STEP_SUMMARY and a pull request comment."""
    lines: list[str] = []
    selected = report["runs"]
    title = f"run `{selected[-1]}`" if len(selected) == 1 else f"{len(selected)} runs"
    if not selected:
        title = "no runs"
    lines += [f"## faultstream: build health, {title}", ""]
    if report["since"] is not None:
        lines += [f"Since {_iso(report['since'])}.", ""]
    previous = report["previous"] if len(selected) == 1 else None
    lines += ["| | now | previous run | change |", "| --- | ---: | ---: | ---: |"]
    for key in _FIGURES:
        before = previous[key] if previous else None
        shown = "" if before is None else str(before)
        lines.append(f"| {key} | {report[key]} | {shown} | {_delta(report[key], before)} |")
    circuits = report["open_circuits"]
    lines.append(f"| open circuits | {len(circuits)} ({report['new_open_circuits']} new) | | |")
    alerts = report["alerts"]
    shown = str(alerts["firing"]) if alerts["available"] else "0 (no alerts in this history)"
    lines += [f"| firing alerts | {shown} | | |", ""]
    for heading, key in (("Failed", "failed_tests"), ("Flaky", "flaky_tests")):
        tests = report[key]
        if not tests:
            continue
        lines += [
            f"### {heading} ({len(tests)})",
            "",
            "| test | attempts | failure |",
            "| --- | ---: | --- |",
        ]
        for test in tests[:LIST_LIMIT]:
            failure = " ".join(filter(None, [test["failure_type"], _code(test["message"])]))
            lines.append(f"| {_code(test['test'])} | {test['attempts']} | {failure} |")
        lines += _more(len(tests))
    quarantined = report["quarantined_tests"]
    if quarantined:
        lines += [f"### Quarantined ({len(quarantined)})", "", "| test | why |", "| --- | --- |"]
        for test in quarantined[:LIST_LIMIT]:
            lines.append(f"| {_code(test['test'])} | {_cell(test['reason'])} |")
        lines += _more(len(quarantined))
    if circuits:
        lines += [
            f"### Open circuits ({len(circuits)})",
            "",
            "| circuit | state | since | reason |",
            "| --- | --- | --- | --- |",
        ]
        for c in circuits[:LIST_LIMIT]:
            new = " (new)" if c["new"] else ""
            lines.append(
                f"| {c['kind']} {_code(c['id'])}{new} | {c['state']} | {_iso(c['since'])} "
                f"| {_cell(c['reason'])} |"
            )
        lines += _more(len(circuits))
    if report["top_failure_types"]:
        lines += ["### Top failure types", "", "| failure type | failures |", "| --- | ---: |"]
        for row in report["top_failure_types"]:
            lines.append(f"| {row['failure_type']} | {row['failures']} |")
        lines.append("")
    trend = report["trend"]
    if trend:
        lines += [
            f"### Trend (last {len(trend)} runs)",
            "",
            "| run | started | tests | failed | flaky | quarantined | exit |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for run in trend:
            lines.append(
                f"| `{run['run']}` | {_iso(run['started'])} | {run['tests']} | {run['failed']} "
                f"| {run['flaky']} | {run['quarantined']} | {_cell(run['exitstatus'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def _more(count: int) -> list[str]:
    extra = count - LIST_LIMIT
    return ([f"… and {extra} more (`--format json` lists them all)", ""]) if extra > 0 else [""]
