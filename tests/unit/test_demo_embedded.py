"""The demo on the embedded default: a small fleet, every scripted incident detected, as
the DuckDB history shows it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from faultstream.cli import main
from faultstream.cli.demo import run_demo
from faultstream.cli.simulate import SimulationRun
from faultstream.events.config import load_settings


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationRun, Path]:
    db = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    run = run_demo(load_settings(), db, seed=7, workers=20, duration_ms=20 * 60_000)
    return run, db


def _query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _incident(run: SimulationRun, kind: str):
    return next(s for s in run.simulator.incidents if s.spec.kind == kind)


def _opened(db: Path, kind: str, circuit_id: str, after: int) -> list[tuple]:
    return _query(
        db,
        "SELECT ts FROM circuit_transitions WHERE circuit_kind = ? AND circuit_id = ? "
        "AND to_state = 'OPEN' AND ts >= ? ORDER BY ts",
        [kind, circuit_id, after],
    )


def _strategies_for(db: Path, tasks: set[str]) -> set[str]:
    rows = _query(db, "SELECT DISTINCT strategy FROM commands WHERE list_contains(?, task_id)",
                  [sorted(tasks)])  # fmt: skip
    return {r[0] for r in rows}


def test_demo_leaves_every_history_table_filled(demo) -> None:
    _, db = demo
    for table in ("events", "control", "circuit_transitions", "circuit_states", "commands",
                  "checkpoints", "recovery_outcomes", "health_snapshots"):  # fmt: skip
        assert _query(db, f"SELECT count(*) FROM {table}")[0][0] > 0, table


def test_cuda_driver_fault_opens_the_cuda_hardware_class_circuit(demo) -> None:
    run, db = demo
    fault = _incident(run, "hardware_fault")
    assert len(fault.workers) > 1  # several cuda workers at once
    assert _opened(db, "hardware_class", "cuda", fault.started_at)


def test_flaky_worker_opens_its_own_worker_circuit(demo) -> None:
    run, db = demo
    flaky = _incident(run, "flaky_worker")
    (worker,) = flaky.workers
    assert _opened(db, "worker", worker, flaky.started_at)


def test_bad_release_opens_task_type_circuit_which_closes_after_rollback(demo) -> None:
    run, db = demo
    release = _incident(run, "bad_release")
    rollback = run.simulator.start_ms + release.spec.end_ms
    states = _query(
        db,
        "SELECT to_state, ts FROM circuit_transitions WHERE circuit_kind = 'task_type' "
        "AND circuit_id = ? ORDER BY ts",
        [release.spec.task_type],
    )
    assert states[0][0] == "OPEN" and states[0][1] < rollback
    assert "HALF_OPEN" in [s for s, _ in states]
    assert states[-1][0] == "CLOSED" and states[-1][1] >= rollback


def test_out_of_memory_walks_the_batch_size_then_precision_ladder(demo) -> None:
    run, db = demo
    oom = _incident(run, "oom")
    assert {"REDUCED_BATCH_SIZE", "REDUCED_PRECISION"} <= _strategies_for(db, oom.tasks)
    # The retry really ran with the reduced parameters the commands asked for.
    rows = _query(
        db,
        "SELECT c.strategy, c.parameters, e.attributes FROM commands c JOIN events e "
        "ON e.recovery_command_id = c.command_id AND e.kind = 'TASK_STARTED' "
        "WHERE c.strategy IN ('REDUCED_BATCH_SIZE', 'REDUCED_PRECISION')",
    )
    assert rows
    for _, parameters, attributes in rows:
        for key, value in parameters.items():
            assert attributes[key] == value


def test_out_of_memory_ladder_reaches_cpu_fallback_on_some_seed(tmp_path: Path) -> None:
    db = tmp_path / "oom.duckdb"
    run = run_demo(load_settings(), db, seed=4, workers=20, duration_ms=20 * 60_000)
    assert "FALLBACK_CPU" in _strategies_for(db, _incident(run, "oom").tasks)


def test_browser_crashes_are_answered_with_browser_restart(demo) -> None:
    run, db = demo
    crash = _incident(run, "browser_crash")
    assert "BROWSER_RESTART" in _strategies_for(db, crash.tasks)
    restarted = _query(
        db,
        "SELECT count(*) FROM recovery_outcomes WHERE strategy = 'BROWSER_RESTART' "
        "AND outcome_kind = 'SUCCESS'",
    )[0][0]
    assert restarted > 0


def test_silent_worker_task_is_migrated_with_its_checkpoint(demo) -> None:
    run, db = demo
    silent = _incident(run, "silent_worker")
    (worker,) = silent.workers
    (task,) = silent.tasks
    newest_seq = _query(
        db,
        "SELECT max(checkpoint_seq) FROM events WHERE kind = 'CHECKPOINT' AND task_id = ? "
        "AND worker_id = ?",
        [task, worker],
    )[0][0]
    commands = _query(
        db,
        "SELECT command_id, checkpoint_seq, target_worker_id FROM commands "
        "WHERE task_id = ? AND worker_id = ? AND strategy = 'DIFFERENT_WORKER'",
        [task, worker],
    )
    assert commands and commands[0][1] == newest_seq
    command_id = commands[0][0]
    resumed = _query(
        db,
        "SELECT worker_id, attributes['resume_from_checkpoint'] FROM events "
        "WHERE kind = 'TASK_STARTED' AND recovery_command_id = ?",
        [command_id],
    )
    assert resumed and resumed[0][0] != worker and resumed[0][1] == str(newest_seq)


def test_every_retry_carries_the_attempt_of_its_command(demo) -> None:
    _, db = demo
    mismatched = _query(
        db,
        "SELECT count(*) FROM events e JOIN commands c ON e.recovery_command_id = c.command_id "
        "WHERE e.kind = 'TASK_STARTED' AND e.attempt <> c.attempt",
    )[0][0]
    carried = _query(db, "SELECT count(*) FROM events WHERE recovery_command_id IS NOT NULL")
    assert carried[0][0] > 0 and mismatched == 0


def test_demo_command_reports_incidents_and_the_dashboard_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cli.duckdb"
    db.write_text("an old demo file")  # replaced whole
    code = main(["demo", "--workers", "12", "--duration", "15m", "--db", str(db)])
    out = capsys.readouterr().out
    assert code == 0
    assert "flaky worker" in out and "detected: circuit worker:" in out
    assert f"faultstream dashboard --db {db}" in out
    assert _query(db, "SELECT count(*) FROM events")[0][0] > 0


def test_demo_topic_prefix_without_bootstrap_servers_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--prefix", "mine", "--db", str(tmp_path / "x")])
    assert code == 2
    assert "--prefix: only with --bootstrap-servers" in capsys.readouterr().err
