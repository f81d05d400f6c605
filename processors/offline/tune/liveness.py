"""The part of a compiled replay that no circuit setting changes, computed once per
heartbeat timeout (and attribution of WORKER_DISCONNECTION) and shared by every
configuration that has it: which inputs a configuration's replay must visit, and the
lost workers each of them reveals. Read beside `kernel.py`.

The core finds lost workers with a heap of lazily re-armed timers; the outcome is the
same as this direct rule, which needs no heap: a worker whose newest event (so far) has
ts L is lost at the first input after its last event whose clock is past
`round(L + timeout)`, provided that input comes no later than its next event (whose due
moments are revealed before the event itself).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .encode import FAILURE, SUCCESS, TASK_STARTED, TICK
from .kernel import A_STATUS, _ceil, _grow, round6


@njit(cache=True, nogil=True)
def _first_past(values, lo, hi, x) -> int:
    """Index of the first value > x in values[lo:hi] (sorted, and one exists)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, nogil=True)
def liveness(
    kind, ts, skip, worker, hw, tt, task, circuit_order, worker_circuit, wt_off, wt,
    n_tasks, heartbeat_ms, track_tasks,
):  # fmt: skip
    """Which inputs a configuration's replay must visit (outcomes, operators, worker
    events that change the fleet guard's counts, inputs that reveal lost workers), the
    clock there, and the lost workers each visit reveals, in due order, with the task
    type circuits each would count on (`track_tasks`).

    Returns (status, visit, vnow, lost_off (CSR by visit), lost_due, lost_int (columns
    order, worker, lost ts, home class, end of its task types), task types, the clock
    after the last input)."""
    n = kind.shape[0]
    n_work = worker_circuit.shape[0]
    acc = np.zeros(11, np.int64)
    exists = np.zeros(n_work, np.int64)
    armed = np.zeros(n_work, np.int64)  # alive, so it can be lost
    newest = np.zeros(n_work, np.int64)  # L: the newest ts of its events
    last_pos = np.zeros(n_work, np.int64)  # position of its last event
    home_of = np.zeros(n_work, np.int64)
    running = np.full(max(1, n_tasks), -1, np.int64)  # pair -> task type circuit
    pos_input = np.empty(n, np.int64)  # positions: the inputs the core does not skip
    pos_now = np.empty(n, np.int64)
    marked = np.zeros(n, np.int8)  # 1 = visit this position
    # Lost workers, as found: position revealed, due, order, worker, lost ts, home, tasks.
    found_pos = np.empty(16, np.int64)
    found_due = np.empty(16)
    found_int = np.empty((16, 6), np.int64)  # order, worker, ts, home, task start, end
    found_tasks = np.empty(16, np.int64)
    n_found = 0
    n_tasks_found = 0
    now = np.int64(0)
    n_pos = 0
    for i in range(n + 1):
        if i < n and skip[i] == 1:
            continue
        final = i == n
        k = kind[i] if not final else TICK
        if not final:
            if ts[i] > now:
                now = ts[i]
            pos_input[n_pos] = i
            pos_now[n_pos] = now
            n_pos += 1
            if k > FAILURE:
                marked[n_pos - 1] = k != TICK  # operators
                continue
        p = n_pos - 1
        # Which workers to check: this event's, or every one after the last input.
        lo = worker[i] if not final else 0
        hi = lo + 1 if not final else n_work
        for w in range(lo, hi):
            if exists[w] == 0 or armed[w] == 0 or (final and last_pos[w] == n_pos - 1):
                continue  # (no input after its last event to reveal it)
            x = newest[w] + heartbeat_ms
            limit = pos_now[p] if not final else now
            if limit <= x - 1.0:  # round(x, 6) is within 1e-6 of x: not lost
                continue
            due = round6(x, acc)
            if limit <= due:
                continue
            # Lost at the first position after its last event with the clock past due.
            j = _first_past(pos_now, last_pos[w] + 1, n_pos, due)
            armed[w] = 0
            found_pos = _grow(found_pos, n_found)
            found_due = _grow(found_due, n_found)
            found_int = _grow(found_int, n_found)
            found_pos[n_found] = j
            found_due[n_found] = due
            found_int[n_found, 0] = circuit_order[worker_circuit[w]]
            found_int[n_found, 1] = w
            found_int[n_found, 2] = max(_ceil(due), pos_now[j - 1])
            found_int[n_found, 3] = home_of[w]
            found_int[n_found, 4] = n_tasks_found
            if track_tasks:  # the task types it was running, once each
                for q in range(wt_off[w], wt_off[w + 1]):
                    c = running[wt[q]]
                    if c >= 0:
                        running[wt[q]] = -1
                        seen_before = False
                        for r in range(found_int[n_found, 4], n_tasks_found):
                            seen_before = seen_before or found_tasks[r] == c
                        if not seen_before:
                            found_tasks = _grow(found_tasks, n_tasks_found)
                            found_tasks[n_tasks_found] = c
                            n_tasks_found += 1
            found_int[n_found, 5] = n_tasks_found
            n_found += 1
        if final:
            break
        # The worker event itself.
        w = worker[i]
        here = np.int64(hw[i])
        if exists[w] == 0:
            exists[w] = 1
            home_of[w] = here
            newest[w] = ts[i]
            marked[p] = 1
        else:
            if here != home_of[w]:
                home_of[w] = here
                marked[p] = 1
            if ts[i] > newest[w]:
                newest[w] = ts[i]
            if armed[w] == 0:  # back from lost
                marked[p] = 1
        armed[w] = 1
        last_pos[w] = p
        if k >= SUCCESS:
            marked[p] = 1
        if track_tasks:
            if k == TASK_STARTED:
                running[task[i]] = tt[i]
            elif k >= SUCCESS:  # an outcome ends the task
                running[task[i]] = -1
        if acc[A_STATUS] != 0:
            break
    # In the order the core reveals them: by position, then due moment, then id order.
    order = np.argsort(found_int[:n_found, 0], kind="mergesort")
    order = order[np.argsort(found_due[:n_found][order], kind="mergesort")]
    order = order[np.argsort(found_pos[:n_found][order], kind="mergesort")]
    lost_due = np.empty(n_found)
    lost_int = np.empty((n_found, 5), np.int64)  # order, worker, ts, home, tasks end
    tasks = np.empty(n_tasks_found, np.int64)
    n_counted = 0
    for r in range(n_found):
        f = order[r]
        lost_due[r] = found_due[f]
        lost_int[r, :4] = found_int[f, :4]
        for q in range(found_int[f, 4], found_int[f, 5]):
            tasks[n_counted] = found_tasks[q]
            n_counted += 1
        lost_int[r, 4] = n_counted
        marked[found_pos[f]] = 1
    visit = np.empty(n_pos, np.int64)
    vnow = np.empty(n_pos, np.int64)
    lost_off = np.zeros(n_pos + 1, np.int64)
    n_visit = 0
    r = 0
    for p in range(n_pos):
        if marked[p] == 0:
            continue
        while r < n_found and found_pos[order[r]] == p:
            r += 1
        visit[n_visit] = pos_input[p]
        vnow[n_visit] = pos_now[p]
        n_visit += 1
        lost_off[n_visit] = r
    return (
        acc[A_STATUS], visit[:n_visit].copy(), vnow[:n_visit].copy(),
        lost_off[: n_visit + 1].copy(), lost_due, lost_int, tasks, now,
    )  # fmt: skip
