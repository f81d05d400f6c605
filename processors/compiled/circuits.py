"""One circuit's rules in the compiled twin (circuit.py): outcomes counted, transitions,
backoff and the half-open due moment, the operator's actions, and the fleet guard's
"would this failure open the worker's circuit" check (fleet.py `_on_failure`).

A transition is where the observers meet: the fleet guard's count of open workers per
class follows it, the scorer scores it (`score.py`), the figures marks note it
(`figures.py`), the alerts judge it (`alerts.py`), and the log records it
(`materialize.py`), as the state's flags ask.
"""

from __future__ import annotations

from .alerts import closed, create, transitioned
from .codes import (
    BACKOFF_EXHAUSTED,
    CLOSED,
    FORCE_OPEN,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    WORKER,
    openish,
)
from .figures import mark, mark_transition
from .heap import push_due, sort_key
from .jit import inlined_step, step
from .log import log_row
from .moments import ceil_ms, round6
from .score import observe_transition
from .state import (
    BY_FORCE_OPEN,
    BY_RESET,
    CLASS,
    CLOSED_LIVE,
    CONSECUTIVE_FAILURES,
    DUE_MS,
    EXISTS,
    FAILED_HALF_OPEN,
    FROM_STATE,
    GENERATION,
    HALF_OPEN_SUCCESSES,
    LIVE,
    LOST,
    NO_BLAME,
    OPENED,
    REASON,
    REASON_BLAME,
    REASON_FAILURE_TYPE,
    RESET_TIMEOUT,
    STATE,
    STATUS,
    SUCCESSES,
    THRESHOLD,
    TO_STATE,
    TOTAL_FAILURES,
    TOTAL_SUCCESSES,
    TOTAL_TRIPS,
    TRANSITION,
    TRANSITION_CIRCUIT,
    TRANSITION_FAILURES,
    TRANSITION_MET,
    TRANSITION_N,
    TRANSITION_PROBES,
    TRANSITION_TOTAL_TRIPS,
    TRANSITION_TRIPS,
    TRANSITION_WINDOW_FAILURES,
    TRANSITION_WINDOW_SLOW,
    TRIPS,
    VERSION,
    WINDOW_FAILURE,
    WINDOW_FAILURE_COUNT,
    WINDOW_MET,
    WINDOW_N,
    WINDOW_SLOW_COUNT,
    WINDOW_SUCCESS,
)
from .window import FAILURE as WINDOW_ENTRY_FAILURE
from .window import SLOW as WINDOW_ENTRY_SLOW
from .window import SUCCESS as WINDOW_ENTRY_SUCCESS
from .window import clear_window, enter, failure_would_meet


@step
def become(run, state, c, to_state, ts, reason, failure_type, blame) -> None:
    """Circuit `c` changes state at `ts`, with its counters as they are now."""
    circuits = state.circuits
    from_state = circuits[c, STATE]
    if state.scoring:
        observe_transition(state, run.scoring, c, from_state, to_state, ts)
    circuits[c, STATE] = to_state
    circuits[c, GENERATION] += 1
    if state.windows and (from_state == CLOSED or to_state == CLOSED):
        clear_window(state, c)  # the window holds the outcomes of one closed spell
    w = run.fleet.circuit_worker[c]
    workers = state.workers
    if w >= 0 and workers[w, EXISTS] == 1 and workers[w, LOST] == 0:
        home = workers[w, CLASS]
        state.classes[home, OPENED] += openish(to_state) - openish(from_state)
        state.classes[home, CLOSED_LIVE] += closed(to_state) - closed(from_state)
    if state.figures:
        mark_transition(run, state, c)
    if not state.derive:
        return
    transitioned(run, state, c, from_state, to_state, ts)
    row = log_row(state, TRANSITION, ts)
    if row < 0:
        return
    log = state.log
    log[row, TRANSITION_CIRCUIT] = c
    log[row, FROM_STATE] = from_state
    log[row, TO_STATE] = to_state
    log[row, TRANSITION_FAILURES] = circuits[c, CONSECUTIVE_FAILURES]
    log[row, TRANSITION_TRIPS] = circuits[c, TRIPS]
    log[row, TRANSITION_TOTAL_TRIPS] = circuits[c, TOTAL_TRIPS]
    log[row, TRANSITION_PROBES] = circuits[c, HALF_OPEN_SUCCESSES]
    log[row, REASON] = reason
    log[row, REASON_FAILURE_TYPE] = failure_type
    log[row, REASON_BLAME] = blame
    counters = state.counters  # the window's verdict, read when an outcome opened it
    log[row, TRANSITION_MET] = counters[WINDOW_MET]
    log[row, TRANSITION_N] = counters[WINDOW_N]
    log[row, TRANSITION_WINDOW_FAILURES] = counters[WINDOW_FAILURE_COUNT]
    log[row, TRANSITION_WINDOW_SLOW] = counters[WINDOW_SLOW_COUNT]
    state.log_floats[row, RESET_TIMEOUT] = state.reset_timeout_s[c]


