"""The built-in `rules` scenario's incidents: a flaky worker that fails one task in three,
a throttled GPU that runs ten times slower, and a ladder rung that never works on one
class, generated as scripted, seed-reproducibly."""

from __future__ import annotations

import io
import random
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

from faultstream.cli import main
from faultstream.cli.simulate import (
    SimulationRun,
    build_embedded_simulation,
    finish_embedded_simulation,
)
from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.jsonl import read_input_records
from faultstream.events.models import (
    FailureType,
    RecoveryCommand,
    RecoveryStrategy,
    WorkerEvent,
)
from faultstream.processors.simulator import load_scenario
from faultstream.processors.simulator.incidents import (
    IncidentState,
    SimTask,
    SimWorker,
    decide_outcome,
    slowdown,
)
from faultstream.processors.simulator.scenario import parse_scenario

MINUTE = 60_000


@pytest.fixture(scope="module")
def rules_run() -> tuple[SimulationRun, list[WorkerEvent], list[RecoveryCommand]]:
    tap = io.StringIO()
    run = build_embedded_simulation(
        core_settings=CoreSettings(), scenario_path="rules", seed=3, duration_ms=40 * MINUTE,
        tap=tap,
    )  # fmt: skip
    commands: list[RecoveryCommand] = []
    run.pipeline.subscribe(lambda out: commands.extend(
        r for r in out if isinstance(r, RecoveryCommand)))  # fmt: skip
    finish_embedded_simulation(run)
    tap.seek(0)
    events = [r for r in read_input_records(tap) if isinstance(r, WorkerEvent)]
    return run, events, commands


def _incident(run: SimulationRun, kind: str) -> IncidentState:
    return next(state for state in run.simulator.incidents if state.spec.kind == kind)


def _during(state: IncidentState, event: WorkerEvent) -> bool:
    began = state.started_at or 0
    return began <= event.ts < began - state.spec.start_ms + state.spec.end_ms


def _durations(events: list[WorkerEvent]) -> dict[str, list[float]]:
    """Seconds from TASK_STARTED to SUCCESS per worker, for runs that succeeded."""
    started = {}
    durations: dict[str, list[float]] = defaultdict(list)
    for event in events:
        key = (event.task_id, event.attempt)
        if event.kind == "TASK_STARTED":
            started[key] = event.ts
        elif event.kind == "SUCCESS" and key in started:
            durations[event.worker_id].append((event.ts - started[key]) / 1000)
    return durations


def test_rules_scenario_is_built_in_and_names_its_workers() -> None:
    scenario = load_scenario("rules")
    by_kind = {spec.kind: spec for spec in scenario.incidents}
    assert by_kind["flaky_worker"].worker == "cpu-03"
    assert by_kind["flaky_worker"].hardware_class == "cpu"
    assert by_kind["throttled_worker"].worker == "cuda-05"
    assert by_kind["throttled_worker"].slowdown == 10
    rung = by_kind["first_rung_fails"]
    assert (rung.hardware_class, rung.failure_type, rung.fails_on) == (
        "rocm", FailureType.RESOURCE_EXHAUSTION, RecoveryStrategy.REDUCED_BATCH_SIZE
    )  # fmt: skip


def test_flaky_worker_fails_about_one_task_in_three(rules_run) -> None:
    run, events, _ = rules_run
    flaky = _incident(run, "flaky_worker")
    assert flaky.workers == ["cpu-03"]
    outcomes = [e for e in events if e.worker_id == "cpu-03" and _during(flaky, e)
                and e.kind in ("SUCCESS", "FAILURE")]  # fmt: skip
    crashes = [e for e in outcomes if e.failure_type == FailureType.WORKER_CRASH]
    assert len(outcomes) > 60
    assert 0.25 < len(crashes) / len(outcomes) < 0.42


def test_flaky_worker_share_is_one_in_three_over_many_tasks() -> None:
    spec = parse_scenario(_one_incident('kind = "flaky_worker"\nworker = "cpu-01"\n'
                                        "probability = 0.33")).incidents[0]  # fmt: skip
    state = IncidentState(spec, started_at=0, workers=["cpu-01"])
    rng = random.Random(11)
    flaky, steady = SimWorker("cpu-01", "cpu"), SimWorker("cpu-02", "cpu")
    task = SimTask("t", "t", 1000, {})
    failed = sum(_fails(rng, state, flaky, task) for _ in range(6000))
    assert 0.31 < failed / 6000 < 0.35
    assert sum(_fails(rng, state, steady, task) for _ in range(1000)) == 0


def test_throttled_gpu_runs_its_tasks_ten_times_longer(rules_run) -> None:
    run, events, _ = rules_run
    gpu = _incident(run, "throttled_worker")
    assert gpu.workers == ["cuda-05"] and gpu.tasks
    in_incident = [e for e in events if _during(gpu, e)]
    durations = _durations(in_incident)
    throttled = statistics.median(durations.pop("cuda-05"))
    others = statistics.median(
        d for worker, runs in durations.items() if worker.startswith("cuda-") for d in runs
    )
    assert 7 < throttled / others < 13
    assert all(e.kind != "FAILURE" or e.task_id not in gpu.tasks for e in events)


