"""The numba kernel of the compiled tuner: one configuration's replay of an encoded
history (`encode.py`), scored as it goes. Read beside `processors/core/` (the
specification) and `score.py`; `fast.py` is its Python side.

A replay visits only the inputs that `liveness.py` selected (outcomes, operators, worker
events that change the fleet guard's counts, inputs that reveal lost workers): the
others only advance the clock, and a half-opening they reveal takes effect at its own
due millisecond whichever input reveals it, so it is applied at the next visit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .encode import (
    FAILURE,
    FORCE_OPEN,
    OPERATOR,
    SUCCESS,
    TICK,
    WORKER_DISCONNECTION,
)

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN = 0, 1, 2, 3
BACKOFF_STEPS = 4096
# Circuit columns.
C_STATE, C_CF, C_HOS, C_TRIPS, C_GEN, C_DUE_MS, C_LAST = range(7)
# Worker columns.
W_EXISTS, W_LOST, W_CLASS = range(3)
# Heap entry columns beside the due moment: the tie-breaking id order, rank, seq, target, gen.
H_ORDER, H_RANK, H_SEQ, H_TARGET, H_GEN = range(5)
# Transition log columns.
T_TS, T_TO, T_PREV = range(3)
# Accumulators and scalars.
A_PROTECTED, A_WITHHELD, A_OPENINGS, A_DELAY_SUM, A_DELAYS, A_OPEN_MS, A_FLAPPING = range(7)
A_STATUS, A_HEAP, A_LOG, A_SEQ = range(7, 11)
STATUS_OK, STATUS_ROUNDING, STATUS_BACKOFF = 0, 1, 2
WHY = {
    STATUS_ROUNDING: "a due moment too close to a rounding tie",
    STATUS_BACKOFF: f"a circuit tripped more than {BACKOFF_STEPS} times in a row",
}


# --- the kernel -----------------------------------------------------------------------


@njit(cache=True, nogil=True)
def round6(x: float, acc: np.ndarray) -> float:
    """Python's `round(x, 6)` (correctly rounded), or a STATUS_ROUNDING flag when the
    float product cannot tell which way a near-tie goes."""
    if x >= 8589934592.0:  # 2^33: doubles are spaced wider than 1e-6, round() is x
        return x
    y = x * 1e6
    f = np.floor(y)
    d = y - f
    if abs(d - 0.5) <= abs(y) * 2.3e-16:  # within twice the product's rounding error
        acc[A_STATUS] = STATUS_ROUNDING
    return (f if d < 0.5 else f + 1.0) / 1e6


@njit(cache=True, nogil=True)
def _openish(state: int) -> int:
    return 1 if state == OPEN or state == FORCED_OPEN else 0  # noqa: SIM109 (numba)


@njit(cache=True, nogil=True)
def _ceil(x: float) -> int:
    return np.int64(np.ceil(x))


@njit(cache=True, nogil=True)
def _grow(a: np.ndarray, used: int) -> np.ndarray:
    if used < a.shape[0]:
        return a
    b = np.empty((a.shape[0] * 2, *a.shape[1:]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True, nogil=True)
def _before(hdue, hkey, i, j) -> bool:
    """Heap order: due moment, id, rank, push sequence."""
    if hdue[i] != hdue[j]:
        return hdue[i] < hdue[j]
    for col in range(3):
        if hkey[i, col] != hkey[j, col]:
            return hkey[i, col] < hkey[j, col]
    return False


@njit(cache=True, nogil=True)
def _swap(hdue, hkey, i, j) -> None:
    hdue[i], hdue[j] = hdue[j], hdue[i]
    for col in range(5):
        hkey[i, col], hkey[j, col] = hkey[j, col], hkey[i, col]


@njit(cache=True, nogil=True)
def _heap_push(hdue, hkey, acc, due, order, rank, target, gen):
    n = acc[A_HEAP]
    hdue = _grow(hdue, n)
    hkey = _grow(hkey, n)
    acc[A_SEQ] += 1
    hdue[n] = due
    hkey[n, H_ORDER] = order
    hkey[n, H_RANK] = rank
    hkey[n, H_SEQ] = acc[A_SEQ]
    hkey[n, H_TARGET] = target
    hkey[n, H_GEN] = gen
    acc[A_HEAP] = n + 1
    while n > 0:
        parent = (n - 1) // 2
        if not _before(hdue, hkey, n, parent):
            break
        _swap(hdue, hkey, n, parent)
        n = parent
    return hdue, hkey


@njit(cache=True, nogil=True)
def _heap_pop(hdue, hkey, acc, out_key) -> float:
    """Remove the first entry; its key columns into `out_key`, its due returned."""
    n = acc[A_HEAP] - 1
    due = hdue[0]
    out_key[:] = hkey[0]
    acc[A_HEAP] = n
    if n > 0:
        hdue[0] = hdue[n]
        hkey[0] = hkey[n]
        i = 0
        while True:
            left = 2 * i + 1
            if left >= n:
                break
            child = left
            if left + 1 < n and _before(hdue, hkey, left + 1, left):
                child = left + 1
            if not _before(hdue, hkey, child, i):
                break
            _swap(hdue, hkey, i, child)
            i = child
    return due


@njit(cache=True, nogil=True)
def _first_after(values, lo, hi, x, inclusive) -> int:
    """Index of the first value > x (>= x when `inclusive`) in values[lo:hi], sorted."""
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] < x or (not inclusive and values[mid] == x):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _detection_delay(c, opened, previous, ok_off, ok_ts, fail_off, fail_ts) -> int:
    start = previous
    last_ok = _first_after(ok_ts, ok_off[c], ok_off[c + 1], opened, True) - 1
    if last_ok >= ok_off[c] and ok_ts[last_ok] > start:
        start = ok_ts[last_ok]
    first = _first_after(fail_ts, fail_off[c], fail_off[c + 1], start, False)
    if first < fail_off[c + 1] and fail_ts[first] <= opened:
        return opened - fail_ts[first]
    return 0


@njit(cache=True, nogil=True)
def _become(c, to, ts, circ, log, acc, circuit_worker, work, cls, ok_off, ok_ts, fail_off, fail_ts):
    """One transition: logged, scored, and reflected in the fleet guard's counts."""
    frm = circ[c, C_STATE]
    last = circ[c, C_LAST]
    previous = -1
    if last >= 0:
        previous = log[last, T_TS]
        if _openish(log[last, T_TO]):
            acc[A_OPEN_MS] += max(0, ts - previous)
    if to == OPEN:
        acc[A_OPENINGS] += 1
        if frm == HALF_OPEN:
            acc[A_FLAPPING] += 1
        elif frm == CLOSED:
            acc[A_DELAY_SUM] += _detection_delay(c, ts, previous, ok_off, ok_ts, fail_off, fail_ts)
            acc[A_DELAYS] += 1
    w = circuit_worker[c]
    if w >= 0 and work[w, W_EXISTS] == 1 and work[w, W_LOST] == 0:
        cls[work[w, W_CLASS], 1] += _openish(to) - _openish(frm)
    n = acc[A_LOG]
    log = _grow(log, n)
    log[n, T_TS] = ts
    log[n, T_TO] = to
    log[n, T_PREV] = last
    acc[A_LOG] = n + 1
    circ[c, C_LAST] = n
    circ[c, C_STATE] = to
    circ[c, C_GEN] += 1
    return log


