"""Figures marks in the compiled twin (fleet.py `_marked`, `_mark_transition` and
`_publish_figures`): the circuits whose figures changed since the last TICK, and at a TICK
one FIGURES log row per marked circuit, in (kind rank, id) order. Only a state with
`figures` keeps them; `materialize.py` turns the rows into `circuit_figures` records."""

from __future__ import annotations

from .codes import CLOSED, HARDWARE_CLASS, WORKER, openish
from .jit import inlined_step, step
from .log import log_row
from .state import (
    CLASS,
    CONSECUTIVE_FAILURES,
    EXISTS,
    FIGURES,
    FIGURES_AVAILABLE,
    FIGURES_CIRCUIT,
    FIGURES_CLASS,
    FIGURES_FAILURES,
    FIGURES_LIVE,
    FIGURES_PROBES,
    FIGURES_STATE,
    FIGURES_SUCCESSES,
    FIGURES_TOTAL_FAILURES,
    FIGURES_TOTAL_TRIPS,
    FIGURES_TRIPS,
    FIGURES_WORKERS,
    HALF_OPEN_SUCCESSES,
    LIVE,
    LOST,
    MARKED,
    MARKED_SIZE,
    STATE,
    TOTAL_FAILURES,
    TOTAL_SUCCESSES,
    TOTAL_TRIPS,
    TRIPS,
)


@inlined_step
def mark(state, c) -> None:
    """Circuit `c`'s figures changed (or it was created)."""
    circuits = state.circuits
    if circuits[c, MARKED] == 1:
        return
    circuits[c, MARKED] = 1
    n = state.counters[MARKED_SIZE]
    state.marked[n] = c
    state.counters[MARKED_SIZE] = n + 1


@step
def mark_transition(run, state, c) -> None:
    """Circuit `c` changed state: its figures, and the availability it decides (a worker's
    counts in its class's capacity; a class's, in each member's `available`)."""
    mark(state, c)
    fleet = run.fleet
    rank = fleet.circuit_rank[c]
    if rank == WORKER:
        w = fleet.circuit_worker[c]
        if w >= 0 and state.workers[w, EXISTS] == 1:
            mark(state, state.workers[w, CLASS])
    elif rank == HARDWARE_CLASS:
        start = fleet.class_offsets[c]
        for j in range(start, start + state.member_counts[c]):
            mark(state, fleet.worker_circuit[state.members[j]])


@step
def _sift(values, start, end) -> None:
    root = start
    while 2 * root + 1 < end:
        child = 2 * root + 1
        if child + 1 < end and values[child] < values[child + 1]:
            child += 1
        if values[root] >= values[child]:
            return
        values[root], values[child] = values[child], values[root]
        root = child


@step
def heapsort(values, n) -> None:
    """values[:n] in increasing order, in place (the kernel allocates nothing)."""
    for start in range(n // 2 - 1, -1, -1):
        _sift(values, start, n)
    for end in range(n - 1, 0, -1):
        values[0], values[end] = values[end], values[0]
        _sift(values, 0, end)


@step
def _available(state, w, worker_circuit) -> int:
    """view.py `available`: live, its own circuit CLOSED, its class's not open."""
    workers, circuits = state.workers, state.circuits
    if workers[w, LOST] == 1 or circuits[worker_circuit, STATE] != CLOSED:
        return 0
    return 1 - openish(circuits[workers[w, CLASS], STATE])


@step
def publish_figures(run, state, ts) -> None:
    """At a TICK: one FIGURES row per marked circuit, in (kind rank, id) order; the marks
    cleared."""
    counters = state.counters
    n = counters[MARKED_SIZE]
    if n == 0:
        return
    fleet = run.fleet
    circuits, workers, log = state.circuits, state.workers, state.log
    marked = state.marked
    n_circ = circuits.shape[0]
    for j in range(n):  # (kind rank, id order, circuit): sorted, the circuit recovered
        c = marked[j]
        marked[j] = (fleet.circuit_rank[c] * n_circ + fleet.circuit_order[c]) * n_circ + c
    heapsort(marked, n)
    for j in range(n):
        c = marked[j] % n_circ
        circuits[c, MARKED] = 0
        row = log_row(state, FIGURES, ts)
        if row < 0:
            return
        log[row, FIGURES_CIRCUIT] = c
        log[row, FIGURES_STATE] = circuits[c, STATE]
        log[row, FIGURES_FAILURES] = circuits[c, CONSECUTIVE_FAILURES]
        log[row, FIGURES_PROBES] = circuits[c, HALF_OPEN_SUCCESSES]
        log[row, FIGURES_TRIPS] = circuits[c, TRIPS]
        log[row, FIGURES_TOTAL_TRIPS] = circuits[c, TOTAL_TRIPS]
        log[row, FIGURES_SUCCESSES] = circuits[c, TOTAL_SUCCESSES]
        log[row, FIGURES_TOTAL_FAILURES] = circuits[c, TOTAL_FAILURES]
        rank = fleet.circuit_rank[c]
        if rank == WORKER:
            w = fleet.circuit_worker[c]
            if w >= 0 and workers[w, EXISTS] == 1:
                log[row, FIGURES_CLASS] = workers[w, CLASS]
                log[row, FIGURES_LIVE] = 1 - workers[w, LOST]
                log[row, FIGURES_AVAILABLE] = _available(state, w, c)
            else:
                log[row, FIGURES_CLASS] = -1
        elif rank == HARDWARE_CLASS:
            start = fleet.class_offsets[c]
            available = 0
            for j in range(start, start + state.member_counts[c]):
                m = state.members[j]
                available += _available(state, m, fleet.worker_circuit[m])
            log[row, FIGURES_WORKERS] = state.member_counts[c]
            log[row, FIGURES_LIVE] = state.classes[c, LIVE]
            log[row, FIGURES_AVAILABLE] = available
    counters[MARKED_SIZE] = 0
