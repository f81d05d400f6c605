"""A FAILURE in the compiled twin (fleet.py `_on_failure`, recovery.py `plan_failure`):
counted on the circuit its type names (or on the class, by the fleet guard), then one
command, logged with what `materialize.py` needs to rebuild the plan."""

from __future__ import annotations

import numpy as np

from .adaptive import adaptive_strategy, await_trial, trial_outcome
from .alerts import create
from .circuits import count_failure, fleet_guard_holds
from .codes import HARDWARE_CLASS, RUNG_BATCH, RUNG_PRECISION, STRATEGY_CODE, WORKER, openish
from .jit import step
from .log import log_row
from .score import observe_failure
from .state import (
    ADAPTIVE_ROW,
    BLAME_GUARD,
    BLAME_TYPE,
    CHECKPOINT_SEQ,
    CLASS_DUE_MS,
    CLASS_RESET_TIMEOUT,
    CLASS_STATE,
    COMMAND,
    DUE_MS,
    GUARDED,
    HAS_CHECKPOINT,
    HAS_TARGET_CHECKPOINT,
    INTERVAL_FAILURES,
    RUNNING,
    STARTED,
    STATE,
    STRATEGY,
    TARGET,
    TARGET_CHECKPOINT,
    TASK_TYPE_DUE_MS,
    TASK_TYPE_RESET_TIMEOUT,
    TASK_TYPE_STATE,
    VERSION,
    WORKER_STATE,
)
from .workers import arrived, escalated, moving, pick_target

DELAYED = STRATEGY_CODE["DELAYED_RETRY"]
DIFFERENT_WORKER = STRATEGY_CODE["DIFFERENT_WORKER"]
DIFFERENT_CLASS = STRATEGY_CODE["DIFFERENT_HARDWARE_CLASS"]
REDUCED_BATCH = STRATEGY_CODE["REDUCED_BATCH_SIZE"]
REDUCED_PRECISION = STRATEGY_CODE["REDUCED_PRECISION"]
FALLBACK_CPU = STRATEGY_CODE["FALLBACK_CPU"]
ESCALATION = STRATEGY_CODE["ESCALATION"]


@step
def _moves_task(strategy: int) -> bool:
    """recovery.py's MOVES_TASK: it names a target worker and carries the checkpoint."""
    if strategy == DIFFERENT_WORKER or strategy == DIFFERENT_CLASS:  # noqa: SIM109 (numba)
        return True
    return strategy == FALLBACK_CPU


@step
def on_failure(run, state, i, w, class_circuit, now) -> None:
    """FAILURE record `i` from worker `w` of class `class_circuit`, at `now`."""
    inputs, fleet = run.inputs, run.fleet
    worker_circuit = fleet.worker_circuit[w]
    task_type = np.int64(inputs.task_type[i])
    if state.derive:
        p = inputs.pair[i]
        if state.started[p, RUNNING] == 1:
            state.started[p, RUNNING] = 0
            state.workers[w, STARTED] -= 1
        arrived(state, inputs.task_key[i])  # before its command may move it again
        create(run, state, task_type)
        if state.adaptive:  # the outcome of the command it carried out, before planning
            trial_outcome(run, state, i, 0)
        if state.outliers and run.rules.outlier_factor[state.counters[VERSION]] > 0:
            state.workers[w, INTERVAL_FAILURES] += 1
        if state.slow:  # the attempt is over: no success of it is timed
            state.starts[inputs.trial_now[i], 0] = 0
    if state.scoring:
        observe_failure(run, state, i)
    failure_type = inputs.failure_type[i]
    rank = run.rules.ranks[state.counters[VERSION], failure_type]
    c = task_type
    if rank == WORKER:
        c = worker_circuit
    elif rank == HARDWARE_CLASS:
        c = class_circuit
    guarded = rank == WORKER and fleet_guard_holds(run, state, worker_circuit, class_circuit, now)
    if guarded:  # most of the class fails together: the class is blamed, not the worker
        c = class_circuit
    count_failure(run, state, c, now, failure_type, BLAME_GUARD if guarded else BLAME_TYPE)
    if state.derive:
        _command(run, state, i, w, class_circuit, task_type, now, guarded)


