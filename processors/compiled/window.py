"""A circuit's sliding window of outcomes in the compiled twin (window.py `OutcomeWindow`:
the failure-rate and slow-call rules, after resilience4j).

Each circuit has a ring of (decision ms, outcome) in `State.window_ts` / `window_kind`, at
`State.window_offsets` (sized in `runs.py` so it never fills: by the outcomes the circuit
can ever count, and by the largest count window plus one). An outcome enters at its
decision time (monotonic); the rules are judged each time one enters. The verdict of the
outcome being counted (which rules it met, and the counts) waits in the counters for the
transition it may cause (`circuits.py`), which logs it for `materialize.py`.
"""

from __future__ import annotations

from .jit import inlined_step, step
from .state import (
    VERSION,
    WINDOW_FAILURE_COUNT,
    WINDOW_FAILURES,
    WINDOW_HEAD,
    WINDOW_MET,
    WINDOW_N,
    WINDOW_SIZE,
    WINDOW_SLOW,
    WINDOW_SLOW_COUNT,
)

# What an entry is (window.py), and the rules a judgment met (bits).
SUCCESS, FAILURE, SLOW = 0, 1, 2
FAILURE_RATE_MET, SLOW_RATE_MET = 1, 2


@inlined_step
def clear_window(state, c) -> None:
    """An operator's RESET or FORCE_OPEN, or a transition from or to CLOSED: a new spell."""
    circuits = state.circuits
    circuits[c, WINDOW_HEAD] = 0
    circuits[c, WINDOW_SIZE] = 0
    circuits[c, WINDOW_FAILURES] = 0
    circuits[c, WINDOW_SLOW] = 0


@inlined_step
def _judge(run, version, rank, n, failures, slow) -> int:
    """window.py `judge`: the rules met by these counts (bits)."""
    rules = run.rules
    if n < rules.minimum_calls[version, rank]:
        return 0
    met = 0
    rate = rules.failure_rate[version, rank]
    if rate > 0 and failures * 100.0 >= rate * n:
        met |= FAILURE_RATE_MET
    if rules.slow_ms[version, rank] > 0 and slow * 100.0 >= rules.slow_rate[version, rank] * n:
        met |= SLOW_RATE_MET
    return met


@inlined_step
def _drop_oldest(state, c, start, capacity) -> None:
    circuits = state.circuits
    head = circuits[c, WINDOW_HEAD]
    kind = state.window_kind[start + head]
    if kind == FAILURE:
        circuits[c, WINDOW_FAILURES] -= 1
    elif kind == SLOW:
        circuits[c, WINDOW_SLOW] -= 1
    circuits[c, WINDOW_HEAD] = head + 1 if head + 1 < capacity else 0
    circuits[c, WINDOW_SIZE] -= 1


@inlined_step
def enter(run, state, c, rank, ts, outcome) -> int:
    """window.py `enter`: one outcome added, the oldest aged out, and the rules judged; the
    verdict (bits) returned and left in the counters with the counts it judged."""
    circuits, counters = state.circuits, state.counters
    version = counters[VERSION]
    start = state.window_offsets[c]
    capacity = state.window_offsets[c + 1] - start
    size = circuits[c, WINDOW_SIZE]
    at = circuits[c, WINDOW_HEAD] + size
    if at >= capacity:
        at -= capacity
    state.window_ts[start + at] = ts
    state.window_kind[start + at] = outcome
    circuits[c, WINDOW_SIZE] = size + 1
    if outcome == FAILURE:
        circuits[c, WINDOW_FAILURES] += 1
    elif outcome == SLOW:
        circuits[c, WINDOW_SLOW] += 1
    count = run.rules.window_count[version, rank]
    if count > 0:
        while circuits[c, WINDOW_SIZE] > count:
            _drop_oldest(state, c, start, capacity)
    else:
        horizon = ts - run.rules.window_ms[version, rank]
        while state.window_ts[start + circuits[c, WINDOW_HEAD]] <= horizon:
            _drop_oldest(state, c, start, capacity)
    n, failures = circuits[c, WINDOW_SIZE], circuits[c, WINDOW_FAILURES]
    slow = circuits[c, WINDOW_SLOW]
    met = _judge(run, version, rank, n, failures, slow)
    counters[WINDOW_MET] = met
    counters[WINDOW_N] = n
    counters[WINDOW_FAILURE_COUNT] = failures
    counters[WINDOW_SLOW_COUNT] = slow
    return met


@step
def failure_would_meet(run, state, c, rank, ts) -> bool:
    """window.py `failure_would_meet`: would one more failure at `ts` meet a rule? (Nothing
    changes: the fleet guard asks before the failure is counted anywhere.)"""
    circuits = state.circuits
    version = state.counters[VERSION]
    start = state.window_offsets[c]
    capacity = state.window_offsets[c + 1] - start
    size, head = circuits[c, WINDOW_SIZE], circuits[c, WINDOW_HEAD]
    count = run.rules.window_count[version, rank]
    if count > 0:
        dropped = max(size + 1 - count, 0)
    else:
        horizon = ts - run.rules.window_ms[version, rank]
        dropped = 0
        while dropped < size:
            at = head + dropped
            if at >= capacity:
                at -= capacity
            if state.window_ts[start + at] > horizon:
                break
            dropped += 1
    n = size + 1 - dropped
    failures, slow = circuits[c, WINDOW_FAILURES] + 1, circuits[c, WINDOW_SLOW]
    for j in range(min(dropped, size)):
        at = head + j
        if at >= capacity:
            at -= capacity
        kind = state.window_kind[start + at]
        if kind == FAILURE:
            failures -= 1
        elif kind == SLOW:
            slow -= 1
    return _judge(run, version, rank, n, failures, slow) != 0
