"""The compiled core's state and its small steps: circuits (circuit.py), class members
and the target worker (workers.py), and the derived-record log they write. Column and
code names are shared with `kernel.py` (the loop) and `materialize.py` (the log's reader).
"""

from __future__ import annotations

from numba import njit

from faultstream.processors.offline.tune.kernel import (
    A_LOG,
    A_STATUS,
    STATUS_BACKOFF,
    STATUS_ROUNDING,
    _ceil,
    round6,
)

from .heap import _push, _sort_key

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN = 0, 1, 2, 3
LOST = 3  # the heap rank of a lost-worker timer (after the circuit kinds)
STATUS_LOG_FULL = 3
WHY = {
    STATUS_ROUNDING: "a due moment too close to a rounding tie",
    STATUS_BACKOFF: "a circuit tripped more times in a row than the backoff table holds",
}
# Circuit columns.
C_STATE, C_CF, C_HOS, C_TRIPS, C_TOTAL_TRIPS, C_GEN, C_DUE_MS = range(7)
# Worker columns.
W_EXISTS, W_LOST, W_CLASS, W_LAST_TS, W_TIMER_GEN, W_STARTED = range(6)
# Log columns: what every row has, then a payload that depends on its type.
L_TYPE, L_REC, L_TS, L_VER = range(4)
L_A, L_B, L_C, L_D, L_E, L_F, L_G, L_H, L_I, L_J = range(4, 14)
LOG_COLUMNS = 14
T_TRANSITION, T_COMMAND, T_MIGRATION = 0, 1, 2
# A transition: A circuit, B from, C to, D consecutive_failures, E trips, F total_trips,
# G half_open_successes, H reason, I failure type, J reason base; float 0 reset_timeout_s.
R_THRESHOLD, R_FAILED_HALF_OPEN, R_SUCCESS, R_HALF_OPEN, R_FORCE_OPEN, R_RESET = range(6)
B_NONE, B_TYPE, B_GUARD, B_LOST = range(4)
# A failure's command: A strategy, B target worker, C has checkpoint, D checkpoint, E
# guarded, F/G/H worker/class/task-type circuit states, I/J class/task-type due ms; float
# 0/1 class/task-type reset_timeout_s. A migration: A strategy, B target, C/D checkpoint,
# E the TASK_STARTED record, F worker, G due ms.


@njit(cache=True, nogil=True)
def _openish(state: int) -> int:
    return 1 if state == OPEN or state == FORCED_OPEN else 0  # noqa: SIM109 (numba)


@njit(cache=True, nogil=True)
def _row(log, acc, kind, rec, ts, ver) -> int:
    """A new log row's index, or -1 (and STATUS_LOG_FULL) when the log is full."""
    n = acc[A_LOG]
    if n >= log.shape[0]:
        acc[A_STATUS] = STATUS_LOG_FULL
        return -1
    acc[A_LOG] = n + 1
    log[n, L_TYPE] = kind
    log[n, L_REC] = rec
    log[n, L_TS] = ts
    log[n, L_VER] = ver
    return n


# --- circuits (circuit.py) ---------------------------------------------------------------


@njit(cache=True, nogil=True)
def _become(
    c, to, ts, rec, ver, reason, ftype, base, circ, rto, work, cls, circuit_worker, log, logf, acc
):
    """One change of state, logged with the counters as they are now; the fleet guard's
    count of open workers per class follows it."""
    frm = circ[c, C_STATE]
    circ[c, C_STATE] = to
    circ[c, C_GEN] += 1
    w = circuit_worker[c]
    if w >= 0 and work[w, W_EXISTS] == 1 and work[w, W_LOST] == 0:
        cls[work[w, W_CLASS], 1] += _openish(to) - _openish(frm)
    n = _row(log, acc, T_TRANSITION, rec, ts, ver)
    if n < 0:
        return
    log[n, L_A] = c
    log[n, L_B] = frm
    log[n, L_C] = to
    log[n, L_D] = circ[c, C_CF]
    log[n, L_E] = circ[c, C_TRIPS]
    log[n, L_F] = circ[c, C_TOTAL_TRIPS]
    log[n, L_G] = circ[c, C_HOS]
    log[n, L_H] = reason
    log[n, L_I] = ftype
    log[n, L_J] = base
    logf[n, 0] = rto[c]


