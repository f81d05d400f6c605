"""Outlier ejection in the compiled twin (fleet.py `_push_boundary`, `_judge_outliers`,
`_outliers_changed`; Envoy's success-rate outlier detection), kept by a replay that derives
records when a settings version has it (`State.outliers`; scoring refuses it).

Boundaries are multiples of the interval in epoch time, each a due moment of rank -1 with
id "" (heap key -1: first among those that tie). At one, per class in id order, the live
workers with the request volume are the sample; with enough of them, each CLOSED worker
whose success rate is below mean - factor x stdev opens, worst first, each subject to the
fleet guard. The sums run in worker-id order, as the core's do, so the floats agree.
"""

from __future__ import annotations

import numpy as np

from .circuits import _guard_holds as guard_holds
from .circuits import trip
from .codes import CLOSED
from .heap import push_due
from .jit import step
from .state import (
    BOUNDARY_GEN,
    INTERVAL_FAILURES,
    INTERVAL_SUCCESSES,
    LOG_SIZE,
    LOST,
    OUTLIER,
    OUTLIER_LIMIT,
    OUTLIER_MEAN,
    OUTLIER_RATE,
    STATE,
    STATUS,
    VERSION,
    WINDOW_FAILURE_COUNT,
    WINDOW_N,
)

BOUNDARY_KEY = -1  # before every (id order x 8 + rank) key


@step
def push_boundary(run, state, now) -> None:
    """The next interval boundary after `now` (a newer generation: older timers are stale)."""
    counters = state.counters
    counters[BOUNDARY_GEN] += 1
    interval = run.rules.outlier_ms[counters[VERSION]]
    boundary = (np.floor(now / interval) + 1) * interval
    push_due(state, boundary, BOUNDARY_KEY, -1, counters[BOUNDARY_GEN])


@step
def stop_boundaries(state) -> None:
    """The rule switched off: no boundary any more, every worker's counts back to 0."""
    state.counters[BOUNDARY_GEN] += 1
    for w in range(state.workers.shape[0]):
        state.workers[w, INTERVAL_SUCCESSES] = 0
        state.workers[w, INTERVAL_FAILURES] = 0


@step
def judge_outliers(run, state, ts) -> None:
    """fleet.py `_judge_outliers` at a boundary, at `ts`."""
    fleet, rules, counters = run.fleet, run.rules, state.counters
    version = counters[VERSION]
    factor, volume = rules.outlier_factor[version], rules.outlier_volume[version]
    workers, sample, sampled = state.workers, state.sample, state.sampled
    order = fleet.worker_order
    for c in fleet.classes_by_id:
        start = fleet.class_offsets[c]
        n = 0
        for j in range(start, start + state.member_counts[c]):
            m = state.members[j]
            successes, failures = workers[m, INTERVAL_SUCCESSES], workers[m, INTERVAL_FAILURES]
            outcomes = successes + failures
            if workers[m, LOST] == 0 and outcomes >= volume:
                sample[n] = successes / outcomes
                sampled[n] = m
                n += 1
            workers[m, INTERVAL_SUCCESSES] = 0
            workers[m, INTERVAL_FAILURES] = 0
        if n < rules.outlier_hosts[version]:
            continue
        mean = 0.0
        for j in range(n):
            mean += sample[j]
        mean /= n
        spread = 0.0
        for j in range(n):
            spread += (sample[j] - mean) * (sample[j] - mean)
        limit = mean - factor * np.sqrt(spread / n)
        # Worst first, ties by id: an insertion sort of the (small) sample.
        for j in range(1, n):
            rate, m = sample[j], sampled[j]
            k = j
            while k > 0 and (
                sample[k - 1] > rate or (sample[k - 1] == rate and order[sampled[k - 1]] > order[m])
            ):
                sample[k] = sample[k - 1]
                sampled[k] = sampled[k - 1]
                k -= 1
            sample[k] = rate
            sampled[k] = m
        for j in range(n):
            rate, m = sample[j], sampled[j]
            if rate >= limit:
                break
            wc = fleet.worker_circuit[m]
            if state.circuits[wc, STATE] != CLOSED or guard_holds(run, state, c):  # the guard
                continue
            counters[WINDOW_N] = n  # the sample's size and class, logged by the transition
            counters[WINDOW_FAILURE_COUNT] = c
            trip(run, state, wc, ts, OUTLIER, -1, 0)
            if counters[STATUS] != 0:
                return
            row = counters[LOG_SIZE] - 1
            state.log_floats[row, OUTLIER_RATE] = rate
            state.log_floats[row, OUTLIER_LIMIT] = limit
            state.log_floats[row, OUTLIER_MEAN] = mean
