"""`faultstream report`: build health from a history the pytest plugin recorded.

The histories are written with the embedded pipeline (the core decides, the HistoryWriter
stores) from events shaped as the plugin's agent makes them: attempts of tests carrying
`pytest.run` / `pytest.test`, quarantines and session marks as HEARTBEATs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from faultstream.cli import main
from faultstream.events.build import build_worker_event
from faultstream.events.config import CoreSettings
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.tables import HistoryWriter

SETTINGS = CoreSettings.model_validate({"circuits": {"task_type": {"failure_threshold": 2}}})
T0 = 1_764_355_200_000  # 2025-11-28T18:40:00Z


class Recorder:
    """Writes test sessions into a DuckDB history as the plugin's agent does."""

    def __init__(self, db: Path) -> None:
        self.pipeline = EmbeddedPipeline(SETTINGS, writer=HistoryWriter(db))
        self.ts = T0
        self.n = 0

    def _event(self, kind: str, run: str, **fields: Any) -> None:
        self.n += 1
        self.ts += 1_000
        attributes = {"pytest.run": run, **fields.pop("attributes", {})}
        event = {
            "event_id": f"e{self.n}",
            "kind": kind,
            "ts": self.ts,
            "worker_id": "ci-1",
            "hardware_class": "cpu",
            "attributes": attributes,
            **fields,
        }
        self.pipeline.ingest(build_worker_event(event))

    def attempt(self, run: str, test: str, attempt: int, failure: str | None = None) -> None:
        task = {
            "task_id": f"{run}:{test}",
            "task_type": test,
            "attempt": attempt,
            "attributes": {"pytest.test": test},
        }
        self._event("TASK_STARTED", run, **task)
        if failure is None:
            self._event("SUCCESS", run, **task)
        else:
            self._event("FAILURE", run, failure_type="SOFTWARE_ERROR", message=failure, **task)

    def quarantined(self, run: str, test: str) -> None:
        why = "faultstream quarantine: task_type circuit is OPEN since 2025-11-28T18:40:00Z"
        self._event("HEARTBEAT", run, attributes={"pytest.test": test, "pytest.quarantined": why})

    def session(self, run: str, phase: str, exitstatus: int | None = None) -> None:
        attributes = {"pytest.session": phase}
        if exitstatus is not None:
            attributes["pytest.exitstatus"] = str(exitstatus)
        self._event("HEARTBEAT", run, attributes=attributes)

    def close(self) -> None:
        self.pipeline.close()


def three_runs(db: Path) -> None:
    """run-1: all pass; run-2: flaky fails then passes, broken fails twice (its circuit
    opens); run-3: broken quarantined, a new test fails."""
    r = Recorder(db)
    r.session("run-1", "start")
    for test in ("t.py::stable", "t.py::flaky", "t.py::broken"):
        r.attempt("run-1", test, 0)
    r.session("run-1", "finish", 0)
    r.session("run-2", "start")
    r.attempt("run-2", "t.py::stable", 0)
    r.attempt("run-2", "t.py::flaky", 0, failure="AssertionError: odd run")
    r.attempt("run-2", "t.py::flaky", 1)
    r.attempt("run-2", "t.py::broken", 0, failure="RuntimeError: always broken")
    r.attempt("run-2", "t.py::broken", 1, failure="RuntimeError: always broken")
    r.session("run-2", "finish", 1)
    r.session("run-3", "start")
    r.attempt("run-3", "t.py::stable", 0)
    r.attempt("run-3", "t.py::flaky", 0)
    r.quarantined("run-3", "t.py::broken")
    r.attempt("run-3", "t.py::new|odd`id", 0, failure="ValueError: bad\nsecond line")
    r.session("run-3", "finish", 1)
    r.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "history.duckdb"
    three_runs(path)
    return path


