"""Alerts in the compiled twin (fleet.py `_judge_alerts`, `_queue_alert`, `_transitioned`,
`_push_outage_timer`, `_open_too_long`, `_judge_skew`; alerts.py `AlertBook`), kept only by
a replay that derives records (scoring never reads an alert).

An alert decided during a step (a due moment, or an input) waits in `State.pending` until
the step's end, where it is written after the step's other records; then each dirty class's
capacity, in id order, and the fleet's health are judged. The firing alerts are flags
(circuit, worker and task columns, a counter for the fleet); `materialize.py` builds their
messages from the numbers logged and keeps each FIRING's alert_id for its RESOLVED.
"""

from __future__ import annotations

from .codes import CLOSED, HALF_OPEN, HARDWARE_CLASS, LOG_FULL, WORKER, openish
from .figures import heapsort, mark
from .heap import OUTAGE_RANK, push_due, sort_key
from .jit import inlined_step, step
from .log import log_row
from .moments import ceil_ms, round6
from .state import (
    ALERT,
    ALERT_A,
    ALERT_B,
    ALERT_C,
    ALERT_RULE,
    ALERT_STATE,
    ALERT_SUBJECT,
    ALERT_WORK,
    CAPACITY_FIRING,
    CAPACITY_RULE,
    CLASS,
    CLOSED_LIVE,
    CREATED,
    DIRTY,
    DIRTY_SIZE,
    EXISTS,
    FIRING,
    HALF_OPEN_COUNT,
    HEALTH_DIRTY,
    HEALTH_FIRING,
    HEALTH_RULE,
    KNOWN,
    LIVE,
    LOST,
    OPEN_COUNT,
    OPEN_FIRING,
    OPEN_LONGER_RULE,
    OUTAGE_SINCE,
    PENDING_SIZE,
    RESOLVED,
    ROW_TS,
    SKEW_RULE,
    SKEWED,
    STATE,
    STATUS,
    VERSION,
)


@inlined_step
def closed(circuit_state) -> int:
    return 1 if circuit_state == CLOSED else 0


@inlined_step
def create(run, state, c) -> None:
    """fleet.py `_circuit`: the core knows circuit `c` from here on (its figures marked;
    one more circuit in the fleet's health; a new class's capacity to judge)."""
    circuits = state.circuits
    if circuits[c, CREATED] == 1:
        return
    circuits[c, CREATED] = 1
    if state.figures:
        mark(state, c)
    if state.derive:
        counters = state.counters
        counters[KNOWN] += 1
        counters[HEALTH_DIRTY] = 1
        counters[ALERT_WORK] = 1
        if run.fleet.circuit_rank[c] == HARDWARE_CLASS:
            dirty_class(state, c)


@inlined_step
def dirty_class(state, c) -> None:
    """Class circuit `c`'s capacity is to be judged at the step's end."""
    circuits = state.circuits
    if circuits[c, DIRTY] == 1:
        return
    circuits[c, DIRTY] = 1
    counters = state.counters
    state.dirty[counters[DIRTY_SIZE]] = c
    counters[DIRTY_SIZE] += 1
    counters[ALERT_WORK] = 1


@step
def queue_alert(state, rule, firing, subject, ts, a) -> None:
    """An alert decided now, written at the step's end (`a`: a number its message needs)."""
    counters, pending = state.counters, state.pending
    n = counters[PENDING_SIZE]
    if n >= pending.shape[0]:  # the caller runs again with bigger buffers
        counters[STATUS] = LOG_FULL
        return
    pending[n, ROW_TS] = ts
    pending[n, ALERT_RULE] = rule
    pending[n, ALERT_STATE] = firing
    pending[n, ALERT_SUBJECT] = subject
    pending[n, ALERT_A] = a
    counters[PENDING_SIZE] = n + 1
    counters[ALERT_WORK] = 1


