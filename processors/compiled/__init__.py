"""The compiled core: `FleetCore`'s replay of a whole history as one numba loop.

    encoded = encode_history(records, settings)   # once: ids, strings, settings versions
    log = run(encoded)                            # the hot path: no strings, no objects
    derived = materialize(log, encoded)           # the DerivedRecords FleetCore emits

`replay_compiled(records, settings)` does all three. Its output equals
`[out for r in records for out in FleetCore(settings).process(r)]` byte for byte (a
property test holds it to that). `replay_compiled_table(table, settings)` does the same
from Arrow columns (`encode_table` of a DuckDB file's or the read models'
`input_columns(window, REPLAY_COLUMNS)`: no record is built but for derived output).
Anything it cannot replay exactly raises `UnsupportedHistory` with the reason, and the
caller falls back to FleetCore.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from faultstream.events.config import CoreSettings
from faultstream.events.models import DerivedRecord, InputRecord
from faultstream.processors.offline.tune.encode import UnsupportedHistory
from faultstream.processors.offline.tune.kernel import A_LOG, A_STATUS

from .columns import encode_table
from .encode import Encoded, encode_history
from .heap import STATUS_HEAP_FULL
from .kernel import replay
from .materialize import Log, materialize
from .state import LOG_COLUMNS, STATUS_LOG_FULL, WHY

__all__ = [
    "Encoded",
    "Log",
    "UnsupportedHistory",
    "encode_history",
    "encode_table",
    "materialize",
    "replay_compiled",
    "replay_compiled_table",
    "run",
]


def run(encoded: Encoded, log_capacity: int | None = None) -> Log:
    """The kernel over an encoded history: the derived-record log. The log and the heap
    are sized from the history; in the rare history that overflows one, the kernel runs
    again with it four times larger (a fixed size keeps reallocation off the hot path)."""
    h, b, v = encoded, encoded.base, encoded.versions
    capacity = log_capacity or len(h) // 4 + 4096
    heap_capacity = 2 * (len(b.circuit_rank) + len(b.worker_circuit)) + 1024
    while True:
        rows = np.empty((capacity, LOG_COLUMNS), np.int64)
        floats = np.empty((capacity, 2), np.float64)
        acc = replay(
            h.kind, b.ts, b.skip, b.worker, b.hw, b.tt, b.ftype, b.task, h.attempt,
            h.task_key, h.checkpoint_seq, h.rungs, h.config_version, b.circuit_rank,
            b.circuit_order, b.circuit_worker, b.worker_circuit, h.worker_order,
            h.pair_task_key, h.worker_pairs_offsets, h.worker_pairs, h.n_task_keys,
            h.class_offsets, h.cpu_circuit, h.ladders, v.failure_threshold,
            v.success_threshold, v.recovery_timeout_s, v.backoff_s, v.backoff_len,
            v.backoff_done, v.ranks, v.max_retries, v.heartbeat_s, v.heartbeat_ms,
            v.guard_fraction, v.guard_min, rows, floats, heap_capacity,
        )  # fmt: skip
        status = int(acc[A_STATUS])
        if status == STATUS_LOG_FULL:
            capacity *= 4
            continue
        if status == STATUS_HEAP_FULL:
            heap_capacity *= 4
            continue
        if status != 0:
            raise UnsupportedHistory(WHY[status])
        used = int(acc[A_LOG])
        return Log(rows[:used], floats[:used])


def replay_compiled(
    records: Sequence[InputRecord], settings: CoreSettings | None = None
) -> list[DerivedRecord]:
    """Every derived record of the history, in order, as FleetCore(settings) emits them."""
    encoded = encode_history(records, settings)
    return materialize(run(encoded), encoded)


def replay_compiled_table(
    table: pa.Table, settings: CoreSettings | None = None
) -> list[DerivedRecord]:
    """`replay_compiled` of the history a source's `input_columns(window, REPLAY_COLUMNS)`
    holds: equal to FleetCore(settings) over that source's `inputs(window)`."""
    encoded = encode_table(table, settings)
    return materialize(run(encoded), encoded)
