"""How scripted incidents decide the outcome of one task attempt.

Everything random comes from the simulator's seeded `random.Random`, in a fixed order, so
a seed reproduces the same fleet history.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from faultstream.events.models import FailureType, RecoveryStrategy

from .scenario import IncidentSpec

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


@dataclass
class SimWorker:
    worker_id: str
    hardware_class: str
    browser_ok: bool = True
    silent: bool = False


@dataclass
class SimTask:
    task_id: str
    task_type: str
    duration_ms: int  # on the task's own hardware
    attributes: dict[str, str]
    memory_budget: float | None = None  # set the first time an OOM incident sees it


@dataclass(frozen=True)
class Outcome:
    """None of `failure_type` means success; `at_fraction` of the run is when it ends."""

    at_fraction: float
    failure_type: FailureType | None = None
    message: str | None = None
    incident: str | None = None


@dataclass
class IncidentState:
    spec: IncidentSpec
    started_at: int | None = None  # event time (ms), once it began
    workers: list[str] = field(default_factory=list)  # the workers it hit
    tasks: set[str] = field(default_factory=set)  # tasks it made fail


SUCCESS = Outcome(at_fraction=1.0)


def decide_outcome(
    rng: random.Random,
    incidents: list[IncidentState],
    offset_ms: int,
    worker: SimWorker,
    task: SimTask,
    parameters: dict[str, str],
    background_failure_rate: float,
    strategy: RecoveryStrategy | None = None,
) -> Outcome:
    """The outcome of running `task` with `parameters` on `worker`, started at `offset_ms`;
    `strategy` is the recovery strategy the run carries out (None for a first attempt)."""
    for state in incidents:
        spec = state.spec
        if not spec.active(offset_ms):
            continue
        outcome = _incident_outcome(rng, state, worker, task, parameters, strategy)
        if outcome is not None:
            return outcome
    if not worker.browser_ok:
        # A browser that crashed stays down until a BROWSER_RESTART.
        return Outcome(0.05, FailureType.BROWSER_FAILURE, "browser disconnected")
    if rng.random() < background_failure_rate:
        kind = rng.choice((FailureType.TRANSIENT_ERROR, FailureType.TIMEOUT))
        return Outcome(rng.uniform(0.1, 0.9), kind, f"{kind.lower()}: retry may help")
    return SUCCESS


def _incident_outcome(
    rng: random.Random,
    state: IncidentState,
    worker: SimWorker,
    task: SimTask,
    parameters: dict[str, str],
    strategy: RecoveryStrategy | None,
) -> Outcome | None:
    spec = state.spec
    kind = spec.kind
    if kind == "flaky_worker" and worker.worker_id in state.workers:
        if rng.random() < spec.probability:
            failure = spec.failure_type or FailureType.WORKER_CRASH
            return Outcome(rng.uniform(0.1, 0.4), failure, spec.message, spec.name)
    elif kind == "hardware_fault" and worker.worker_id in state.workers:
        if rng.random() < spec.probability:
            return Outcome(
                rng.uniform(0.02, 0.1), FailureType.HARDWARE_ERROR, spec.message, spec.name
            )
    elif kind == "browser_crash" and worker.hardware_class == spec.hardware_class:
        if rng.random() < spec.probability:
            worker.browser_ok = False
            return Outcome(
                rng.uniform(0.1, 0.6), FailureType.BROWSER_FAILURE, spec.message, spec.name
            )
    elif kind == "oom" and task.task_type == spec.task_type and worker.hardware_class != "cpu":
        if task.memory_budget is None:
            task.memory_budget = rng.uniform(*spec.memory)
        if _memory_needed(parameters) > task.memory_budget:
            return Outcome(
                rng.uniform(0.3, 0.6), FailureType.RESOURCE_EXHAUSTION, spec.message, spec.name
            )
    elif (
        kind == "bad_release"
        and task.task_type == spec.task_type
        and rng.random() < spec.probability
    ):
        return Outcome(rng.uniform(0.2, 0.5), FailureType.SOFTWARE_ERROR, spec.message, spec.name)
    elif kind == "first_rung_fails" and _first_rung_fails(rng, state, worker, task, strategy):
        failure = spec.failure_type or FailureType.RESOURCE_EXHAUSTION
        return Outcome(rng.uniform(0.3, 0.6), failure, spec.message, spec.name)
    return None


def _first_rung_fails(
    rng: random.Random,
    state: IncidentState,
    worker: SimWorker,
    task: SimTask,
    strategy: RecoveryStrategy | None,
) -> bool:
    """A first attempt on the class fails at `probability`; a retry of a task it hit that
    carries out `fails_on` fails every time; other strategies fare as any run does."""
    spec = state.spec
    if worker.hardware_class != spec.hardware_class:
        return False
    if spec.task_type is not None and task.task_type != spec.task_type:
        return False
    if strategy is None:
        return rng.random() < spec.probability
    return strategy == spec.fails_on and task.task_id in state.tasks


def _memory_needed(parameters: dict[str, str]) -> float:
    try:
        batch = int(parameters.get("batch_size", "1"))
    except ValueError:
        batch = 1
    return batch * PRECISION_BYTES.get(parameters.get("precision", "fp32"), 4)


def slowdown(
    incidents: list[IncidentState], offset_ms: int, worker: SimWorker, task: SimTask
) -> float:
    """How many times longer `task` runs when started now on `worker` (a throttled one)."""
    factor = 1.0
    for state in incidents:
        spec = state.spec
        hit = spec.kind == "throttled_worker" and worker.worker_id in state.workers
        if hit and spec.active(offset_ms):
            factor *= spec.slowdown
            state.tasks.add(task.task_id)  # the tasks it slowed
    return factor