@step
def _write(state, ts, rule, firing, subject, a, b, c) -> None:
    row = log_row(state, ALERT, ts)
    if row < 0:
        return
    log = state.log
    log[row, ALERT_RULE] = rule
    log[row, ALERT_STATE] = firing
    log[row, ALERT_SUBJECT] = subject
    log[row, ALERT_A] = a
    log[row, ALERT_B] = b
    log[row, ALERT_C] = c


@step
def _health_below(total, opened, half_open, threshold, counters) -> bool:
    """events/health.py `overall_health(...) < threshold`, with its very floats: the rounding
    to 1e-6 decides only within a hair of the threshold."""
    if total == 0:
        return threshold > 100.0
    health = 100 - (opened + 0.4 * half_open) / total * 100
    if health < threshold - 1e-5:
        return True
    if health >= threshold + 1e-5:
        return False
    return round6(health, counters) < threshold


@step
def judge_alerts(run, state, ts) -> None:
    """fleet.py `_judge_alerts` at the end of a step: the alerts it decided, then each dirty
    class's capacity in id order, then the fleet's health."""
    counters = state.counters
    counters[ALERT_WORK] = 0
    pending = state.pending
    for j in range(counters[PENDING_SIZE]):
        _write(
            state,
            pending[j, ROW_TS],
            pending[j, ALERT_RULE],
            pending[j, ALERT_STATE],
            pending[j, ALERT_SUBJECT],
            pending[j, ALERT_A],
            0,
            0,
        )
    counters[PENDING_SIZE] = 0
    version = counters[VERSION]
    rules, fleet, circuits = run.rules, run.fleet, state.circuits
    n = counters[DIRTY_SIZE]
    if n > 0:
        dirty, n_circ = state.dirty, circuits.shape[0]
        for j in range(n):  # (id order, circuit): sorted, the circuit recovered
            dirty[j] = fleet.circuit_order[dirty[j]] * n_circ + dirty[j]
        heapsort(dirty, n)
        threshold = rules.capacity_below[version]
        for j in range(n):
            c = dirty[j] % n_circ
            circuits[c, DIRTY] = 0
            firing = circuits[c, CAPACITY_FIRING]
            if threshold == 0 and firing == 0:
                continue
            live = state.classes[c, LIVE]
            free = 0 if openish(circuits[c, STATE]) else state.classes[c, CLOSED_LIVE]
            if threshold != 0 and (free * 100.0 < threshold * live or live == 0):
                if firing == 0:
                    circuits[c, CAPACITY_FIRING] = 1
                    _write(state, ts, CAPACITY_RULE, FIRING, c, free, live, 0)
            elif firing == 1:
                circuits[c, CAPACITY_FIRING] = 0
                _write(state, ts, CAPACITY_RULE, RESOLVED, c, free, live, 0)
        counters[DIRTY_SIZE] = 0
    if counters[HEALTH_DIRTY] == 1:
        counters[HEALTH_DIRTY] = 0
        threshold = rules.health_below[version]
        total, opened, half_open = counters[KNOWN], counters[OPEN_COUNT], counters[HALF_OPEN_COUNT]
        firing = counters[HEALTH_FIRING]
        if threshold != 0 and _health_below(total, opened, half_open, threshold, counters):
            if firing == 0:
                counters[HEALTH_FIRING] = 1
                _write(state, ts, HEALTH_RULE, FIRING, -1, total, opened, half_open)
        elif firing == 1:
            counters[HEALTH_FIRING] = 0
            _write(state, ts, HEALTH_RULE, RESOLVED, -1, total, opened, half_open)


@step
def push_outage(run, state, c) -> None:
    """fleet.py `_push_outage_timer`: circuit `c` not CLOSED for open_longer_than_s is due;
    the entry's generation is the outage's start (a newer outage makes it stale)."""
    since = state.circuits[c, OUTAGE_SINCE]
    due = round6(since + run.rules.open_longer_ms[state.counters[VERSION]], state.counters)
    key = sort_key(run.fleet.circuit_order[c], OUTAGE_RANK + run.fleet.circuit_rank[c])
    push_due(state, due, key, c, since)