@njit(cache=True, nogil=True)
def _open_at(c, t, circ, log) -> bool:
    """Was circuit `c` open just before `t` (its newest transition with ts < t)?"""
    j = circ[c, C_LAST]
    while j >= 0 and log[j, T_TS] >= t:
        j = log[j, T_PREV]
    return j >= 0 and _openish(log[j, T_TO]) == 1


@njit(cache=True, nogil=True)
def _replay(
    kind, ts, worker, hw, tt, ftype,
    circuit_rank, circuit_order, circuit_worker, worker_circuit,
    ok_off, ok_ts, deferred, end_ts,
    v_kind, v_ts, v_worker, v_hw, v_tt, v_ftype, v_scored, vnow,
    lost_off, lost_due, lost_int, lost_tasks, final_now,
    backoff, backoff_len, backoff_done, failure_threshold, success_threshold,
    guard_fraction, guard_min, ranks, fail_off, fail_ts,
):  # fmt: skip
    n_circ = circuit_rank.shape[0]
    n_work = worker_circuit.shape[0]
    circ = np.zeros((n_circ, 7), np.int64)
    circ[:, C_LAST] = -1
    circ_due = np.zeros(n_circ)
    work = np.zeros((n_work, 3), np.int64)
    cls = np.zeros((n_circ, 2), np.int64)  # per hardware class: live workers, open ones
    log = np.empty((max(16, n_circ), 3), np.int64)
    hdue = np.empty(max(16, n_circ))
    hkey = np.empty((hdue.shape[0], 5), np.int64)
    popped = np.empty(5, np.int64)
    acc = np.zeros(11, np.int64)
    disconnection_rank = ranks[WORKER_DISCONNECTION]

    n_visit = v_kind.shape[0]
    for v in range(n_visit + 1):  # the last round: what inputs after the last visit revealed
        now = vnow[v] if v < n_visit else final_now
        # --- due moments, in order, all before the input itself: half-openings from the
        # heap merged with the lost workers this input reveals (already in due order).
        li = lost_off[v]
        le = lost_off[v + 1] if v < n_visit else li
        while True:
            from_heap = acc[A_HEAP] > 0 and hdue[0] <= now
            if li < le and from_heap:  # on a tie of due and id, circuits before lost workers
                from_heap = hdue[0] < lost_due[li] or (
                    hdue[0] == lost_due[li] and hkey[0, H_ORDER] <= lost_int[li, 0]
                )
            if from_heap:
                _heap_pop(hdue, hkey, acc, popped)
                target = popped[H_TARGET]
                if popped[H_GEN] == circ[target, C_GEN] and circ[target, C_STATE] == OPEN:
                    # Due after the clock before its revealing input, so at its own ms.
                    circ[target, C_HOS] = 0
                    log = _become(
                        target, HALF_OPEN, circ[target, C_DUE_MS],
                        circ, log, acc, circuit_worker, work, cls,
                        ok_off, ok_ts, fail_off, fail_ts,
                    )  # fmt: skip
                continue
            if li >= le:
                break
            # A lost worker: one WORKER_DISCONNECTION counted, without the guard.
            w = lost_int[li, 1]
            lost_ts = lost_int[li, 2]
            home = lost_int[li, 3]
            cw = worker_circuit[w]
            cls[home, 0] -= 1
            cls[home, 1] -= _openish(circ[cw, C_STATE])
            work[w, W_LOST] = 1
            if disconnection_rank == 2:
                for q in range(lost_int[li - 1, 4] if li > 0 else 0, lost_int[li, 4]):
                    log, hdue, hkey = _count_failure(
                        lost_tasks[q], lost_ts, circ, circ_due, log, hdue, hkey, acc,
                        circuit_rank, circuit_order, circuit_worker, work, cls,
                        backoff, backoff_len, backoff_done, failure_threshold,
                        ok_off, ok_ts, fail_off, fail_ts,
                    )  # fmt: skip
            else:
                log, hdue, hkey = _count_failure(
                    cw if disconnection_rank == 0 else home, lost_ts, circ, circ_due, log,
                    hdue, hkey, acc, circuit_rank, circuit_order, circuit_worker, work, cls,
                    backoff, backoff_len, backoff_done, failure_threshold,
                    ok_off, ok_ts, fail_off, fail_ts,
                )  # fmt: skip
            li += 1
        if acc[A_STATUS] != 0:
            return acc
        if v == n_visit:
            break
        # --- the input itself ----------------------------------------------------------
        k = v_kind[v]
        t = v_ts[v]
        if k == TICK:
            continue
        if k == OPERATOR:
            c = v_hw[v]
            state = circ[c, C_STATE]
            if v_ftype[v] == FORCE_OPEN:
                if state != FORCED_OPEN:
                    log = _become(
                        c, FORCED_OPEN, now, circ, log, acc, circuit_worker, work, cls,
                        ok_off, ok_ts, fail_off, fail_ts,
                    )  # fmt: skip
            else:
                circ[c, C_CF] = 0
                circ[c, C_HOS] = 0
                circ[c, C_TRIPS] = 0
                if state != CLOSED:
                    log = _become(
                        c, CLOSED, now, circ, log, acc, circuit_worker, work, cls,
                        ok_off, ok_ts, fail_off, fail_ts,
                    )  # fmt: skip
            continue
        w = v_worker[v]
        cw = worker_circuit[w]
        here = np.int64(v_hw[v])
        if work[w, W_EXISTS] == 0:
            work[w, W_EXISTS] = 1
            work[w, W_CLASS] = here
            cls[here, 0] += 1
            cls[here, 1] += _openish(circ[cw, C_STATE])
        else:
            if here != work[w, W_CLASS]:
                if work[w, W_LOST] == 0:
                    opened = _openish(circ[cw, C_STATE])
                    cls[work[w, W_CLASS], 0] -= 1
                    cls[work[w, W_CLASS], 1] -= opened
                    cls[here, 0] += 1
                    cls[here, 1] += opened
                work[w, W_CLASS] = here
            if work[w, W_LOST] == 1:
                work[w, W_LOST] = 0
                cls[here, 0] += 1
                cls[here, 1] += _openish(circ[cw, C_STATE])
        if k != SUCCESS and k != FAILURE:
            continue
        c_task = np.int64(v_tt[v])
        if k == SUCCESS:
            if v_scored[v] == 1 and (
                _open_at(cw, t, circ, log)
                or _open_at(here, t, circ, log)
                or _open_at(c_task, t, circ, log)
            ):
                acc[A_WITHHELD] += 1
            for c in (cw, here, c_task):
                state = circ[c, C_STATE]
                if state == CLOSED:
                    circ[c, C_CF] = 0
                elif state == HALF_OPEN:
                    circ[c, C_HOS] += 1
                    if circ[c, C_HOS] >= success_threshold[circuit_rank[c]]:
                        circ[c, C_CF] = 0
                        circ[c, C_HOS] = 0
                        circ[c, C_TRIPS] = 0
                        log = _become(
                            c, CLOSED, now, circ, log, acc, circuit_worker, work, cls,
                            ok_off, ok_ts, fail_off, fail_ts,
                        )  # fmt: skip
            continue
        rank = ranks[v_ftype[v]]
        c = cw if rank == 0 else (here if rank == 1 else c_task)
        if v_scored[v] == 1 and _open_at(c, t, circ, log):
            acc[A_PROTECTED] += 1
        if rank == 0:
            state = circ[c, C_STATE]
            would_open = state == HALF_OPEN or (
                state == CLOSED and circ[c, C_CF] + 1 >= failure_threshold[0]
            )
            live = cls[here, 0]
            if would_open and live >= guard_min and (cls[here, 1] + 1) / live > guard_fraction:
                c = here  # the fleet guard: most of the class fails together, blame it
        log, hdue, hkey = _count_failure(
            c, now, circ, circ_due, log, hdue, hkey, acc,
            circuit_rank, circuit_order, circuit_worker, work, cls,
            backoff, backoff_len, backoff_done, failure_threshold,
            ok_off, ok_ts, fail_off, fail_ts,
        )  # fmt: skip
        if acc[A_STATUS] != 0:
            return acc

    # Outcomes the core ignored as repeats but the score counts: answered on the whole log.
    for i in deferred:
        t = ts[i]
        cw = worker_circuit[worker[i]]
        if kind[i] == SUCCESS:
            withheld = _open_at(cw, t, circ, log) or _open_at(hw[i], t, circ, log)
            if withheld or _open_at(tt[i], t, circ, log):
                acc[A_WITHHELD] += 1
        else:
            rank = ranks[ftype[i]]
            c = cw if rank == 0 else (hw[i] if rank == 1 else tt[i])
            if _open_at(c, t, circ, log):
                acc[A_PROTECTED] += 1
    for c in range(n_circ):
        last = circ[c, C_LAST]
        if last >= 0 and _openish(log[last, T_TO]):
            at = log[last, T_TS]
            acc[A_OPEN_MS] += max(end_ts, at) - at
    return acc


