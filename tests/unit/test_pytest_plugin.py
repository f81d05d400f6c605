"""The pytest plugin, on a sample project run again and again (pytester).

The sample has a stable test, a flaky one (fails every other run: a counter file) and a
broken one (always fails). Over repeated runs, in one process and under pytest-xdist: the
flaky test is retried as the core's recovery command says and reported flaky, the broken
one is quarantined once its task_type circuit opens, the stable one is left alone — and
`faultstream report` tells it from the history the plugin recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pytest

# Imported here, before pytester snapshots sys.modules for a test: it drops what a test
# imported, and DuckDB's extension module cannot be imported a second time in a process.
import faultstream.projections.ci_report
from faultstream.cli import main as faultstream
from faultstream.cli.report import _wait_for_writer

pytest_plugins = ["pytester"]

SAMPLE = """
from pathlib import Path


def test_stable():
    assert 1 + 1 == 2


def test_flaky():
    counter = Path(__file__).with_name("flaky.count")
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    assert n % 2 == 1, f"fails every other run ({n})"


def test_broken():
    raise RuntimeError("always broken")
"""
FAST = ["--faultstream", "--faultstream-max-delay", "0", "-p", "no:randomly", "-rs"]
HISTORY = Path(".pytest_cache") / "d" / "faultstream" / "history.duckdb"


@pytest.fixture
def sample(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The sample's settings are its own: none of the environment's (a CI's broker, say).
    for name in list(os.environ):
        if name.upper().startswith("FAULTSTREAM_"):
            monkeypatch.delenv(name)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_sample=SAMPLE)
    return pytester


@pytest.fixture
def threshold_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broken test's circuit opens at its third consecutive failure (mid-run 2)."""
    monkeypatch.setenv("FAULTSTREAM_CIRCUITS__TASK_TYPE__FAILURE_THRESHOLD", "3")


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, int]]:
    result = pytester.runpytest(*FAST, *args)
    return result, result.parseoutcomes()


def summary_lines(result: pytest.RunResult, test: str) -> list[str]:
    """The plugin's terminal-summary lines about one test."""
    return [line for line in result.outlines if line.split(" ")[1:2] == [f"test_sample.py::{test}"]]