@step
def _reset_counters(run, state, c) -> None:
    """Every counter but the totals back to 0, the timeout back to the configured one."""
    circuits = state.circuits
    circuits[c, CONSECUTIVE_FAILURES] = 0
    circuits[c, HALF_OPEN_SUCCESSES] = 0
    circuits[c, TRIPS] = 0
    version = state.counters[VERSION]
    state.reset_timeout_s[c] = run.rules.recovery_timeout_s[version, run.fleet.circuit_rank[c]]


@step
def close(run, state, c, ts, reason) -> None:
    _reset_counters(run, state, c)
    become(run, state, c, CLOSED, ts, reason, -1, NO_BLAME)


@step
def count_failure(run, state, c, ts, failure_type, blame) -> None:
    """`Circuit.on_failure` on `c` at `ts` and, when it opens, its half-open due moment."""
    if state.figures:
        mark(state, c)
    circuits = state.circuits
    circuits[c, TOTAL_FAILURES] += 1
    circuit_state = circuits[c, STATE]
    rank = run.fleet.circuit_rank[c]
    version = state.counters[VERSION]
    if circuit_state == CLOSED:
        circuits[c, CONSECUTIVE_FAILURES] += 1
        state.counters[WINDOW_MET] = 0
        met = 0
        if state.windows and run.rules.window_on[version, rank] == 1:
            met = enter(run, state, c, rank, ts, WINDOW_ENTRY_FAILURE)
        if circuits[c, CONSECUTIVE_FAILURES] >= run.rules.failure_threshold[version, rank]:
            reason = THRESHOLD  # (and whatever window rule it met)
        elif met != 0:
            reason = WINDOW_FAILURE
        else:
            return
    elif circuit_state == HALF_OPEN:
        reason = FAILED_HALF_OPEN
    else:
        return
    trip(run, state, c, ts, reason, failure_type, blame)


@step
def trip(run, state, c, ts, reason, failure_type, blame) -> None:
    """circuit.py `_open`: one more trip, the backed-off timeout, the half-open due moment."""
    circuits = state.circuits
    rank = run.fleet.circuit_rank[c]
    version = state.counters[VERSION]
    rules = run.rules
    trips = circuits[c, TRIPS] + 1
    circuits[c, TRIPS] = trips
    circuits[c, TOTAL_TRIPS] += 1
    circuits[c, HALF_OPEN_SUCCESSES] = 0
    step = trips - 1
    if step >= rules.backoff_len[version, rank]:
        if rules.backoff_done[version, rank] == 0:
            state.counters[STATUS] = BACKOFF_EXHAUSTED
            return
        step = rules.backoff_len[version, rank] - 1
    reset_timeout_s = rules.backoff_s[version, rank, step]
    state.reset_timeout_s[c] = reset_timeout_s
    due = round6(ts + reset_timeout_s * 1000.0, state.counters)
    circuits[c, DUE_MS] = ceil_ms(due)
    become(run, state, c, OPEN, ts, reason, failure_type, blame)
    push_due(state, due, sort_key(run.fleet.circuit_order[c], rank), c, circuits[c, GENERATION])


