"""Which inputs a replay visits, and the workers each visit reveals lost: one pass over the
history that depends only on the heartbeat timeouts in force (and on whether a lost
worker's disconnection is counted on its task types), shared by every configuration
that has them. Read beside `kernel.py`.

The core finds lost workers with a heap of lazily re-armed timers (and re-arms them all
when a CONFIG_CHANGED changes the timeout); the outcome is the same as this direct rule,
which needs no heap: a worker whose newest event (so far) has ts L is lost at the first
input after its last event whose clock is past `round(L + timeout)`, the timeout being
the one in force there, provided that input comes no later than its next event (whose
due moments are revealed before the event itself).

A replay that derives records visits every input. One that only scores visits the inputs
that can change a circuit or the fleet guard's counts (outcomes, operators, a worker's
first event, class move or return, inputs that reveal lost workers): the others only
advance the clock, and a half-opening they reveal takes effect at its own due
millisecond whichever input reveals it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .codes import CONFIG, FAILURE, OPERATOR, SUCCESS, TASK_STARTED
from .moments import STATUS, ceil_ms, round6


class Visits(NamedTuple):
    """The inputs a replay applies, in order, and the lost workers each reveals."""

    record: np.ndarray  # int64 [visit]: the input
    now: np.ndarray  # int64 [visit]: the clock there (after the input's own ts)
    before: np.ndarray  # int64 [visit]: the clock at the input before it (visited or not)
    losses_end: np.ndarray  # int64 [visit]: where its losses end (they start where the last ended)
    final_now: int  # the clock after the last input
    # Per loss, in the order the core reveals them (visit, due moment, worker id):
    lost_due: np.ndarray  # float64: its due moment, unrounded
    lost_worker: np.ndarray  # int64
    lost_at: np.ndarray  # int64: the ts the core counts it at
    lost_types_end: np.ndarray  # int64: where its task types end in lost_types
    lost_types: np.ndarray  # int64: the task type circuits of its started tasks, in id order


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


@njit(cache=True, nogil=True, inline="always")
def _lost_position(newest, lo, hi, pos_now, seg_start, seg_timeout, n_seg, counters):
    """The first position in [lo, hi] whose clock is past the worker's due moment there
    (`round(newest + the timeout in force)`), and that due; (-1, 0.0) when none."""
    s = n_seg - 1
    while seg_start[s] > lo:
        s -= 1
    while True:
        end = hi
        if s + 1 < n_seg and seg_start[s + 1] - 1 < hi:
            end = seg_start[s + 1] - 1
        start = max(lo, seg_start[s])
        x = newest + seg_timeout[s]
        if start <= end and pos_now[end] > x - 1.0:  # round(x, 6) is within 1e-6 of x
            due = round6(x, counters)
            if pos_now[end] > due:
                return _first_past(pos_now, start, end + 1, due), due
        if end >= hi:
            return -1, 0.0
        s += 1


@njit(cache=True, nogil=True)
def liveness(inputs, fleet, rules, visit_all, track_tasks):
    """(status, Visits) of the history under `rules`' heartbeat timeouts. `visit_all`:
    every input the core does not skip; `track_tasks`: a lost worker's task types are
    gathered (its disconnection is counted on them)."""
    # Every array read in the loop, taken out of its bundle once.
    kind, ts, skip, worker = inputs.kind, inputs.ts, inputs.skip, inputs.worker
    hardware_class, pair, task_type = inputs.hardware_class, inputs.pair, inputs.task_type
    config_version, heartbeat_ms = rules.config_version, rules.heartbeat_ms
    pairs_offsets, pairs = fleet.worker_pairs_offsets, fleet.worker_pairs
    circuit_order = fleet.circuit_order
    n = kind.shape[0]
    n_work = fleet.worker_circuit.shape[0]
    counters = np.zeros(1, np.int64)
    exists = np.zeros(n_work, np.int8)
    armed = np.zeros(n_work, np.int8)  # alive, so it can be lost
    newest = np.zeros(n_work, np.int64)  # L: the newest ts of its events
    last_pos = np.zeros(n_work, np.int64)  # position of its last event
    home = np.zeros(n_work, np.int64)
    running = np.full(max(1, pairs.shape[0]), -1, np.int64)  # pair -> task type circuit
    pos_input = np.empty(n, np.int64)  # positions: the inputs the core does not skip
    pos_now = np.empty(n, np.int64)
    marked = np.zeros(n, np.int8)  # 1 = visit this position
    # The heartbeat timeout in force: segments of positions, each with its own.
    n_switches = 1
    for i in range(n):
        n_switches += kind[i] == CONFIG
    seg_start = np.zeros(n_switches, np.int64)
    seg_timeout = np.empty(n_switches)
    seg_timeout[0] = heartbeat_ms[0]
    n_seg = 1
    shortest = heartbeat_ms[0]
    # Lost workers as found: position revealed, due, worker, ts, their task types. (A
    # loss needs an event before it, a task type its start: n bounds both; the pages
    # never written are never touched.)
    found_pos = np.empty(n, np.int64)
    found_due = np.empty(n)
    found_worker = np.empty(n, np.int64)
    found_at = np.empty(n, np.int64)
    found_types_start = np.empty(n, np.int64)
    found_types = np.empty(n if track_tasks else 0, np.int64)
    n_found = 0
    n_types = 0
    now = np.int64(0)
    n_pos = 0
    for i in range(n + 1):
        if i < n and skip[i] == 1:
            continue
        final = i == n
        k = kind[i] if not final else OPERATOR
        if not final:
            if ts[i] > now:
                now = ts[i]
            pos_input[n_pos] = i
            pos_now[n_pos] = now
            n_pos += 1
            if visit_all:
                marked[n_pos - 1] = 1
            if k > FAILURE:
                if k == OPERATOR:
                    marked[n_pos - 1] = 1
                elif k == CONFIG:
                    v = config_version[i]
                    if v >= 0 and heartbeat_ms[v] != seg_timeout[n_seg - 1]:
                        seg_start[n_seg] = n_pos  # from the next position on
                        seg_timeout[n_seg] = heartbeat_ms[v]
                        n_seg += 1
                        shortest = min(shortest, heartbeat_ms[v])
                continue
        p = n_pos - 1
        # Which workers to check: this event's, or every one after the last input.
        lo = worker[i] if not final else 0
        hi = lo + 1 if not final else n_work
        for w in range(lo, hi):
            if exists[w] == 0 or armed[w] == 0 or last_pos[w] == n_pos - 1:
                continue  # (no input after its last event to reveal it)
            if pos_now[p] <= newest[w] + shortest - 1.0:
                continue  # not due under any timeout (the commonest case)
            j, due = _lost_position(
                newest[w], last_pos[w] + 1, p, pos_now, seg_start, seg_timeout, n_seg, counters
            )
            if j < 0:
                continue
            armed[w] = 0
            found_pos[n_found] = j
            found_due[n_found] = due
            found_worker[n_found] = w
            found_at[n_found] = max(ceil_ms(due), pos_now[j - 1])
            found_types_start[n_found] = n_types
            if track_tasks:  # the task types it was running, once each, in id order
                first = n_types
                for q in range(pairs_offsets[w], pairs_offsets[w + 1]):
                    c = running[pairs[q]]
                    if c < 0:
                        continue
                    running[pairs[q]] = -1
                    at = n_types
                    while at > first and circuit_order[found_types[at - 1]] > circuit_order[c]:
                        at -= 1
                    if at > first and found_types[at - 1] == c:
                        continue
                    for r in range(n_types, at, -1):
                        found_types[r] = found_types[r - 1]
                    found_types[at] = c
                    n_types += 1
            n_found += 1
        if final:
            break
        # The worker event itself.
        w = worker[i]
        class_circuit = np.int64(hardware_class[i])
        if exists[w] == 0:
            exists[w] = 1
            home[w] = class_circuit
            newest[w] = ts[i]
            marked[p] = 1
        else:
            if class_circuit != home[w]:
                home[w] = class_circuit
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
                running[pair[i]] = task_type[i]
            elif k >= SUCCESS:  # an outcome ends the task
                running[pair[i]] = -1
        if counters[STATUS] != 0:
            break
    # In the order the core reveals them: by position, then due moment, then id order.
    order = np.argsort(fleet.worker_order[found_worker[:n_found]], kind="mergesort")
    order = order[np.argsort(found_due[:n_found][order], kind="mergesort")]
    order = order[np.argsort(found_pos[:n_found][order], kind="mergesort")]
    lost_due = np.empty(n_found)
    lost_worker = np.empty(n_found, np.int64)
    lost_at = np.empty(n_found, np.int64)
    lost_types_end = np.empty(n_found, np.int64)
    lost_types = np.empty(n_types, np.int64)
    n_counted = 0
    for r in range(n_found):
        f = order[r]
        lost_due[r] = found_due[f]
        lost_worker[r] = found_worker[f]
        lost_at[r] = found_at[f]
        end = found_types_start[f + 1] if f + 1 < n_found else n_types
        for q in range(found_types_start[f], end):
            lost_types[n_counted] = found_types[q]
            n_counted += 1
        lost_types_end[r] = n_counted
        marked[found_pos[f]] = 1
    record = np.empty(n_pos, np.int64)
    visit_now = np.empty(n_pos, np.int64)
    visit_before = np.empty(n_pos, np.int64)
    losses_end = np.zeros(n_pos, np.int64)
    n_visits = 0
    r = 0
    for p in range(n_pos):
        if marked[p] == 0:
            continue
        while r < n_found and found_pos[order[r]] == p:
            r += 1
        record[n_visits] = pos_input[p]
        visit_now[n_visits] = pos_now[p]
        visit_before[n_visits] = pos_now[p - 1] if p > 0 else 0
        losses_end[n_visits] = r
        n_visits += 1
    visits = Visits(
        record[:n_visits].copy(),
        visit_now[:n_visits].copy(),
        visit_before[:n_visits].copy(),
        losses_end[:n_visits].copy(),
        now,
        lost_due,
        lost_worker,
        lost_at,
        lost_types_end,
        lost_types,
    )
    return counters[STATUS], visits
