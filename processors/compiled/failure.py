"""A FAILURE in the compiled core (fleet.py `_on_failure`, recovery.py `plan_failure`):
counted on the circuit its type names (or on the class by the fleet guard), then one
command, logged with what `materialize.py` needs to rebuild the plan. Called from
`kernel.py`'s loop; the state and log layouts are `state.py`'s."""

from __future__ import annotations

from numba import njit

from .encode import RUNG_BATCH, RUNG_PRECISION, STRATEGY_CODE
from .state import (
    B_GUARD,
    B_TYPE,
    C_CF,
    C_DUE_MS,
    C_STATE,
    CLOSED,
    HALF_OPEN,
    L_A,
    L_B,
    L_C,
    L_D,
    L_E,
    L_F,
    L_G,
    L_H,
    L_I,
    L_J,
    T_COMMAND,
    W_STARTED,
    _count_failure,
    _openish,
    _pick_target,
    _row,
)  # fmt: skip

S_DELAYED = STRATEGY_CODE["DELAYED_RETRY"]
S_DIFFERENT_WORKER = STRATEGY_CODE["DIFFERENT_WORKER"]
S_DIFFERENT_CLASS = STRATEGY_CODE["DIFFERENT_HARDWARE_CLASS"]
S_BATCH = STRATEGY_CODE["REDUCED_BATCH_SIZE"]
S_PRECISION = STRATEGY_CODE["REDUCED_PRECISION"]
S_FALLBACK_CPU = STRATEGY_CODE["FALLBACK_CPU"]
S_ESCALATION = STRATEGY_CODE["ESCALATION"]


@njit(cache=True, nogil=True)
def _moves_task(strategy: int) -> bool:
    """recovery.py's MOVES_TASK: it names a target worker and carries the checkpoint."""
    if strategy == S_DIFFERENT_WORKER or strategy == S_DIFFERENT_CLASS:  # noqa: SIM109 (numba)
        return True
    return strategy == S_FALLBACK_CPU


@njit(cache=True, nogil=True)
def _on_failure(
    i, w, here, cw, c_task, now, ver, ft, attempt, rungs, p, key, circ, rto, work, cls,
    hdue, hk, log, logf, acc, started, has_checkpoint, checkpoint, members, n_members,
    class_offsets, circuit_rank, circuit_order, circuit_worker, worker_circuit,
    cpu_circuit, ladders, failure_threshold, backoff_s, backoff_len, backoff_done, ranks,
    max_retries, guard_fraction, guard_min,
):  # fmt: skip
    """fleet.py `_on_failure`: counted on one circuit (or on the class by the fleet guard),
    then one command planned by rules 1-5 of recovery.py `plan_failure`."""
    if started[p] == 1:
        started[p] = 0
        work[w, W_STARTED] -= 1
    rank = ranks[ver, ft]
    c = cw if rank == 0 else (here if rank == 1 else c_task)
    guarded = 0
    if rank == 0:
        state = circ[cw, C_STATE]
        would_open = state == HALF_OPEN or (
            state == CLOSED and circ[cw, C_CF] + 1 >= failure_threshold[ver, 0]
        )
        live = cls[here, 0]
        if (
            would_open
            and live >= guard_min[ver]
            and (cls[here, 1] + 1) / live > guard_fraction[ver]
        ):
            guarded = 1
            c = here
    _count_failure(
        c, now, i, ver, ft, B_GUARD if guarded else B_TYPE, circ, rto, work, cls, hdue,
        hk, log, logf, acc, circuit_rank, circuit_order, circuit_worker,
        failure_threshold, backoff_s, backoff_len, backoff_done,
    )  # fmt: skip
    state_w = circ[cw, C_STATE]
    state_hw = circ[here, C_STATE]
    state_tt = circ[c_task, C_STATE]
    target_class = here
    if attempt >= max_retries[ver]:
        strategy = S_ESCALATION
    elif _openish(state_w):
        strategy = S_DIFFERENT_WORKER
    elif _openish(state_hw):
        if here == cpu_circuit:
            strategy = S_DELAYED
        else:
            strategy = S_DIFFERENT_CLASS
            target_class = cpu_circuit
    elif _openish(state_tt):
        strategy = S_DELAYED
    else:  # the ladder: rung `attempt`, rungs that cannot apply skipped
        strategy = S_ESCALATION
        for rung in range(attempt, ladders.shape[1]):
            s = ladders[ft, rung]
            if s < 0:
                break
            if s == S_BATCH and rungs & RUNG_BATCH == 0:
                continue
            if s == S_PRECISION and rungs & RUNG_PRECISION == 0:
                continue
            if s == S_FALLBACK_CPU:
                if here == cpu_circuit:
                    s = S_DIFFERENT_WORKER
                else:
                    target_class = cpu_circuit
            strategy = s
            break
    row = _row(log, acc, T_COMMAND, i, now, ver)
    if row < 0:
        return
    log[row, L_A] = strategy
    log[row, L_B] = -1
    log[row, L_C] = 0
    if _moves_task(strategy):
        log[row, L_C] = has_checkpoint[key]
        log[row, L_D] = checkpoint[key]
        log[row, L_B] = _pick_target(
            target_class, w, members, n_members, class_offsets, work, circ, worker_circuit
        )
    elif strategy == S_ESCALATION:
        has_checkpoint[key] = 0  # the task is given up: forget it
    log[row, L_E] = guarded
    log[row, L_F] = state_w
    log[row, L_G] = state_hw
    log[row, L_H] = state_tt
    log[row, L_I] = circ[here, C_DUE_MS]
    log[row, L_J] = circ[c_task, C_DUE_MS]
    logf[row, 0] = rto[here]
    logf[row, 1] = rto[c_task]
    return