@njit(cache=True, nogil=True)
def _close(
    c,
    ts,
    rec,
    ver,
    reason,
    circ,
    rto,
    work,
    cls,
    circuit_worker,
    circuit_rank,
    recovery_s,
    log,
    logf,
    acc,
):
    circ[c, C_CF] = 0
    circ[c, C_HOS] = 0
    circ[c, C_TRIPS] = 0
    rto[c] = recovery_s[ver, circuit_rank[c]]
    _become(
        c,
        CLOSED,
        ts,
        rec,
        ver,
        reason,
        -1,
        B_NONE,
        circ,
        rto,
        work,
        cls,
        circuit_worker,
        log,
        logf,
        acc,
    )


@njit(cache=True, nogil=True)
def _count_failure(
    c, ts, rec, ver, ftype, base, circ, rto, work, cls, hdue, hk, log, logf, acc,
    circuit_rank, circuit_order, circuit_worker, failure_threshold, backoff_s, backoff_len,
    backoff_done,
):  # fmt: skip
    """`Circuit.on_failure` and, when it opens, its half-open due moment on the heap."""
    state = circ[c, C_STATE]
    rank = circuit_rank[c]
    if state == CLOSED:
        circ[c, C_CF] += 1
        if circ[c, C_CF] < failure_threshold[ver, rank]:
            return
        reason = R_THRESHOLD
    elif state == HALF_OPEN:
        reason = R_FAILED_HALF_OPEN
    else:
        return
    trips = circ[c, C_TRIPS] + 1
    circ[c, C_TRIPS] = trips
    circ[c, C_TOTAL_TRIPS] += 1
    circ[c, C_HOS] = 0
    step = trips - 1
    if step >= backoff_len[ver, rank]:
        if backoff_done[ver, rank] == 0:
            acc[A_STATUS] = STATUS_BACKOFF
            return
        step = backoff_len[ver, rank] - 1
    rto[c] = backoff_s[ver, rank, step]
    due = round6(ts + rto[c] * 1000.0, acc)
    circ[c, C_DUE_MS] = _ceil(due)
    _become(
        c,
        OPEN,
        ts,
        rec,
        ver,
        reason,
        ftype,
        base,
        circ,
        rto,
        work,
        cls,
        circuit_worker,
        log,
        logf,
        acc,
    )
    _push(hdue, hk, acc, due, _sort_key(circuit_order[c], rank), c, circ[c, C_GEN])


# --- workers (workers.py) ----------------------------------------------------------------


@njit(cache=True, nogil=True)
def _join(members, n_members, class_offsets, worker_order, c, w) -> None:
    """Insert `w` into class `c`'s members, kept in id order."""
    start = class_offsets[c]
    end = start + n_members[c]
    at = end
    while at > start and worker_order[members[at - 1]] > worker_order[w]:
        members[at] = members[at - 1]
        at -= 1
    members[at] = w
    n_members[c] += 1


@njit(cache=True, nogil=True)
def _leave(members, n_members, class_offsets, c, w) -> None:
    start = class_offsets[c]
    end = start + n_members[c]
    at = start
    while members[at] != w:
        at += 1
    for j in range(at, end - 1):
        members[j] = members[j + 1]
    n_members[c] -= 1


@njit(cache=True, nogil=True)
def _pick_target(c, failed, members, n_members, class_offsets, work, circ, worker_circuit) -> int:
    """`pick_target`: the healthiest live CLOSED worker of class `c` but `failed`, ties by
    id (the first of the id-ordered members with the fewest consecutive failures, capped
    at 3 as health is); -1 for none."""
    if c < 0:
        return -1
    best = -1
    best_failures = 3
    for j in range(class_offsets[c], class_offsets[c] + n_members[c]):
        m = members[j]
        cm = worker_circuit[m]
        if work[m, W_LOST] == 1 or circ[cm, C_STATE] != CLOSED or m == failed:
            continue
        failures = circ[cm, C_CF]
        if failures == 0:
            return m
        failures = min(failures, 3)
        if best < 0 or failures < best_failures:
            best = m
            best_failures = failures
    return best


@njit(cache=True, nogil=True)
def _sort_unique_by(values, n, order) -> None:
    """Insertion sort of values[:n] by order[value] (a worker's few task types)."""
    for a in range(1, n):
        v = values[a]
        b = a
        while b > 0 and order[values[b - 1]] > order[v]:
            values[b] = values[b - 1]
            b -= 1
        values[b] = v


@njit(cache=True, nogil=True)
def _unique(values, n) -> int:
    kept = 0
    for a in range(n):
        if kept == 0 or values[kept - 1] != values[a]:
            values[kept] = values[a]
            kept += 1
    return kept
