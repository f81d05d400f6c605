"""Running the kernel (`kernel.py`) from Python: one replay that derives every record (its
log, for `materialize.py`), or the scores of many configurations over one history.

Buffers are sized from the history; in the rare history that overflows one, the kernel
runs again with it four times larger (a fixed size keeps reallocation off the hot path).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import NamedTuple

import numpy as np

from faultstream.events.config import CoreSettings

from .codes import (
    CHANGES_FULL,
    HEAP_FULL,
    LOG_FULL,
    OK,
    TASK_TYPE,
    TICK,
    WHY,
    WORKER_DISCONNECTION,
    UnsupportedHistory,
)
from .encode import Encoded
from .kernel import Run, replay
from .liveness import Visits, liveness
from .materialize import Log
from .score import Scoring, no_scoring, scoring_inputs
from .state import ADAPTIVE_SIZE, CHANGES_SIZE, LOG_SIZE, STATUS, State, new_state
from .versions import Rules, settings_versions


class ScoreTotals(NamedTuple):
    """What the tuner's scoring function counts (offline/tune/score.py `Score`), as sums."""

    protected: int
    withheld: int
    openings: int
    delay_sum_ms: int  # over the `delays` openings from CLOSED
    delays: int
    open_ms: int
    flapping: int


def _visits(encoded: Encoded, rules: Rules, *, visit_all: bool) -> Visits:
    track_tasks = bool((rules.ranks[:, WORKER_DISCONNECTION] == TASK_TYPE).any())
    status, visits = liveness(encoded.inputs, encoded.fleet, rules, visit_all, track_tasks)
    if status != OK:
        raise UnsupportedHistory(WHY[int(status)])
    return visits


def _heap_capacity(encoded: Encoded) -> int:
    return 2 * len(encoded.fleet.circuit_rank) + 1024


def run(encoded: Encoded, log_capacity: int | None = None, *, figures: bool = True) -> Log:
    """The kernel over every input of an encoded history (with commands): the log of the
    records FleetCore derives (without `figures`: its transitions and commands only, not
    the circuits' figures at each TICK)."""
    if not encoded.commands:
        raise ValueError("an encoding without commands derives no records")
    rules = encoded.versions.rules
    plan = Run(
        encoded.inputs, encoded.fleet, rules, _visits(encoded, rules, visit_all=True), no_scoring()
    )
    capacity = log_capacity or len(encoded) // 4 + 4096
    if figures and not log_capacity:  # at most every circuit at each TICK
        ticks = int(np.count_nonzero(encoded.inputs.kind == TICK))
        capacity += min(ticks * len(encoded.fleet.circuit_rank), len(encoded))
    heap_capacity = _heap_capacity(encoded)
    while True:
        state = new_state(
            encoded,
            rules,
            derive=True,
            scoring=False,
            figures=figures,
            log_capacity=capacity,
            heap_capacity=heap_capacity,
            changes_capacity=0,
        )
        status = _replay(plan, state)
        if status == LOG_FULL:
            capacity *= 4
        elif status == HEAP_FULL:
            heap_capacity *= 4
        else:
            used = int(state.counters[LOG_SIZE])
            learned = state.adaptive_log[: int(state.counters[ADAPTIVE_SIZE])]
            return Log(state.log[:used], state.log_floats[:used], learned)


def _replay(plan: Run, state: State) -> int:
    """The kernel's status: OK, or a buffer to enlarge; raises for what it cannot replay."""
    replay(plan, state)
    status = int(state.counters[STATUS])
    if status in (OK, LOG_FULL, HEAP_FULL, CHANGES_FULL):
        return status
    raise UnsupportedHistory(WHY[status])


# --- scoring many configurations ------------------------------------------------------------


def scoring_run(encoded: Encoded, settings: CoreSettings, shared: dict | None = None) -> Run:
    """What one configuration's scoring replay reads. What depends on part of the settings
    only (the visits, per heartbeat timeout; the score's input side, per attribution) is
    taken from `shared` when another configuration computed it."""
    shared = {} if shared is None else shared
    rules = settings_versions(settings, [], encoded.inputs.skip).rules
    if (rules.slow_ms > 0).any():  # its starts are keyed on attempts, not encoded to score
        raise UnsupportedHistory("the slow-call rule (scoring)")
    if (rules.outlier_factor > 0).any():  # it judges classes' members, not kept to score
        raise UnsupportedHistory("outlier ejection (scoring)")
    track_tasks = bool(rules.ranks[0, WORKER_DISCONNECTION] == TASK_TYPE)
    key = ("visits", float(rules.heartbeat_ms[0]), track_tasks)
    if key not in shared:
        shared[key] = _visits(encoded, rules, visit_all=False)
    ranks = rules.ranks[0]
    scoring_key = ("scoring", ranks.tobytes())
    if scoring_key not in shared:
        shared[scoring_key] = scoring_inputs(encoded, ranks, shared)
    scoring: Scoring = shared[scoring_key]
    return Run(encoded.inputs, encoded.fleet, rules, shared[key], scoring)


def score_run(encoded: Encoded, plan: Run) -> ScoreTotals:
    """One configuration's scoring replay (`scoring_run`)."""
    changes_capacity = len(plan.visits.record) // 4 + 1024
    heap_capacity = _heap_capacity(encoded)
    while True:
        state = new_state(
            encoded,
            plan.rules,
            derive=False,
            scoring=True,
            figures=False,
            log_capacity=0,
            heap_capacity=heap_capacity,
            changes_capacity=changes_capacity,
        )
        status = _replay(plan, state)
        if status == CHANGES_FULL:
            changes_capacity = max(4 * changes_capacity, int(state.counters[CHANGES_SIZE]))
        elif status == HEAP_FULL:
            heap_capacity *= 4
        else:
            return ScoreTotals(*(int(x) for x in state.scores))


def score_grid(
    encoded: Encoded,
    settings: Sequence[CoreSettings],
    *,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[ScoreTotals]:
    """Every configuration's score totals over one history (encoded without commands),
    configurations spread over threads (the kernel releases the GIL). Raises
    UnsupportedHistory when any run cannot be exact."""
    shared: dict = {}
    plans = [scoring_run(encoded, s, shared) for s in settings]
    threads = max(1, min(threads or os.cpu_count() or 1, len(plans)))
    totals: list[ScoreTotals | None] = [None] * len(plans)
    if threads == 1:
        for i, plan in enumerate(plans):
            totals[i] = score_run(encoded, plan)
            if progress:
                progress(i + 1)
        return totals  # type: ignore[return-value]
    with ThreadPoolExecutor(threads) as pool:
        futures = {pool.submit(score_run, encoded, plan): i for i, plan in enumerate(plans)}
        for done, future in enumerate(as_completed(futures), start=1):
            totals[futures[future]] = future.result()
            if progress:
                progress(done)
    return totals  # type: ignore[return-value]


__all__ = ["ScoreTotals", "run", "score_grid", "score_run", "scoring_run"]
