"""The small integers the compiled twin works in instead of strings: record kinds, failure
types, circuit kinds and states, operator actions, recovery strategies, and the reasons a
replay stops short."""

from __future__ import annotations

import numpy as np

from faultstream.events.config import AttributionSettings
from faultstream.events.models import CircuitKind, FailureType, RecoveryStrategy

from .jit import step

# Record kinds; worker events first, so `kind <= FAILURE` means "a worker event".
HEARTBEAT, TASK_STARTED, CHECKPOINT, SUCCESS, FAILURE, TICK, OPERATOR, CONFIG = range(8)
KIND_CODE = {
    "HEARTBEAT": HEARTBEAT,
    "TASK_STARTED": TASK_STARTED,
    "CHECKPOINT": CHECKPOINT,
    "SUCCESS": SUCCESS,
    "FAILURE": FAILURE,
    "TICK": TICK,
    "OPERATOR": OPERATOR,
    "CONFIG_CHANGED": CONFIG,
}

FAILURE_TYPES = tuple(FailureType)
FAILURE_CODE = {failure_type: code for code, failure_type in enumerate(FAILURE_TYPES)}
WORKER_DISCONNECTION = FAILURE_CODE[FailureType.WORKER_DISCONNECTION]

# Circuit kinds by rank (the core's order when due moments tie), and their states.
WORKER, HARDWARE_CLASS, TASK_TYPE = 0, 1, 2
KINDS = (CircuitKind.WORKER, CircuitKind.HARDWARE_CLASS, CircuitKind.TASK_TYPE)
RANK = {kind: rank for rank, kind in enumerate(KINDS)}
CLOSED, OPEN, HALF_OPEN, FORCED_OPEN = range(4)


@step
def openish(state: int) -> int:
    """1 for OPEN or FORCED_OPEN (refusing work), else 0."""
    return 1 if state == OPEN or state == FORCED_OPEN else 0  # noqa: SIM109 (numba)


# An OPERATOR record's action.
RESET, FORCE_OPEN = 0, 1

STRATEGIES = tuple(RecoveryStrategy)
STRATEGY_CODE = {strategy: code for code, strategy in enumerate(STRATEGIES)}
RUNG_BATCH, RUNG_PRECISION = 1, 2  # which attribute rungs of the ladder a failure allows

# Why a replay stopped short. The first two the caller cannot fix (it falls back to the
# core); the last two it fixes by running again with a bigger buffer.
OK, ROUNDING_TIE, BACKOFF_EXHAUSTED, LOG_FULL, HEAP_FULL, CHANGES_FULL = range(6)
BACKOFF_STEPS = 4096
WHY = {
    ROUNDING_TIE: "a due moment too close to a rounding tie",
    BACKOFF_EXHAUSTED: f"a circuit tripped more than {BACKOFF_STEPS} times in a row",
}


class UnsupportedHistory(Exception):
    """The compiled twin cannot replay this history exactly; use the core."""


def attribution_ranks(attribution: AttributionSettings) -> np.ndarray:
    """Failure type code -> the rank of the circuit a failure of that type counts on."""
    return np.array([RANK[attribution.circuit_for(ft)] for ft in FAILURE_TYPES], np.int64)