@inlined_step
def count_success(run, state, c, ts, duration) -> None:
    """`Circuit.on_success` on `c` at `ts`, of a call that took `duration` ms (-1: unknown):
    a window rule may open a CLOSED circuit (a worker's unless the fleet guard holds)."""
    if state.figures:
        mark(state, c)
    circuits = state.circuits
    circuits[c, TOTAL_SUCCESSES] += 1
    circuit_state = circuits[c, STATE]
    if circuit_state == CLOSED:
        circuits[c, CONSECUTIVE_FAILURES] = 0
        if state.windows:
            _success_in_window(run, state, c, ts, duration)
    elif circuit_state == HALF_OPEN:
        circuits[c, HALF_OPEN_SUCCESSES] += 1
        version = state.counters[VERSION]
        threshold = run.rules.success_threshold[version, run.fleet.circuit_rank[c]]
        if circuits[c, HALF_OPEN_SUCCESSES] >= threshold:
            close(run, state, c, ts, SUCCESSES)


@inlined_step
def _success_in_window(run, state, c, ts, duration) -> None:
    rank = run.fleet.circuit_rank[c]
    version = state.counters[VERSION]
    rules = run.rules
    if rules.window_on[version, rank] == 0:
        return
    slow_ms = rules.slow_ms[version, rank]
    slow = slow_ms > 0 and duration >= slow_ms
    met = enter(run, state, c, rank, ts, WINDOW_ENTRY_SLOW if slow else WINDOW_ENTRY_SUCCESS)
    if met == 0:
        return
    if rank == WORKER:  # the fleet guard holds back every worker opening
        w = run.fleet.circuit_worker[c]
        if _guard_holds(run, state, state.workers[w, CLASS]):
            return
    trip(run, state, c, ts, WINDOW_SUCCESS, -1, NO_BLAME)


@step
def operate(run, state, c, action, ts) -> None:
    """An operator's FORCE_OPEN or RESET of circuit `c` at `ts` (an unknown circuit is
    created: forcing a class open before it is ever seen works)."""
    if state.derive:
        create(run, state, c)
    if state.figures:
        mark(state, c)  # a RESET of a CLOSED circuit zeroes counters, silently
    circuit_state = state.circuits[c, STATE]
    if state.windows:
        clear_window(state, c)
    if action == FORCE_OPEN:
        if circuit_state == CLOSED:
            version = state.counters[VERSION]
            state.reset_timeout_s[c] = run.rules.recovery_timeout_s[
                version, run.fleet.circuit_rank[c]
            ]
        if circuit_state != FORCED_OPEN:
            become(run, state, c, FORCED_OPEN, ts, BY_FORCE_OPEN, -1, NO_BLAME)
    elif circuit_state == CLOSED:
        _reset_counters(run, state, c)
    else:
        close(run, state, c, ts, BY_RESET)


@step
def fleet_guard_holds(run, state, worker_circuit, hardware_class, ts) -> bool:
    """Would one more failure at `ts` open this worker's circuit, and would that leave more
    than max_open_fraction of its class's live workers open, in a class of at least
    guard_min_workers live workers? (Then the class is blamed, not the worker.)"""
    circuits = state.circuits
    version = state.counters[VERSION]
    rules = run.rules
    circuit_state = circuits[worker_circuit, STATE]
    would_open = circuit_state == HALF_OPEN
    if circuit_state == CLOSED:
        would_open = (
            circuits[worker_circuit, CONSECUTIVE_FAILURES] + 1
            >= rules.failure_threshold[version, WORKER]
        )
        if not would_open and state.windows and rules.window_on[version, WORKER] == 1:
            would_open = failure_would_meet(run, state, worker_circuit, WORKER, ts)
    if not would_open:
        return False
    return _guard_holds(run, state, hardware_class)


@step
def _guard_holds(run, state, hardware_class) -> bool:
    """workers.py `fleet_guard_holds` for a live worker of the class: would opening it leave
    more than max_open_fraction of the class's live workers open (a class big enough)?"""
    version = state.counters[VERSION]
    live = state.classes[hardware_class, LIVE]
    opened = state.classes[hardware_class, OPENED]
    rules = run.rules
    return live >= rules.guard_min[version] and (opened + 1) / live > rules.guard_fraction[version]