@njit(cache=True, nogil=True)
def _count_failure(
    c, ts, circ, circ_due, log, hdue, hkey, acc,
    circuit_rank, circuit_order, circuit_worker, work, cls,
    backoff, backoff_len, backoff_done, failure_threshold,
    ok_off, ok_ts, fail_off, fail_ts,
):  # fmt: skip
    """A failure counted on `c` at `ts`: it may open the circuit (CLOSED at the threshold,
    or HALF_OPEN), which schedules its half-open due moment."""
    state = circ[c, C_STATE]
    rank = circuit_rank[c]
    if state == CLOSED:
        circ[c, C_CF] += 1
        if circ[c, C_CF] < failure_threshold[rank]:
            return log, hdue, hkey
    elif state != HALF_OPEN:
        return log, hdue, hkey
    trips = circ[c, C_TRIPS] + 1
    circ[c, C_TRIPS] = trips
    circ[c, C_HOS] = 0
    step = trips - 1
    if step >= backoff_len[rank]:
        if backoff_done[rank] == 0:
            acc[A_STATUS] = STATUS_BACKOFF
            return log, hdue, hkey
        step = backoff_len[rank] - 1
    due = round6(ts + backoff[rank, step], acc)
    circ_due[c] = due
    circ[c, C_DUE_MS] = _ceil(due)
    log = _become(
        c, OPEN, ts, circ, log, acc, circuit_worker, work, cls, ok_off, ok_ts, fail_off, fail_ts
    )
    hdue, hkey = _heap_push(hdue, hkey, acc, due, circuit_order[c], rank, c, circ[c, C_GEN])
    return log, hdue, hkey
