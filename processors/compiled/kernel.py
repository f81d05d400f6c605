"""The compiled core: `FleetCore.process` over every input of an encoded history
(`encode.py`), as one numba loop that writes a compact log of the derived records
(`materialize.py` turns it into the records themselves). Read beside
`processors/core/fleet.py` and `recovery.py`: the specification; the sections match.

No strings here: circuits, workers, tasks and settings versions are indices; a reason is
a code with its arguments. The steps on circuits and workers are in `state.py`, a
FAILURE's count and command in `failure.py`, a lost worker in `lost.py`, the due-moment
heap (ordered as the core's: due moment, id, rank, push order) in `heap.py`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from faultstream.processors.offline.tune.encode import (
    CHECKPOINT,
    FAILURE,
    FORCE_OPEN,
    OPERATOR,
    SUCCESS,
    TASK_STARTED,
)
from faultstream.processors.offline.tune.kernel import A_HEAP, A_STATUS, round6

from .encode import CONFIG
from .failure import _on_failure
from .heap import K_GEN, K_KEY, K_TARGET, _pop, _push, _replace_first, _sort_key
from .lost import _lose_worker, _rearm_lost_timers
from .state import (
    B_NONE,
    C_CF,
    C_DUE_MS,
    C_GEN,
    C_HOS,
    C_STATE,
    C_TRIPS,
    CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    LOST,
    OPEN,
    R_FORCE_OPEN,
    R_HALF_OPEN,
    R_RESET,
    R_SUCCESS,
    W_CLASS,
    W_EXISTS,
    W_LAST_TS,
    W_LOST,
    W_STARTED,
    W_TIMER_GEN,
    _become,
    _close,
    _join,
    _leave,
    _openish,
)  # fmt: skip

# --- the loop ------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def replay(
    kind, ts, skip, worker, hw, tt, ftype, pair, attempt, task_key, checkpoint_seq, rungs,
    config_version, circuit_rank, circuit_order, circuit_worker, worker_circuit,
    worker_order, pair_task_key, worker_pairs_offsets, worker_pairs, n_task_keys,
    class_offsets, cpu_circuit, ladders, failure_threshold, success_threshold,
    recovery_s, backoff_s, backoff_len, backoff_done, ranks, max_retries, heartbeat_s,
    heartbeat_ms, guard_fraction, guard_min, log, logf, heap_capacity,
):  # fmt: skip
    """Every input in order; returns acc (A_STATUS, A_LOG = rows written). On a status
    other than 0 the log is incomplete: the caller falls back or retries a bigger log."""
    n = kind.shape[0]
    n_circ = circuit_rank.shape[0]
    n_work = worker_circuit.shape[0]
    n_pairs = pair_task_key.shape[0]
    circ = np.zeros((n_circ, 7), np.int64)
    rto = np.zeros(n_circ)
    work = np.zeros((n_work, 6), np.int64)
    cls = np.zeros((n_circ, 2), np.int64)  # per class circuit: live workers, open ones
    members = np.empty(class_offsets[n_circ], np.int64)
    n_members = np.zeros(n_circ, np.int64)
    started = np.zeros(n_pairs, np.int8)
    started_attempt = np.zeros(n_pairs, np.int64)
    started_tt = np.zeros(n_pairs, np.int64)
    started_rec = np.zeros(n_pairs, np.int64)
    has_checkpoint = np.zeros(n_task_keys, np.int8)
    checkpoint = np.zeros(n_task_keys, np.int64)
    hdue = np.empty(heap_capacity)
    hk = np.empty((heap_capacity, 4), np.int64)
    popped = np.empty(4, np.int64)
    waiting_due = np.empty(n_work + 1)  # lost timers due exactly now: back after the reveal
    waiting_key = np.empty((n_work + 1, 4), np.int64)
    task_types = np.empty(n_circ + 1, np.int64)
    acc = np.zeros(11, np.int64)
    ver = 0
    now = 0

    for i in range(n):
        if skip[i] == 1:
            continue
        k = kind[i]
        before = now
        if ts[i] > now:
            now = ts[i]

        # --- due moments (fleet.py `_reveal_due`), all before the input itself ----------
        if acc[A_HEAP] > 0 and hdue[0] <= now:
            n_waiting = 0
            while acc[A_HEAP] > 0 and hdue[0] <= now:
                target = hk[0, K_TARGET]
                if hk[0, K_KEY] & 3 == LOST and hk[0, K_GEN] == work[target, W_TIMER_GEN]:
                    current = round6(work[target, W_LAST_TS] + heartbeat_ms[ver], acc)
                    if work[target, W_LOST] == 0 and current > hdue[0]:
                        # Seen since the timer was set: wait for the newer due (the
                        # commonest case, re-armed in place).
                        work[target, W_TIMER_GEN] += 1
                        _replace_first(
                            hdue, hk, acc, current, hk[0, K_KEY], target, work[target, W_TIMER_GEN]
                        )
                        continue
                due = _pop(hdue, hk, acc, popped)
                if popped[K_KEY] & 3 != LOST:
                    if popped[K_GEN] == circ[target, C_GEN] and circ[target, C_STATE] == OPEN:
                        circ[target, C_HOS] = 0
                        at = max(circ[target, C_DUE_MS], before)
                        _become(
                            target, HALF_OPEN, at, i, ver, R_HALF_OPEN, -1, B_NONE, circ, rto,
                            work, cls, circuit_worker, log, logf, acc,
                        )  # fmt: skip
                    continue
                w = target
                if popped[K_GEN] != work[w, W_TIMER_GEN] or work[w, W_LOST] == 1:
                    continue
                current = round6(work[w, W_LAST_TS] + heartbeat_ms[ver], acc)
                if current > due:  # seen since the timer was set: wait for the newer due
                    work[w, W_TIMER_GEN] += 1
                    _push(
                        hdue, hk, acc, current, _sort_key(worker_order[w], LOST), w,
                        work[w, W_TIMER_GEN],
                    )  # fmt: skip
                elif due >= now:
                    waiting_due[n_waiting] = due
                    waiting_key[n_waiting] = popped
                    n_waiting += 1
                else:  # a lost worker (fleet.py `_lose_worker`)
                    _lose_worker(
                        w, due, before, i, ver, circ, rto, work, cls, hdue, hk, log, logf,
                        acc, started, started_attempt, started_tt, started_rec,
                        has_checkpoint, checkpoint, members, n_members, task_types,
                        circuit_rank, circuit_order, circuit_worker, worker_circuit,
                        worker_pairs_offsets, worker_pairs, pair_task_key, class_offsets,
                        ranks, max_retries, failure_threshold, backoff_s, backoff_len,
                        backoff_done,
                    )  # fmt: skip
                if acc[A_STATUS] != 0:
                    return acc
            for j in range(n_waiting):
                _push(
                    hdue, hk, acc, waiting_due[j], waiting_key[j, K_KEY], waiting_key[j, K_TARGET],
                    waiting_key[j, K_GEN],
                )  # fmt: skip
            if acc[A_STATUS] != 0:
                return acc

        if k > FAILURE:
            # --- control records -------------------------------------------------------
            if k == OPERATOR:
                c = hw[i]
                state = circ[c, C_STATE]
                if ftype[i] == FORCE_OPEN:
                    if state == CLOSED:
                        rto[c] = recovery_s[ver, circuit_rank[c]]
                    if state != FORCED_OPEN:
                        _become(
                            c, FORCED_OPEN, now, i, ver, R_FORCE_OPEN, -1, B_NONE, circ, rto, work,
                            cls, circuit_worker, log, logf, acc,
                        )  # fmt: skip
                elif state == CLOSED:
                    circ[c, C_CF] = 0
                    circ[c, C_HOS] = 0
                    circ[c, C_TRIPS] = 0
                    rto[c] = recovery_s[ver, circuit_rank[c]]
                else:
                    _close(
                        c, now, i, ver, R_RESET, circ, rto, work, cls, circuit_worker,
                        circuit_rank, recovery_s, log, logf, acc,
                    )  # fmt: skip
            elif k == CONFIG and config_version[i] >= 0:
                old_heartbeat = heartbeat_s[ver]
                ver = config_version[i]
                if heartbeat_s[ver] != old_heartbeat:
                    _rearm_lost_timers(hdue, hk, acc, work, worker_order, heartbeat_ms[ver])
            if acc[A_STATUS] != 0:
                return acc
            continue  # a TICK yields only what it revealed

        # --- worker events: the worker is alive (fleet.py `process`) -----------------------
        w = worker[i]
        here = np.int64(hw[i])
        cw = worker_circuit[w]
        if work[w, W_EXISTS] == 0:
            work[w, W_EXISTS] = 1
            work[w, W_CLASS] = here
            work[w, W_LAST_TS] = ts[i]
            _join(members, n_members, class_offsets, worker_order, here, w)
            cls[here, 0] += 1
            cls[here, 1] += _openish(circ[cw, C_STATE])
            due = round6(ts[i] + heartbeat_ms[ver], acc)
            work[w, W_TIMER_GEN] += 1
            _push(hdue, hk, acc, due, _sort_key(worker_order[w], LOST), w, work[w, W_TIMER_GEN])
        else:
            if here != work[w, W_CLASS]:
                old = work[w, W_CLASS]
                _leave(members, n_members, class_offsets, old, w)
                _join(members, n_members, class_offsets, worker_order, here, w)
                if work[w, W_LOST] == 0:
                    opened = _openish(circ[cw, C_STATE])
                    cls[old, 0] -= 1
                    cls[old, 1] -= opened
                    cls[here, 0] += 1
                    cls[here, 1] += opened
                work[w, W_CLASS] = here
            if ts[i] > work[w, W_LAST_TS]:
                work[w, W_LAST_TS] = ts[i]
            if work[w, W_LOST] == 1:
                work[w, W_LOST] = 0
                cls[here, 0] += 1
                cls[here, 1] += _openish(circ[cw, C_STATE])
                due = round6(work[w, W_LAST_TS] + heartbeat_ms[ver], acc)
                work[w, W_TIMER_GEN] += 1
                _push(hdue, hk, acc, due, _sort_key(worker_order[w], LOST), w, work[w, W_TIMER_GEN])

        if k == TASK_STARTED:
            p = pair[i]
            if started[p] == 0:
                started[p] = 1
                work[w, W_STARTED] += 1
            started_attempt[p] = attempt[i]
            started_tt[p] = tt[i]
            started_rec[p] = i
        elif k == CHECKPOINT:
            key = task_key[i]
            if has_checkpoint[key] == 0 or checkpoint_seq[i] > checkpoint[key]:
                has_checkpoint[key] = 1
                checkpoint[key] = checkpoint_seq[i]
        elif k == SUCCESS:
            p = pair[i]
            if started[p] == 1:
                started[p] = 0
                work[w, W_STARTED] -= 1
            has_checkpoint[task_key[i]] = 0
            for c in (cw, here, np.int64(tt[i])):
                state = circ[c, C_STATE]
                if state == CLOSED:
                    circ[c, C_CF] = 0
                elif state == HALF_OPEN:
                    circ[c, C_HOS] += 1
                    if circ[c, C_HOS] >= success_threshold[ver, circuit_rank[c]]:
                        _close(
                            c, now, i, ver, R_SUCCESS, circ, rto, work, cls, circuit_worker,
                            circuit_rank, recovery_s, log, logf, acc,
                        )  # fmt: skip
        elif k == FAILURE:
            _on_failure(
                i, w, here, cw, np.int64(tt[i]), now, ver, ftype[i], attempt[i], rungs[i],
                pair[i], task_key[i], circ, rto, work, cls, hdue, hk, log, logf, acc,
                started, has_checkpoint, checkpoint, members, n_members, class_offsets,
                circuit_rank, circuit_order, circuit_worker, worker_circuit, cpu_circuit,
                ladders, failure_threshold, backoff_s, backoff_len, backoff_done, ranks,
                max_retries, guard_fraction, guard_min,
            )  # fmt: skip
        if acc[A_STATUS] != 0:
            return acc
    return acc
