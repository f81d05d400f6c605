"""Lost workers in the compiled core (fleet.py `_lose_worker` and the heartbeat timers):
one worker's loss, with its counted disconnection and its started tasks migrated, and the
re-arming of every timer when a settings change shortens or lengthens the timeout.
Called from `kernel.py`'s loop; the state and log layouts are `state.py`'s."""

from __future__ import annotations

from numba import njit

from faultstream.processors.offline.tune.encode import WORKER_DISCONNECTION
from faultstream.processors.offline.tune.kernel import A_HEAP, _ceil, round6

from .encode import STRATEGY_CODE
from .heap import K_GEN, K_KEY, K_TARGET, _push, _sort_key
from .state import (
    B_LOST,
    C_STATE,
    L_A,
    L_B,
    L_C,
    L_D,
    L_E,
    L_F,
    L_G,
    LOST,
    T_MIGRATION,
    W_CLASS,
    W_EXISTS,
    W_LAST_TS,
    W_LOST,
    W_STARTED,
    W_TIMER_GEN,
    _count_failure,
    _openish,
    _pick_target,
    _row,
    _sort_unique_by,
    _unique,
)  # fmt: skip

S_DIFFERENT_WORKER = STRATEGY_CODE["DIFFERENT_WORKER"]
S_ESCALATION = STRATEGY_CODE["ESCALATION"]


@njit(cache=True, nogil=True)
def _lose_worker(
    w, due, before, i, ver, circ, rto, work, cls, hdue, hk, log, logf, acc, started,
    started_attempt, started_tt, started_rec, has_checkpoint, checkpoint, members,
    n_members, task_types, circuit_rank, circuit_order, circuit_worker, worker_circuit,
    worker_pairs_offsets, worker_pairs, pair_task_key, class_offsets, ranks, max_retries,
    failure_threshold, backoff_s, backoff_len, backoff_done,
):  # fmt: skip
    """Worker `w` silent past its due moment `due`, revealed by input `i`: it leaves its
    class's live count, one WORKER_DISCONNECTION is counted (on the circuit the
    attribution names: for task_type, each task type it had started), and each started
    task migrates in task_id order (escalated at max_retries)."""
    work[w, W_LOST] = 1
    work[w, W_TIMER_GEN] += 1
    due_ms = _ceil(due)
    at = max(due_ms, before)
    home = work[w, W_CLASS]
    cw = worker_circuit[w]
    cls[home, 0] -= 1
    cls[home, 1] -= _openish(circ[cw, C_STATE])
    disconnection = ranks[ver, WORKER_DISCONNECTION]
    n_types = 0
    if disconnection == 0:
        task_types[0] = cw
        n_types = 1
    elif disconnection == 1:
        task_types[0] = home
        n_types = 1
    elif work[w, W_STARTED] > 0:  # the task types of its started tasks
        for q in range(worker_pairs_offsets[w], worker_pairs_offsets[w + 1]):
            p = worker_pairs[q]
            if started[p] == 1:
                task_types[n_types] = started_tt[p]
                n_types += 1
        _sort_unique_by(task_types, n_types, circuit_order)
        n_types = _unique(task_types, n_types)
    for j in range(n_types):
        _count_failure(
            task_types[j], at, i, ver, WORKER_DISCONNECTION, B_LOST, circ, rto, work, cls,
            hdue, hk, log, logf, acc, circuit_rank, circuit_order, circuit_worker,
            failure_threshold, backoff_s, backoff_len, backoff_done,
        )  # fmt: skip
    if work[w, W_STARTED] == 0:
        return
    for q in range(worker_pairs_offsets[w], worker_pairs_offsets[w + 1]):
        p = worker_pairs[q]
        if started[p] == 0:
            continue
        started[p] = 0
        key = pair_task_key[p]
        row = _row(log, acc, T_MIGRATION, i, at, ver)
        if row < 0:
            break
        log[row, L_E] = started_rec[p]
        log[row, L_F] = w
        log[row, L_G] = due_ms
        log[row, L_C] = 0
        log[row, L_B] = -1
        if started_attempt[p] >= max_retries[ver]:
            log[row, L_A] = S_ESCALATION
            has_checkpoint[key] = 0
        else:
            log[row, L_A] = S_DIFFERENT_WORKER
            log[row, L_C] = has_checkpoint[key]
            log[row, L_D] = checkpoint[key]
            log[row, L_B] = _pick_target(
                home, w, members, n_members, class_offsets, work, circ, worker_circuit
            )
    work[w, W_STARTED] = 0


@njit(cache=True, nogil=True)
def _rearm_lost_timers(hdue, hk, acc, work, worker_order, heartbeat_ms) -> None:
    """A new heartbeat timeout: timers only move later lazily and a shorter timeout needs
    them anew, so every lost-worker timer is dropped and one armed per live worker."""
    kept = 0
    for j in range(acc[A_HEAP]):
        if hk[j, K_KEY] & 3 != LOST:
            hdue[kept] = hdue[j]
            hk[kept] = hk[j]
            kept += 1
    acc[A_HEAP] = 0
    for j in range(kept):  # re-pushed in place: a valid heap again
        _push(hdue, hk, acc, hdue[j], hk[j, K_KEY], hk[j, K_TARGET], hk[j, K_GEN])
    for w in range(work.shape[0]):
        if work[w, W_EXISTS] == 1 and work[w, W_LOST] == 0:
            due = round6(work[w, W_LAST_TS] + heartbeat_ms, acc)
            work[w, W_TIMER_GEN] += 1
            _push(hdue, hk, acc, due, _sort_key(worker_order[w], LOST), w, work[w, W_TIMER_GEN])