@step
def outage_due(run, state, due, c, since, floor_ts) -> None:
    """fleet.py `_open_too_long`: an outage timer popped; FIRING if the circuit has not been
    CLOSED since (and the setting has not grown meanwhile), judged at once."""
    circuits, counters = state.circuits, state.counters
    open_ms = run.rules.open_longer_ms[counters[VERSION]]
    if circuits[c, OUTAGE_SINCE] != since or open_ms == 0:
        return
    if round6(since + open_ms, counters) > due or circuits[c, OPEN_FIRING] == 1:
        return
    circuits[c, OPEN_FIRING] = 1
    ts = max(ceil_ms(due), floor_ts)
    queue_alert(state, OPEN_LONGER_RULE, FIRING, c, ts, 0)
    judge_alerts(run, state, ts)


@step
def transitioned(run, state, c, from_state, to_state, ts) -> None:
    """fleet.py `_transitioned`, the alerts' side: the fleet's state counts, the capacity a
    worker's or class's circuit decides, the outage clock."""
    counters, circuits, fleet = state.counters, state.circuits, run.fleet
    counters[OPEN_COUNT] += openish(to_state) - openish(from_state)
    counters[HALF_OPEN_COUNT] += (1 if to_state == HALF_OPEN else 0) - (
        1 if from_state == HALF_OPEN else 0
    )
    counters[HEALTH_DIRTY] = 1
    counters[ALERT_WORK] = 1
    rank = fleet.circuit_rank[c]
    if rank == WORKER:
        w = fleet.circuit_worker[c]
        workers = state.workers
        live = w >= 0 and workers[w, EXISTS] == 1 and workers[w, LOST] == 0
        if live and (from_state == CLOSED or to_state == CLOSED):
            dirty_class(state, workers[w, CLASS])
    elif rank == HARDWARE_CLASS:
        dirty_class(state, c)
    if from_state == CLOSED:
        circuits[c, OUTAGE_SINCE] = ts
        if run.rules.open_longer_ms[counters[VERSION]] != 0:
            push_outage(run, state, c)
    elif to_state == CLOSED:
        circuits[c, OUTAGE_SINCE] = -1
        if circuits[c, OPEN_FIRING] == 1:
            circuits[c, OPEN_FIRING] = 0
            queue_alert(state, OPEN_LONGER_RULE, RESOLVED, c, ts, 0)


@step
def judge_skew(run, state, i, w, now) -> None:
    """fleet.py `_judge_skew`: worker `w`'s clock off by more than max_skew_s fires (while
    the rule is on); its next event within it resolves (the rule on or off)."""
    workers, version = state.workers, state.counters[VERSION]
    skewed = workers[w, SKEWED] == 1
    if not skewed and run.rules.skew_alerts[version] == 0:
        return
    skew = run.inputs.skew[i]
    if abs(skew) > run.rules.skew_ms[version]:
        if not skewed and run.rules.skew_alerts[version] == 1:
            workers[w, SKEWED] = 1
            queue_alert(state, SKEW_RULE, FIRING, w, now, skew)
    elif skewed:
        workers[w, SKEWED] = 0
        queue_alert(state, SKEW_RULE, RESOLVED, w, now, 0)


@step
def on_config(run, state, version) -> None:
    """fleet.py `_on_config`, the alerts' side: each outage's clock at a new length; every
    threshold rule judged again when any alert rule changed."""
    rules, circuits = run.rules, state.circuits
    if rules.open_longer_changed[version] == 1 and rules.open_longer_ms[version] != 0:
        for c in range(circuits.shape[0]):
            if circuits[c, OUTAGE_SINCE] >= 0:
                push_outage(run, state, c)
    if rules.alerts_changed[version] == 1:
        rank = run.fleet.circuit_rank
        for c in range(circuits.shape[0]):
            if rank[c] == HARDWARE_CLASS and circuits[c, CREATED] == 1:
                dirty_class(state, c)
        state.counters[HEALTH_DIRTY] = 1
        state.counters[ALERT_WORK] = 1