def report_json(db: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert main(["report", "--db", str(db), "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_newest_run_by_default_against_the_one_before(db: Path, capsys) -> None:
    report = report_json(db, capsys)
    assert report["runs"] == ["run-3"]
    assert (report["tests"], report["failed"], report["flaky"], report["quarantined"]) == (
        3,
        1,
        0,
        1,
    )
    assert [t["test"] for t in report["failed_tests"]] == ["t.py::new|odd`id"]
    assert report["failed_tests"][0]["message"] == "ValueError: bad"
    assert report["quarantined_tests"][0]["test"] == "t.py::broken"
    assert report["quarantined_tests"][0]["reason"].startswith("faultstream quarantine:")
    previous = report["previous"]
    assert previous["run"] == "run-2"
    assert (previous["failed"], previous["flaky"], previous["retried"]) == (1, 1, 2)
    assert [run["run"] for run in report["trend"]] == ["run-1", "run-2", "run-3"]
    assert [run["exitstatus"] for run in report["trend"]] == [0, 1, 1]


def test_open_circuits_and_which_are_new(db: Path, capsys) -> None:
    # broken's circuit opened during run-2 (threshold 2): open, new since run-2, not run-3.
    since_run_2 = report_json(db, capsys, "--since", "run-2")
    assert since_run_2["runs"] == ["run-2", "run-3"]
    (circuit,) = since_run_2["open_circuits"]
    assert (circuit["kind"], circuit["id"], circuit["state"]) == (
        "task_type",
        "t.py::broken",
        "OPEN",
    )
    assert circuit["new"] and since_run_2["new_open_circuits"] == 1
    newest = report_json(db, capsys)
    assert newest["new_open_circuits"] == 0 and len(newest["open_circuits"]) == 1


def test_since_a_moment_and_failure_types(db: Path, capsys) -> None:
    report = report_json(db, capsys, "--since", "2025-11-28T18:40:00Z")
    assert report["runs"] == ["run-1", "run-2", "run-3"]
    assert (report["tests"], report["failed"], report["flaky"]) == (9, 2, 1)
    assert report["top_failure_types"] == [{"failure_type": "SOFTWARE_ERROR", "failures": 4}]
    assert report["alerts"] == {"available": True, "firing": 0}  # an alerts table, none


def test_markdown_for_a_step_summary(db: Path, capsys) -> None:
    assert main(["report", "--db", str(db), "--since", "run-2"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("## faultstream: build health, 2 runs\n")
    assert "| failed | 2 |" in markdown
    assert "### Flaky (1)" in markdown and "| `t.py::flaky` | 2 | SOFTWARE_ERROR" in markdown
    assert "### Quarantined (1)" in markdown
    # A node id with | and a backtick stays one cell of one row.
    assert "| ``t.py::new\\|odd`id`` | 1 | SOFTWARE_ERROR `ValueError: bad` |" in markdown
    assert "| task_type `t.py::broken` (new) | OPEN |" in markdown
    assert "| firing alerts | 0 | | |" in markdown
    assert "### Trend (last 3 runs)" in markdown


def test_one_run_shows_the_change_against_the_previous(db: Path, capsys) -> None:
    assert main(["report", "--db", str(db)]) == 0
    markdown = capsys.readouterr().out
    assert "## faultstream: build health, run `run-3`" in markdown
    assert "| flaky | 0 | 1 | -1 |" in markdown and "| quarantined | 1 | 0 | +1 |" in markdown


@pytest.mark.parametrize(
    ("fail_on", "code", "said"),
    [
        ("failures", 1, "1 failed test"),
        ("new-open-circuits", 0, None),
        ("open-circuits,quarantined", 1, "1 open circuit, 1 quarantined test"),
        ("flaky", 0, None),
    ],
)
def test_fail_on_gates_ci(db: Path, capsys, fail_on: str, code: int, said: str | None) -> None:
    assert main(["report", "--db", str(db), "--fail-on", fail_on]) == code
    err = capsys.readouterr().err
    assert (f"faultstream report: failing on {said}\n" if said else "") == err


def test_fail_on_new_open_circuits_since_the_run_that_opened_one(db: Path, capsys) -> None:
    assert (
        main(["report", "--db", str(db), "--since", "run-2", "--fail-on", "new-open-circuits"]) == 1
    )
    assert "failing on 1 new open circuit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--since", "yesterday"], "--since 'yesterday': neither a run of this history"),
        (["--fail-on", "fast"], "argument --fail-on: 'fast' is not one of failures"),
    ],
)
def test_bad_input_is_one_line(db: Path, capsys, argv: list[str], said: str) -> None:
    assert main(["report", "--db", str(db), *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1


def test_a_missing_history_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", "--db", str(tmp_path / "nope.duckdb")]) == 2
    err = capsys.readouterr().err
    assert "nope.duckdb: no such DuckDB file" in err and err.count("\n") == 1


def test_a_history_without_tests(tmp_path: Path, capsys) -> None:
    db = tmp_path / "empty.duckdb"
    HistoryWriter(db).close()
    report = report_json(db, capsys)
    assert report["runs"] == [] and report["tests"] == 0 and report["trend"] == []
    assert main(["report", "--db", str(db)]) == 0
    assert "## faultstream: build health, no runs" in capsys.readouterr().out


def test_the_read_models_tell_the_same(db: Path, tmp_path: Path, capsys) -> None:
    import duckdb

    from faultstream.projections.read_models import ReadModelPublisher

    models = tmp_path / "read-models"
    with duckdb.connect(str(db)) as con, ReadModelPublisher(con, models) as publisher:
        publisher.publish()
    from_db = report_json(db, capsys, "--since", "run-1")
    assert (
        main(["report", "--read-models", str(models), "--format", "json", "--since", "run-1"]) == 0
    )
    assert json.loads(capsys.readouterr().out) == from_db


LATER = 4_000_000_000_000  # after every run of the fixture


def test_only_alerts_still_firing_are_counted(db: Path, capsys) -> None:
    con = duckdb.connect(str(db))
    row = "(?, ?, 'escalations', 'task', ?, 'critical', ?, 'm', 'x')"
    for alert_id, ts, task, state in (
        ("a1", LATER, "t1", "FIRING"),
        ("a1", LATER + 1, "t1", "RESOLVED"),  # fired, then resolved: not counted
        ("a2", LATER + 2, "t2", "FIRING"),
    ):
        con.execute(f"INSERT INTO alerts VALUES {row}", [alert_id, ts, task, state])
    con.close()
    assert report_json(db, capsys)["alerts"] == {"available": True, "firing": 1}
