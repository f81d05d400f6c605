"""Adaptive ladders in the compiled twin (fleet.py `_finished`, `_awaiting`, `_learned`;
recovery.py `adaptive_plan`, `_rungs`): every command is a trial of its strategy under the
failure type and class of the failure it answers, its task's next outcome counts it, and
rule 5 picks among the ladder's applicable rungs by measured success.

Kept by a replay that derives records when any settings version learns (`State.adaptive`):
trials are counted whatever the version in force, so a CONFIG_CHANGED that turns learning on
finds what was learned before it, as the core does.
"""

from __future__ import annotations

from .codes import RUNG_BATCH, RUNG_PRECISION, STRATEGY_CODE
from .jit import step
from .state import (
    ADAPTIVE_SIZE,
    AWAIT_HEAD,
    AWAIT_STAMP,
    AWAIT_TAIL,
    AWAITED,
    AWAITING,
    STAMP,
    TRIAL_CLASS,
    TRIAL_FAILURE_TYPE,
    TRIAL_STRATEGY,
    TRIAL_SUCCESSES,
    TRIALS,
)

DIFFERENT_WORKER = STRATEGY_CODE["DIFFERENT_WORKER"]
REDUCED_BATCH = STRATEGY_CODE["REDUCED_BATCH_SIZE"]
REDUCED_PRECISION = STRATEGY_CODE["REDUCED_PRECISION"]
FALLBACK_CPU = STRATEGY_CODE["FALLBACK_CPU"]
ESCALATION = STRATEGY_CODE["ESCALATION"]
N_STRATEGIES = len(STRATEGY_CODE)


@step
def _learned_at(state, failure_type, class_circuit, strategy) -> int:
    """The row of `State.learned` of (failure type, class, strategy)."""
    return (failure_type * state.circuits.shape[0] + class_circuit) * N_STRATEGIES + strategy


@step
def await_trial(run, state, key, failure_type, class_circuit, strategy) -> None:
    """A command for trial key `key` (a task and the attempt it asks for): its outcome will be
    a trial of `strategy`. A newer command for the same key replaces it (and is the newest);
    past fleet.py AWAITED_COMMANDS awaiting, the oldest is forgotten (its task never ran)."""
    awaiting, counters, queue = state.awaiting, state.counters, state.await_queue
    if awaiting[key, AWAITING] == 0:
        counters[AWAITED] += 1
    counters[AWAIT_STAMP] += 1
    awaiting[key, AWAITING] = 1
    awaiting[key, TRIAL_FAILURE_TYPE] = failure_type
    awaiting[key, TRIAL_CLASS] = class_circuit
    awaiting[key, TRIAL_STRATEGY] = strategy
    awaiting[key, STAMP] = counters[AWAIT_STAMP]
    tail = counters[AWAIT_TAIL]
    queue[tail, 0] = key
    queue[tail, 1] = counters[AWAIT_STAMP]
    counters[AWAIT_TAIL] = tail + 1
    if counters[AWAITED] <= run.rules.awaited_commands[0]:
        return
    while True:  # the oldest still awaiting (entries replaced or answered since are stale)
        head = counters[AWAIT_HEAD]
        counters[AWAIT_HEAD] = head + 1
        oldest = queue[head, 0]
        if awaiting[oldest, AWAITING] == 1 and awaiting[oldest, STAMP] == queue[head, 1]:
            awaiting[oldest, AWAITING] = 0
            counters[AWAITED] -= 1
            return


@step
def trial_outcome(run, state, i, success) -> None:
    """SUCCESS or FAILURE record `i`: the outcome of the command its attempt carries out."""
    key = run.inputs.trial_now[i]
    awaiting = state.awaiting
    if key < 0 or awaiting[key, AWAITING] == 0:
        return
    awaiting[key, AWAITING] = 0
    state.counters[AWAITED] -= 1
    failure_type, class_circuit = awaiting[key, TRIAL_FAILURE_TYPE], awaiting[key, TRIAL_CLASS]
    at = _learned_at(state, failure_type, class_circuit, awaiting[key, TRIAL_STRATEGY])
    state.learned[at, TRIALS] += 1
    state.learned[at, TRIAL_SUCCESSES] += success


@step
def adaptive_strategy(run, state, i, class_circuit, attempt, min_samples) -> tuple[int, int]:
    """Rule 5 learning (recovery.py `adaptive_plan`) for FAILURE record `i`: the static rung
    while it has fewer than `min_samples` trials, else the candidate with the best
    (successes + 1) / (trials + 2) among those with the minimum, ties by ladder order;
    ESCALATION when no rung applies. Returns (strategy, row of `State.adaptive_log`), the
    row holding each candidate's strategy, trials and successes for `materialize.py`."""
    inputs, fleet, learned = run.inputs, run.fleet, state.learned
    failure_type, rungs = inputs.failure_type[i], inputs.rungs[i]
    log, counters = state.adaptive_log, state.counters
    row = counters[ADAPTIVE_SIZE]  # one row per FAILURE at most: it never fills
    counters[ADAPTIVE_SIZE] = row + 1
    for col in range(0, log.shape[1], 3):
        log[row, col] = -1
    n = 0
    static = best = ESCALATION
    exploring = False
    best_trials = best_successes = 0
    for rung in range(attempt, fleet.ladders.shape[1]):
        s = fleet.ladders[failure_type, rung]
        if s < 0:
            break
        if s == REDUCED_BATCH and rungs & RUNG_BATCH == 0:
            continue
        if s == REDUCED_PRECISION and rungs & RUNG_PRECISION == 0:
            continue
        if s == FALLBACK_CPU and class_circuit == fleet.cpu_circuit:
            s = DIFFERENT_WORKER
        at = _learned_at(state, failure_type, class_circuit, s)
        trials, successes = learned[at, TRIALS], learned[at, TRIAL_SUCCESSES]
        log[row, 3 * n] = s
        log[row, 3 * n + 1] = trials
        log[row, 3 * n + 2] = successes
        if n == 0:
            static, exploring = s, trials < min_samples
        n += 1
        if trials < min_samples:
            continue
        # (s + 1) / (t + 2) compared without division, as the core does.
        if best_trials == 0 or (successes + 1) * (best_trials + 2) > (best_successes + 1) * (
            trials + 2
        ):
            best, best_trials, best_successes = s, trials, successes
    if n == 0:
        return ESCALATION, row
    return (static if exploring else best), row
