"""The tuner's scoring function (offline/tune/score.py, the specification) as an observer
of a compiled replay: `kernel.py` hands it every transition and every outcome it visits,
and it keeps the totals in `State.scores`.

"Open at T" means the circuit's newest transition strictly before T went to OPEN or
FORCED_OPEN, so each circuit's transitions are kept as a chain (`State.changes`: ts, to
state, the previous one's index). The score's input side (which outcomes, on which
circuits, when) does not depend on the circuit settings: `Scoring` holds it, prepared
once per history and attribution (`scoring_inputs`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .codes import CHANGES_FULL, CLOSED, FAILURE, HALF_OPEN, OPEN, SUCCESS, openish
from .encode import Encoded
from .jit import inlined_step, step
from .state import CHANGES_SIZE, LAST_CHANGE, STATUS

# Score totals (State.scores).
PROTECTED, WITHHELD, OPENINGS, DELAY_SUM_MS, DELAYS, OPEN_MS, FLAPPING = range(7)
# A transition in the chain (State.changes).
CHANGE_TS, CHANGE_TO, CHANGE_PREVIOUS = range(3)


class Scoring(NamedTuple):
    """What the score compares the transitions with."""

    ranks: np.ndarray  # int64 [failure type]: the attribution the score counts failures by
    ok_offsets: np.ndarray  # int64 [circuit + 1]: scored successes per circuit
    ok_ts: np.ndarray  # int64, sorted per circuit
    fail_offsets: np.ndarray  # int64 [circuit + 1]: scored failures per circuit (by `ranks`)
    fail_ts: np.ndarray  # int64, sorted per circuit
    deferred: np.ndarray  # int64: outcomes the score counts but the core skipped (repeats)
    end_ts: int  # the history's newest decision time: open time runs up to it


_NONE = np.zeros(0, np.int64)


def no_scoring() -> Scoring:
    return Scoring(_NONE, _NONE, _NONE, _NONE, _NONE, _NONE, 0)


def scoring_inputs(encoded: Encoded, ranks: np.ndarray, shared: dict | None = None) -> Scoring:
    """The score's input side under the attribution `ranks`; what does not depend on it
    is taken from (and left in) `shared` when given."""
    shared = {} if shared is None else shared
    inputs, fleet = encoded.inputs, encoded.fleet
    n_circ = len(fleet.circuit_rank)
    if "successes" not in shared:
        ok = np.flatnonzero((inputs.kind == SUCCESS) & (inputs.scored == 1))
        circuits = np.concatenate(
            [
                fleet.worker_circuit[inputs.worker[ok]],
                inputs.hardware_class[ok],
                inputs.task_type[ok],
            ]
        )
        shared["successes"] = _csr(circuits, np.tile(inputs.ts[ok], 3), n_circ)
        shared["deferred"] = np.flatnonzero((inputs.skip == 1) & (inputs.scored == 1))
    failures = np.flatnonzero((inputs.kind == FAILURE) & (inputs.scored == 1))
    rank = ranks[inputs.failure_type[failures]]
    circuit = np.where(
        rank == 0,
        fleet.worker_circuit[inputs.worker[failures]],
        np.where(rank == 1, inputs.hardware_class[failures], inputs.task_type[failures]),
    )
    fail_offsets, fail_ts = _csr(circuit, inputs.ts[failures], n_circ)
    ok_offsets, ok_ts = shared["successes"]
    return Scoring(
        ranks, ok_offsets, ok_ts, fail_offsets, fail_ts, shared["deferred"], encoded.end_ts
    )


def _csr(groups: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """`values` grouped by `groups`, each group sorted: (offsets, values)."""
    groups = np.asarray(groups, np.int64)
    values = np.asarray(values, np.int64)
    order = np.lexsort((values, groups))
    offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(groups, minlength=n_groups), out=offsets[1:])
    return offsets, values[order]


# --- the observer (numba) -------------------------------------------------------------------


@step
def _first_after(values, lo, hi, x, inclusive) -> int:
    """Index of the first value > x (>= x when `inclusive`) in values[lo:hi], sorted."""
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] < x or (not inclusive and values[mid] == x):
            lo = mid + 1
        else:
            hi = mid
    return lo


@step
def _detection_delay(scoring, c, opened, previous) -> int:
    """Opening time minus the streak's first failure (0 when the streak has none): the
    streak starts after the previous transition and the last success before the opening."""
    start = previous
    ok_offsets, ok_ts = scoring.ok_offsets, scoring.ok_ts
    last_ok = _first_after(ok_ts, ok_offsets[c], ok_offsets[c + 1], opened, True) - 1
    if last_ok >= ok_offsets[c] and ok_ts[last_ok] > start:
        start = ok_ts[last_ok]
    fail_offsets, fail_ts = scoring.fail_offsets, scoring.fail_ts
    first = _first_after(fail_ts, fail_offsets[c], fail_offsets[c + 1], start, False)
    if first < fail_offsets[c + 1] and fail_ts[first] <= opened:
        return opened - fail_ts[first]
    return 0


@step
def observe_transition(state, scoring, c, from_state, to_state, ts) -> None:
    """Circuit `c` changed state at `ts`: the open time it ends, an opening (a re-opening:
    flapping; from CLOSED: its detection delay), and the chain."""
    changes, scores, counters = state.changes, state.scores, state.counters
    last = state.circuits[c, LAST_CHANGE]
    previous = -1
    if last >= 0:
        previous = changes[last, CHANGE_TS]
        if openish(changes[last, CHANGE_TO]):
            scores[OPEN_MS] += max(0, ts - previous)
    if to_state == OPEN:
        scores[OPENINGS] += 1
        if from_state == HALF_OPEN:
            scores[FLAPPING] += 1
        elif from_state == CLOSED:
            scores[DELAY_SUM_MS] += _detection_delay(scoring, c, ts, previous)
            scores[DELAYS] += 1
    n = counters[CHANGES_SIZE]
    if n >= changes.shape[0]:
        counters[STATUS] = CHANGES_FULL
        return
    changes[n, CHANGE_TS] = ts
    changes[n, CHANGE_TO] = to_state
    changes[n, CHANGE_PREVIOUS] = last
    counters[CHANGES_SIZE] = n + 1
    state.circuits[c, LAST_CHANGE] = n


@inlined_step
def _open_at(state, c, t) -> bool:
    """Was circuit `c` open just before `t` (its newest transition with ts < t)?"""
    changes = state.changes
    j = state.circuits[c, LAST_CHANGE]
    while j >= 0 and changes[j, CHANGE_TS] >= t:
        j = changes[j, CHANGE_PREVIOUS]
    return j >= 0 and openish(changes[j, CHANGE_TO]) == 1


@inlined_step
def observe_success(run, state, i) -> None:
    """A SUCCESS the score counts is withheld when one of its three circuits was open."""
    inputs = run.inputs
    if inputs.scored[i] == 0:
        return
    t = inputs.ts[i]
    if (
        _open_at(state, run.fleet.worker_circuit[inputs.worker[i]], t)
        or _open_at(state, inputs.hardware_class[i], t)
        or _open_at(state, inputs.task_type[i], t)
    ):
        state.scores[WITHHELD] += 1


@step
def observe_failure(run, state, i) -> None:
    """A FAILURE the score counts is protected when the circuit it is attributed to (by
    the score's attribution, before the fleet guard) was open."""
    inputs = run.inputs
    if inputs.scored[i] == 0:
        return
    rank = run.scoring.ranks[inputs.failure_type[i]]
    if rank == 0:
        c = run.fleet.worker_circuit[inputs.worker[i]]
    elif rank == 1:
        c = np.int64(inputs.hardware_class[i])
    else:
        c = np.int64(inputs.task_type[i])
    if _open_at(state, c, inputs.ts[i]):
        state.scores[PROTECTED] += 1


@step
def finish_score(run, state) -> None:
    """After the last input: the outcomes the core skipped as repeats but the score
    counts, answered on the whole chain, and the open time up to the history's end."""
    inputs = run.inputs
    for i in run.scoring.deferred:
        if inputs.kind[i] == SUCCESS:
            observe_success(run, state, i)
        else:
            observe_failure(run, state, i)
    changes, scores = state.changes, state.scores
    end_ts = run.scoring.end_ts
    for c in range(state.circuits.shape[0]):
        last = state.circuits[c, LAST_CHANGE]
        if last >= 0 and openish(changes[last, CHANGE_TO]):
            at = changes[last, CHANGE_TS]
            scores[OPEN_MS] += max(end_ts, at) - at
