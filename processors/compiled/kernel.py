"""The compiled twin: `FleetCore.process` over the inputs of an encoded history, as one
numba loop. Read beside `processors/core/fleet.py`: the specification; the sections match.

No strings here: circuits, workers, tasks and settings versions are indices, a reason is
a code with its arguments. A `Run` is what the loop reads: the history (`encode.py`), the
settings versions (`versions.py`), the inputs to visit with the workers they reveal lost
(`liveness.py`), and what the scorer compares with (`score.py`). The `State` it evolves
says what it keeps besides the circuits: the log of derived records, the score, the
figures. One circuit's rules are in `circuits.py` (its window of outcomes in `window.py`),
a worker's in `workers.py`, a FAILURE's count and command in `failure.py` (learned rungs in
`adaptive.py`), outlier workers in `outliers.py`, the alerts in `alerts.py`, the due
moments (half-openings, outages, outlier boundaries) in `heap.py`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .adaptive import trial_outcome
from .alerts import create, judge_alerts, judge_skew, on_config, outage_due, queue_alert
from .circuits import become, count_success, operate
from .codes import (
    CHECKPOINT,
    CONFIG,
    FAILURE,
    HALF_OPEN,
    OK,
    OPEN,
    OPERATOR,
    SUCCESS,
    TASK_STARTED,
)
from .encode import Fleet, Inputs
from .failure import on_failure
from .figures import publish_figures
from .heap import KEY, LOST_RANK, pop_due, sort_key
from .jit import inlined_step, step
from .liveness import Visits
from .moments import ceil_ms
from .outliers import BOUNDARY_KEY, judge_outliers, push_boundary, stop_boundaries
from .score import Scoring, finish_score, observe_success
from .state import (
    ALERT_WORK,
    ATTEMPT,
    BOUNDARY_GEN,
    CHECKPOINT_SEQ,
    DUE_MS,
    ESCALATED,
    ESCALATIONS_RULE,
    GENERATION,
    HALF_OPEN_SUCCESSES,
    HAS_CHECKPOINT,
    HEAP_SIZE,
    INTERVAL_SUCCESSES,
    NO_BLAME,
    RECORD,
    RESOLVED,
    RUNNING,
    SKEWED,
    STARTED,
    STARTED_BY,
    STATE,
    STATUS,
    TIMEOUT_ELAPSED,
    VERSION,
)
from .versions import Rules
from .workers import arrive, arrived, lose_worker


class Run(NamedTuple):
    """What one replay reads."""

    inputs: Inputs
    fleet: Fleet
    rules: Rules
    visits: Visits
    scoring: Scoring


@step
def replay(run, state) -> None:
    """Every visit in order. A status other than OK in `state.counters` leaves the state
    incomplete: the caller falls back to the core, or runs again with bigger buffers."""
    visits, counters = run.visits, state.counters
    loss = 0
    if state.outliers and run.rules.outlier_factor[0] > 0:  # the first boundary, from 0
        push_boundary(run, state, 0)
    for v in range(visits.record.shape[0]):
        i = visits.record[v]
        counters[RECORD] = i
        _reveal_due(run, state, visits.now[v], visits.before[v], loss, visits.losses_end[v])
        loss = visits.losses_end[v]
        if counters[STATUS] != OK:
            return
        _apply(run, state, i, visits.now[v])
        if counters[ALERT_WORK] == 1:  # the step's alerts, after its other records
            judge_alerts(run, state, visits.now[v])
        if counters[STATUS] != OK:
            return
    if state.derive:  # every input visited: the core reveals nothing after the last
        return
    # What inputs after the last visit revealed.
    _reveal_due(run, state, visits.final_now, visits.final_now, loss, loss)
    if state.scoring and counters[STATUS] == OK:
        finish_score(run, state)


# --- due moments (fleet.py `_reveal_due`), all before the input itself -----------------------


@step
def _pop_first(run, state, floor_ts, now) -> None:
    """The first due moment: an outlier boundary (judged, the next one set from `now`); a
    circuit half-opening at its due ms, unless the entry is stale (the circuit changed
    state since); or a circuit not CLOSED for open_longer_than_s (alerts.py
    `outage_due`). The alerts are judged after it."""
    key = state.heap_entries[0, KEY]
    if key == BOUNDARY_KEY:
        due, _, generation = pop_due(state)
        if generation != state.counters[BOUNDARY_GEN]:
            return
        ts = max(ceil_ms(due), floor_ts)
        judge_outliers(run, state, ts)
        push_boundary(run, state, now)
        if state.counters[ALERT_WORK] == 1:
            judge_alerts(run, state, ts)
        return
    if key % 8 > LOST_RANK:
        due, c, since = pop_due(state)
        outage_due(run, state, due, c, since, floor_ts)
        return
    _, c, generation = pop_due(state)
    circuits = state.circuits
    if generation == circuits[c, GENERATION] and circuits[c, STATE] == OPEN:
        circuits[c, HALF_OPEN_SUCCESSES] = 0
        become(run, state, c, HALF_OPEN, circuits[c, DUE_MS], TIMEOUT_ELAPSED, -1, NO_BLAME)
        if state.counters[ALERT_WORK] == 1:
            judge_alerts(run, state, circuits[c, DUE_MS])


@inlined_step
def _reveal_due(run, state, now, before, first_loss, end_loss) -> None:
    """Everything due by `now`, in order of due moment, id, rank: the heap's entries and
    the lost workers `first_loss` to `end_loss` (in that order already). When scoring, a
    due moment past `before` (the clock at the input before) was revealed earlier, by an
    input not visited: it precedes every loss revealed here. (A replay that derives
    records visits every input: an entry due by `before` was pushed by the input before,
    a CONFIG_CHANGED, and merges with the losses by its due moment as the core's does.)"""
    counters, heap_due, entries = state.counters, state.heap_due, state.heap_entries
    if not state.derive:
        while counters[HEAP_SIZE] > 0 and heap_due[0] <= before:
            _pop_first(run, state, before, now)
    visits, worker_order = run.visits, run.fleet.worker_order
    loss = first_loss
    while True:
        from_heap = counters[HEAP_SIZE] > 0 and heap_due[0] <= now
        if loss < end_loss and from_heap:  # ties of due: id order, then rank
            due = visits.lost_due[loss]
            key = sort_key(worker_order[visits.lost_worker[loss]], LOST_RANK)
            from_heap = heap_due[0] < due or (heap_due[0] == due and entries[0, KEY] < key)
        if from_heap:
            _pop_first(run, state, before, now)
            if counters[STATUS] != OK:
                return
            continue
        if loss >= end_loss:
            return
        lose_worker(run, state, loss)  # fleet.py `_lose_worker`
        if counters[ALERT_WORK] == 1:
            judge_alerts(run, state, visits.lost_at[loss])
        if counters[STATUS] != OK:
            return
        loss += 1


# --- one input (fleet.py `process`) ---------------------------------------------------------


@inlined_step
def _apply(run, state, i, now) -> None:
    inputs = run.inputs
    kind = inputs.kind[i]
    if kind > FAILURE:  # control records
        if kind == OPERATOR:
            operate(run, state, inputs.hardware_class[i], inputs.failure_type[i], now)
        elif kind == CONFIG:
            version = run.rules.config_version[i]
            if version >= 0:
                state.counters[VERSION] = version
                if state.derive:
                    on_config(run, state, version)
                if state.outliers:  # fleet.py `_outliers_changed`
                    if run.rules.outlier_restart[version] == 1:
                        push_boundary(run, state, now)
                    elif run.rules.outlier_stop[version] == 1:
                        stop_boundaries(state)
        elif state.figures:  # a TICK: the figures that changed since the last
            publish_figures(run, state, now)
        return
    w = inputs.worker[i]
    class_circuit = np.int64(inputs.hardware_class[i])
    arrive(run, state, w, class_circuit)  # the worker is alive
    if kind == SUCCESS:
        _on_success(run, state, i, w, class_circuit, now)
    elif kind == FAILURE:
        on_failure(run, state, i, w, class_circuit, now)
    elif kind == TASK_STARTED:
        if state.derive:
            create(run, state, np.int64(inputs.task_type[i]))
            started, p = state.started, inputs.pair[i]
            if started[p, RUNNING] == 0:
                started[p, RUNNING] = 1
                state.workers[w, STARTED] += 1
            started[p, ATTEMPT] = inputs.attempt[i]
            started[p, STARTED_BY] = i  # a restart is its newest start: last in start order
            arrived(state, inputs.task_key[i])
            if state.slow:  # the newest start of the attempt times its success
                state.starts[inputs.trial_now[i], 0] = 1
                state.starts[inputs.trial_now[i], 1] = inputs.ts[i]
    elif kind == CHECKPOINT and state.derive:
        checkpoints, key = state.checkpoints, inputs.task_key[i]
        if (
            checkpoints[key, HAS_CHECKPOINT] == 0
            or inputs.checkpoint_seq[i] > checkpoints[key, CHECKPOINT_SEQ]
        ):
            checkpoints[key, HAS_CHECKPOINT] = 1
            checkpoints[key, CHECKPOINT_SEQ] = inputs.checkpoint_seq[i]
    if state.derive:  # clock skew: judged only for a skewed worker or a clock off
        limit = run.rules.skew_ms[state.counters[VERSION]]
        if state.workers[w, SKEWED] == 1 or abs(inputs.skew[i]) > limit:
            judge_skew(run, state, i, w, now)


@inlined_step
def _on_success(run, state, i, w, class_circuit, now) -> None:
    """SUCCESS record `i`: the task is done, counted on its three circuits; its escalation
    alert, if one fires, resolved."""
    inputs = run.inputs
    task_type = np.int64(inputs.task_type[i])
    if state.derive:
        p = inputs.pair[i]
        if state.started[p, RUNNING] == 1:
            state.started[p, RUNNING] = 0
            state.workers[w, STARTED] -= 1
        key = inputs.task_key[i]
        state.checkpoints[key, HAS_CHECKPOINT] = 0
        arrived(state, key)
        create(run, state, task_type)
        if state.adaptive:
            trial_outcome(run, state, i, 1)
        if state.outliers and run.rules.outlier_factor[state.counters[VERSION]] > 0:
            state.workers[w, INTERVAL_SUCCESSES] += 1
    duration = -1  # ms since the attempt's newest start (slow calls); -1: none
    if state.slow:
        attempt = inputs.trial_now[i]
        if state.starts[attempt, 0] == 1:
            state.starts[attempt, 0] = 0
            duration = inputs.ts[i] - state.starts[attempt, 1]
    if state.scoring:
        observe_success(run, state, i)
    for c in (run.fleet.worker_circuit[w], class_circuit, task_type):
        count_success(run, state, c, now, duration)
    if state.derive and state.checkpoints[inputs.task_key[i], ESCALATED] == 1:
        state.checkpoints[inputs.task_key[i], ESCALATED] = 0
        queue_alert(state, ESCALATIONS_RULE, RESOLVED, inputs.task_key[i], now, 0)