@step
def _command(run, state, i, w, class_circuit, task_type, now, guarded) -> None:
    """The command rules 1-5 of recovery.py `plan_failure` choose, with its target worker."""
    inputs, fleet, circuits = run.inputs, run.fleet, state.circuits
    worker_circuit = fleet.worker_circuit[w]
    worker_state = circuits[worker_circuit, STATE]
    class_state = circuits[class_circuit, STATE]
    task_type_state = circuits[task_type, STATE]
    attempt = inputs.attempt[i]
    cpu = fleet.cpu_circuit
    target_class = class_circuit
    version = state.counters[VERSION]
    min_samples = run.rules.min_samples[version]
    adaptive_row = -1
    if attempt >= run.rules.max_retries[version]:
        strategy = ESCALATION
    elif openish(worker_state):
        strategy = DIFFERENT_WORKER
    elif openish(class_state):
        if class_circuit == cpu:
            strategy = DELAYED
        else:
            strategy = DIFFERENT_CLASS
            target_class = cpu
    elif openish(task_type_state):
        strategy = DELAYED
    elif min_samples > 0:  # the ladder, learning which rung succeeds
        strategy, adaptive_row = adaptive_strategy(
            run, state, i, class_circuit, attempt, min_samples
        )
        if strategy == FALLBACK_CPU:
            target_class = cpu
    else:  # the ladder: rung `attempt`, rungs that cannot apply skipped
        strategy = ESCALATION
        failure_type = inputs.failure_type[i]
        rungs = inputs.rungs[i]
        for rung in range(attempt, fleet.ladders.shape[1]):
            s = fleet.ladders[failure_type, rung]
            if s < 0:
                break
            if s == REDUCED_BATCH and rungs & RUNG_BATCH == 0:
                continue
            if s == REDUCED_PRECISION and rungs & RUNG_PRECISION == 0:
                continue
            if s == FALLBACK_CPU:
                if class_circuit == cpu:
                    s = DIFFERENT_WORKER
                else:
                    target_class = cpu
            strategy = s
            break
    row = log_row(state, COMMAND, now)
    if row < 0:
        return
    log, key = state.log, inputs.task_key[i]
    log[row, STRATEGY] = strategy
    log[row, TARGET] = -1
    log[row, HAS_TARGET_CHECKPOINT] = 0
    if _moves_task(strategy):
        log[row, HAS_TARGET_CHECKPOINT] = state.checkpoints[key, HAS_CHECKPOINT]
        log[row, TARGET_CHECKPOINT] = state.checkpoints[key, CHECKPOINT_SEQ]
        target = pick_target(run, state, target_class, w)
        log[row, TARGET] = fleet.worker_circuit[target] if target >= 0 else -1
        if target >= 0:
            moving(state, key, target)
    elif strategy == ESCALATION:
        state.checkpoints[key, HAS_CHECKPOINT] = 0  # the task is given up: forget it
        escalated(run, state, key, now, row)
    if state.adaptive:
        await_trial(
            run, state, inputs.trial_next[i], inputs.failure_type[i], class_circuit, strategy
        )
    log[row, ADAPTIVE_ROW] = adaptive_row
    log[row, GUARDED] = guarded
    log[row, WORKER_STATE] = worker_state
    log[row, CLASS_STATE] = class_state
    log[row, TASK_TYPE_STATE] = task_type_state
    log[row, CLASS_DUE_MS] = circuits[class_circuit, DUE_MS]
    log[row, TASK_TYPE_DUE_MS] = circuits[task_type, DUE_MS]
    state.log_floats[row, CLASS_RESET_TIMEOUT] = state.reset_timeout_s[class_circuit]
    state.log_floats[row, TASK_TYPE_RESET_TIMEOUT] = state.reset_timeout_s[task_type]