def test_slowdown_applies_to_the_throttled_worker_while_the_incident_lasts() -> None:
    spec = parse_scenario(_one_incident('kind = "throttled_worker"\nworker = "cuda-01"\n'
                                        "slowdown = 10", fleet="cuda")).incidents[0]  # fmt: skip
    state = IncidentState(spec, started_at=0, workers=["cuda-01"])
    task = SimTask("t", "t", 1000, {})
    assert slowdown([state], 2 * MINUTE, SimWorker("cuda-01", "cuda"), task) == 10
    assert slowdown([state], 2 * MINUTE, SimWorker("cuda-02", "cuda"), task) == 1
    assert slowdown([state], 9 * MINUTE, SimWorker("cuda-01", "cuda"), task) == 1


def test_first_rung_retries_fail_on_the_class_and_the_second_rung_works(rules_run) -> None:
    run, events, commands = rules_run
    rung = _incident(run, "first_rung_fails")
    assert rung.tasks
    strategy_of = {c.command_id: c.strategy for c in commands}
    outcome_of = {(e.task_id, e.attempt): e.kind for e in events
                  if e.kind in ("SUCCESS", "FAILURE")}  # fmt: skip
    by_strategy: dict[str, list[str]] = defaultdict(list)
    for event in events:
        retry = event.kind == "TASK_STARTED" and event.recovery_command_id in strategy_of
        if retry and event.task_id in rung.tasks and event.hardware_class == "rocm":
            outcome = outcome_of.get((event.task_id, event.attempt))
            if outcome is not None:
                by_strategy[strategy_of[event.recovery_command_id]].append(outcome)
    assert by_strategy["REDUCED_BATCH_SIZE"]
    assert set(by_strategy["REDUCED_BATCH_SIZE"]) == {"FAILURE"}
    precision = by_strategy["REDUCED_PRECISION"]
    assert precision and precision.count("SUCCESS") / len(precision) > 0.9


def test_first_rung_fails_only_on_its_class_and_only_for_that_rung() -> None:
    spec = parse_scenario(_one_incident(
        'kind = "first_rung_fails"\nhardware_class = "rocm"\nprobability = 1.0',
        fleet="rocm", other="cuda",
    )).incidents[0]  # fmt: skip
    state = IncidentState(spec, started_at=0)
    rng = random.Random(5)
    task = SimTask("t1", "t", 1000, {"batch_size": "64", "precision": "fp32"})
    rocm, cuda = SimWorker("rocm-01", "rocm"), SimWorker("cuda-01", "cuda")
    first = decide_outcome(rng, [state], MINUTE * 2, rocm, task, task.attributes, 0.0)
    assert first.failure_type == FailureType.RESOURCE_EXHAUSTION
    state.tasks.add(task.task_id)  # the fleet records the tasks an incident made fail
    for _ in range(20):
        again = decide_outcome(rng, [state], MINUTE * 2, rocm, task, {}, 0.0,
                               RecoveryStrategy.REDUCED_BATCH_SIZE)  # fmt: skip
        assert again.failure_type == FailureType.RESOURCE_EXHAUSTION
    second = decide_outcome(rng, [state], MINUTE * 2, rocm, task, {}, 0.0,
                            RecoveryStrategy.REDUCED_PRECISION)  # fmt: skip
    assert second.failure_type is None
    elsewhere = decide_outcome(rng, [state], MINUTE * 2, cuda, task, task.attributes, 0.0)
    assert elsewhere.failure_type is None


def test_named_worker_outside_the_fleet_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--scenario", "rules", "--workers", "6", "--duration", "1m"]
    assert main([*args, "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "incidents[0].worker: 'cpu-03' is not in this fleet of 6 workers" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("incident", "field"),
    [
        ('kind = "bad_release"\ntask_type = "t"\nworker = "cpu-01"', "worker"),
        ('kind = "flaky_worker"\nworker = "tpu-01"', "worker"),
        ('kind = "flaky_worker"\nworker = "cpu-01"\nfailure_type = "OOPS"', "failure_type"),
        ('kind = "first_rung_fails"\nhardware_class = "cpu"\nfails_on = "PRAY"', "fails_on"),
        ('kind = "throttled_worker"\nworker = "cpu-01"\nslowdown = 0', "slowdown"),
    ],
)
def test_bad_new_incident_fields_name_the_field(incident: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"incidents\[0\]\.{field}"):
        parse_scenario(_one_incident(incident))


def _one_incident(body: str, fleet: str = "cpu", other: str | None = None) -> dict:
    import tomllib

    classes = f"{fleet} = 1\n" + (f"{other} = 1\n" if other else "")
    hardware = ", ".join(f'"{c}"' for c in (fleet, other) if c)
    text = (
        f"[fleet]\n{classes}[task_types.t]\nhardware = [{hardware}]\n"
        f"[[incidents]]\nstart_min = 1\nend_min = 8\n{body}\n"
    )
    return tomllib.loads(text)


def _fails(rng: random.Random, state: IncidentState, worker: SimWorker, task: SimTask) -> bool:
    outcome = decide_outcome(rng, [state], 2 * MINUTE, worker, task, {}, 0.0)
    return outcome.failure_type is not None
