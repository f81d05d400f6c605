"""The compiled twin: `FleetCore`'s rules over a whole history as one numba loop, to
derive every record a replay emits, or to score many configurations for the tuner.

    encoded = encode_history(records, settings)   # once: ids, strings, settings versions
    log = run(encoded)                            # the hot path: no strings, no objects
    derived = materialize(log, encoded)           # the DerivedRecords FleetCore emits

`replay_compiled(records, settings)` does all three. Its output equals
`[out for r in records for out in FleetCore(settings).process(r)]` byte for byte (a
property test holds it to that). `replay_compiled_table(table, settings)` does the same
from Arrow columns (`encode_table` of a source's `input_columns(window, REPLAY_COLUMNS)`:
no record is built but for derived output). Scoring runs the same kernel with the
scorer watching instead of the log (`score_grid` over `encode_history(records,
commands=False)`). Anything it cannot replay exactly raises `UnsupportedHistory` with the
reason, and the caller falls back to FleetCore.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from faultstream.events.config import CoreSettings
from faultstream.events.models import DerivedRecord, InputRecord

from .codes import UnsupportedHistory
from .columns import CIRCUIT_COLUMNS, EVENT_HASH, INPUT_COLUMNS, REPLAY_COLUMNS, encode_table
from .encode import Encoded, encode_history
from .materialize import Log, materialize
from .runs import ScoreTotals, run, score_grid

__all__ = [
    "CIRCUIT_COLUMNS",
    "EVENT_HASH",
    "INPUT_COLUMNS",
    "REPLAY_COLUMNS",
    "Encoded",
    "Log",
    "ScoreTotals",
    "UnsupportedHistory",
    "encode_history",
    "encode_table",
    "materialize",
    "replay_compiled",
    "replay_compiled_table",
    "run",
    "score_grid",
]


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