def report(pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    db = pytester.path / HISTORY
    assert faultstream(["report", "--db", str(db), "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def three_runs(pytester: pytest.Pytester, *args: str) -> list[pytest.RunResult]:
    first, outcomes = run(pytester, *args)
    # Flaky: failed, retried (DELAYED_RETRY), passed. Broken: failed twice (DELAYED_RETRY,
    # then DIFFERENT_WORKER: not a retry in this session).
    assert outcomes == {"passed": 2, "failed": 1, "rerun": 2}
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    assert summary_lines(first, "test_flaky") == [
        "FLAKY test_sample.py::test_flaky - attempt 0 failed (SOFTWARE_ERROR); passed on attempt 1"
    ]
    (broken,) = summary_lines(first, "test_broken")
    assert broken.startswith("FAILED test_sample.py::test_broken - SOFTWARE_ERROR; recovery ")
    assert "command DIFFERENT_WORKER: SOFTWARE_ERROR ladder rung 1" in broken
    assert summary_lines(first, "test_stable") == []

    second, outcomes = run(pytester, *args)
    # Broken's third failure opens its circuit: the retry the core still answers
    # (DELAYED_RETRY until the circuit half-opens) is not followed into an open circuit.
    assert outcomes == {"passed": 2, "failed": 1, "rerun": 1}
    (broken,) = summary_lines(second, "test_broken")
    assert "recovery command DELAYED_RETRY (not followed: the circuit opened" in broken

    third, outcomes = run(pytester, *args)
    assert outcomes == {"passed": 2, "skipped": 1, "rerun": 1}
    assert third.ret == pytest.ExitCode.OK
    third.stdout.fnmatch_lines(
        [
            "SKIPPED * faultstream quarantine: task_type circuit is OPEN since *, due to "
            "half-open at * (SOFTWARE_ERROR; failure_threshold reached)"
        ]
    )
    (broken,) = summary_lines(third, "test_broken")
    assert broken.startswith("QUARANTINED test_sample.py::test_broken - faultstream quarantine")
    assert summary_lines(third, "test_stable") == []
    return [first, second, third]


def run_ids(results: list[pytest.RunResult]) -> list[str]:
    ids = []
    for result in results:
        (line,) = [line for line in result.outlines if line.startswith("run ")]
        ids.append(line.split(" ")[1].rstrip(":"))
    return ids


def check_report(pytester: pytest.Pytester, capsys, results: list[pytest.RunResult]) -> dict:
    runs = run_ids(results)
    health = report(pytester, capsys, "--since", runs[0])
    assert health["runs"] == runs
    # 3 + 3 + 2 tests ran (the quarantined one did not), broken failed twice, flaky was
    # flaky every time, broken was quarantined once.
    figures = [health[key] for key in ("tests", "failed", "flaky", "retried", "quarantined")]
    assert figures == [8, 2, 3, 4, 1]
    assert {t["test"] for t in health["flaky_tests"]} == {"test_sample.py::test_flaky"}
    assert [t["test"] for t in health["quarantined_tests"]] == ["test_sample.py::test_broken"]
    (circuit,) = health["open_circuits"]
    assert (circuit["kind"], circuit["id"], circuit["new"]) == (
        "task_type",
        "test_sample.py::test_broken",
        True,
    )
    assert [run["exitstatus"] for run in health["trend"]] == [1, 1, 0]
    return health


def test_without_the_option_the_plugin_does_nothing(sample: pytest.Pytester) -> None:
    result = sample.runpytest("-p", "no:randomly")
    assert result.parseoutcomes() == {"passed": 1, "failed": 2}
    assert "= faultstream =" not in result.stdout.str()
    assert not (sample.path / HISTORY).parent.exists()


def test_stable_flaky_and_broken_over_repeated_runs(
    sample: pytest.Pytester, threshold_3: None, capsys: pytest.CaptureFixture[str]
) -> None:
    results = three_runs(sample)
    health = check_report(sample, capsys, results)
    markdown_args = ["report", "--db", str(sample.path / HISTORY), "--since", health["runs"][0]]
    capsys.readouterr()
    assert faultstream(markdown_args) == 0
    markdown = capsys.readouterr().out
    assert "| flaky | 3 |" in markdown and "### Quarantined (1)" in markdown
    assert faultstream([*markdown_args, "--fail-on", "new-open-circuits"]) == 1


def test_the_same_under_xdist_with_two_workers(
    sample: pytest.Pytester, threshold_3: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("xdist")
    results = three_runs(sample, "-n", "2")
    check_report(sample, capsys, results)
    with duckdb.connect(str(sample.path / HISTORY), read_only=True) as con:
        workers = {
            row[0].rsplit("/", 1)[1]
            for row in con.execute(
                "SELECT DISTINCT worker_id FROM events WHERE kind = 'SUCCESS'"
            ).fetchall()
        }
    assert workers <= {"gw0", "gw1"} and workers


def test_a_passing_session_is_recorded_after_it_ends(
    sample: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    # Default settings and no failure: no agent runs during the session; one lands its
    # spool once it is over.
    result, outcomes = run(sample, "-k", "stable")
    assert outcomes == {"passed": 1, "deselected": 2}
    result.stdout.fnmatch_lines(["embedded: *history.duckdb (recorded by the agent after the *"])
    health = report(sample, capsys)
    assert (health["tests"], health["failed"], health["trend"][0]["exitstatus"]) == (1, 0, 0)
    assert list((sample.path / HISTORY).with_name("history.duckdb.spool").glob("*")) == []
    # A failure needs the core's answer: the agent starts then, on what was spooled.
    result, outcomes = run(sample)
    assert outcomes == {"passed": 2, "failed": 1, "rerun": 2}
    health = report(sample, capsys)
    assert (health["tests"], health["failed"], health["flaky"]) == (3, 1, 1)


def test_quarantine_as_xfail_or_off(
    sample: pytest.Pytester, threshold_3: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run(sample)
    run(sample)  # broken's circuit is open from here on
    _, outcomes = run(sample, "--faultstream-quarantine", "xfail")
    assert outcomes == {"passed": 2, "xfailed": 1, "rerun": 1}
    _, outcomes = run(sample, "--faultstream-quarantine", "off")
    # Runs, fails, and is not retried into its open circuit.
    assert outcomes == {"passed": 2, "failed": 1, "rerun": 1}


def test_a_marker_groups_tests_under_one_circuit(
    pytester: pytest.Pytester, threshold_3: None
) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_group="""
        import pytest

        pytestmark = pytest.mark.faultstream(task_type="gpu-suite")

        def test_a():
            raise TimeoutError("device timed out")

        def test_b():
            raise TimeoutError("device timed out")
        """
    )
    # TIMEOUT: IMMEDIATE_RETRY, then DELAYED_RETRY; the group's third failure opens its
    # circuit, so the rest of the group is quarantined in the same session.
    result, outcomes = run(pytester)
    assert outcomes == {"failed": 1, "skipped": 1, "rerun": 2}
    result.stdout.fnmatch_lines(["SKIPPED * faultstream quarantine: task_type circuit is OPEN*"])


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--faultstream-config", "missing.toml"], {}, "missing.toml: no such configuration file"),
        (
            [],
            {"FAULTSTREAM_CIRCUITS__TASK_TYPE__FAILURE_THRESHOLD": "0"},
            "FAULTSTREAM_CIRCUITS__TASK_TYPE__FAILURE_THRESHOLD: circuits.task_type."
            "failure_threshold: Input should be greater than 0",
        ),
        (["--faultstream-hardware-class", "x" * 65], {}, "must have 1 to 64 characters"),
    ],
)
def test_bad_input_stops_before_the_first_test_in_one_line(
    sample: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    said: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = sample.runpytest("--faultstream", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1 and said in errors[0], result.errlines


def test_the_options_are_checked(sample: pytest.Pytester) -> None:
    result = sample.runpytest("--faultstream", "--faultstream-max-delay", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--faultstream-max-delay*not a number of seconds (0 or more)*"])


def test_the_ini_file_enables_it(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nfaultstream = true\n")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest("-p", "no:randomly")
    result.stdout.fnmatch_lines(["*= faultstream =*", "run *: 1 tests, 0 reruns*"])


def events(pytester: pytest.Pytester, sql: str) -> list[Any]:
    db = pytester.path / HISTORY
    _wait_for_writer(db)
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_each_attempt_is_a_task_with_its_classified_failure(
    sample: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAULTSTREAM_HARDWARE_CLASS", "cuda")
    run(sample, "--faultstream-worker-id", "ci-7", "--faultstream-run-id", "build-42")
    rows = events(
        sample,
        "SELECT kind, worker_id, hardware_class, task_id, task_type, attempt, failure_type, "
        "message, attributes['pytest.exception'] FROM events "
        "WHERE task_type = 'test_sample.py::test_broken' ORDER BY seq",
    )
    task = "build-42:test_sample.py::test_broken"
    started = ("TASK_STARTED", "ci-7", "cuda", task, "test_sample.py::test_broken")
    failed = ("FAILURE", "ci-7", "cuda", task, "test_sample.py::test_broken")
    error = ("SOFTWARE_ERROR", "RuntimeError: always broken", "RuntimeError")
    assert rows == [
        (*started, 0, None, None, None),
        (*failed, 0, *error),
        (*started, 1, None, None, None),
        (*failed, 1, *error),
    ]
    # The retry carries the command it follows.
    (link,) = events(
        sample,
        "SELECT c.strategy FROM events e JOIN commands c ON e.recovery_command_id = c.command_id "
        "WHERE e.kind = 'TASK_STARTED' AND e.task_type = 'test_sample.py::test_broken'",
    )
    assert link == ("DELAYED_RETRY",)


def test_a_dead_sessions_spool_is_recorded_by_the_next(
    sample: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a session leaves when pytest is killed: its spool, a test it had announced
    # (running long) and never ended, no goodbye, a last line cut short.
    spool = (sample.path / HISTORY).with_name("history.duckdb.spool") / "dead-run.jsonl"
    spool.parent.mkdir(parents=True)
    task = {
        "task_type": "test_sample.py::test_hang",
        "attempt": 0,
        "cmd": None,
        "task_id": "dead-run:test_sample.py::test_hang",
        "test": "test_sample.py::test_hang",
    }
    lines = [
        {
            "t": "hello",
            "role": "single",
            "run": "dead-run",
            "worker_id": "ci-9",
            "hardware_class": "cpu",
            "ts": 1_764_355_200_000,
        },
        {
            "t": "batch",
            "m": [
                {
                    **task,
                    "t": "be",
                    "k": 1,
                    "ts": 1_764_355_200_001,
                    "te": 1_764_355_200_002,
                    "ok": True,
                    "task_type": "test_sample.py::test_stable",
                    "task_id": "dead-run:test_sample.py::test_stable",
                    "test": "test_sample.py::test_stable",
                }
            ],
        },
        {**task, "t": "b", "k": 2, "ts": 1_764_355_200_003},
    ]
    spool.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"t": "bat')
    run(sample, "-k", "stable")
    health = report(sample, capsys, "--since", "dead-run")
    assert [r["run"] for r in health["trend"]] == ["dead-run", health["runs"][-1]]
    assert health["trend"][0]["exitstatus"] == "interrupted"
    assert health["trend"][0]["duration_s"] == 0.0  # ended when last heard of, not when landed
    assert health["trend"][0]["tests"] == 1
    (started,) = events(
        sample, "SELECT worker_id FROM events WHERE task_type = 'test_sample.py::test_hang'"
    )
    assert started == ("ci-9",)  # shown as started: the core moves it once ci-9 is lost
    assert not spool.exists()
