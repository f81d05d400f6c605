"""The log of derived records a replay writes (`State.log`, read by `materialize.py`)."""

from __future__ import annotations

from .codes import LOG_FULL
from .jit import step
from .state import LOG_SIZE, RECORD, ROW_RECORD, ROW_TS, ROW_TYPE, ROW_VERSION, STATUS, VERSION


@step
def log_row(state, row_type, ts) -> int:
    """A new row caused by the input being applied, under the settings version in force:
    its index, or -1 (and LOG_FULL) when the log is full."""
    counters, log = state.counters, state.log
    n = counters[LOG_SIZE]
    if n >= log.shape[0]:
        counters[STATUS] = LOG_FULL
        return -1
    counters[LOG_SIZE] = n + 1
    log[n, ROW_TYPE] = row_type
    log[n, ROW_RECORD] = counters[RECORD]
    log[n, ROW_TS] = ts
    log[n, ROW_VERSION] = counters[VERSION]
    return n
