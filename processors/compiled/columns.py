"""A history stored as Arrow columns, encoded for the compiled twin without a record per
row: the table a DuckDB file, the read models or a JSON Lines scan give
(`input_columns(window, columns)` of processors/offline/sources.py). The low-cardinality
strings are factorized by Arrow's dictionary encoding in C++, each column filtered on its
own; `TableFields` hands `materialize.py` the strings of the few records that cause
derived output, by index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faultstream.events.classify import classify_message
from faultstream.events.config import CoreSettings

from .codes import (
    CHECKPOINT,
    CONFIG,
    FAILURE,
    FAILURE_CODE,
    FORCE_OPEN,
    HEARTBEAT,
    OPERATOR,
    RANK,
    RESET,
    TASK_STARTED,
)
from .encode import (
    CommandFields,
    Encoded,
    _Fields,
    _kind_codes,
    assemble,
    dictionary_codes,
    rung_bits,
    sequenced_column,
)

# The fields the circuits read (an encoding without commands: what scoring reads).
CIRCUIT_COLUMNS = (
    "event_id",
    "kind",
    "ts",
    "received_at",
    "worker_id",
    "hardware_class",
    "task_id",
    "task_type",
    "failure_type",
    "message",
    "action",
    "circuit_kind",
    "circuit_id",
)
# Optional: `hash(event_id)` as the source computed it (any hash: repeats are re-checked).
EVENT_HASH = "event_hash"
# What a source's `input_columns` gives by default: those, what CONFIG_CHANGED holds, and
# the event ids' hash as UBIGINT, the cheap repeat finder.
INPUT_COLUMNS = (*CIRCUIT_COLUMNS, "actor", "config", EVENT_HASH)
# What the recovery commands read besides: the two attributes the ladder reads (a source
# extracts them, not the whole map).
REPLAY_COLUMNS = (*INPUT_COLUMNS, "attempt", "checkpoint_seq", "batch_size", "precision")


class TableFields:
    """`RecordFields` of an `input_columns` table."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def column(self, name: str, rows: np.ndarray) -> list:
        return self.table[name].take(pa.array(rows, pa.int64())).to_pylist()

    def attributes(self, rows: np.ndarray) -> list[Mapping[str, str]]:
        """Only the attributes the ladder reads (recovery.py `ladder_plan`)."""
        pairs = zip(self.column("batch_size", rows), self.column("precision", rows), strict=True)
        return [
            {k: v for k, v in (("batch_size", b), ("precision", p)) if v is not None}
            for b, p in pairs
        ]


def encode_table(
    table: pa.Table, settings: CoreSettings | None = None, *, commands: bool = True
) -> Encoded:
    """`encode_history` of the history in `table` (one row per input record, in order,
    holding at least `REPLAY_COLUMNS`, or `CIRCUIT_COLUMNS` without commands); raises
    UnsupportedHistory as it does. Event ids are keyed on the table's `EVENT_HASH` column
    when it has one (every repeat re-checked on the strings), else dictionary-encoded: at
    millions of distinct ids that encoding is the costliest step."""
    needed = REPLAY_COLUMNS if commands else CIRCUIT_COLUMNS
    missing = [c for c in needed if c not in table.column_names and c != EVENT_HASH]
    if missing:
        read = "REPLAY_COLUMNS" if commands else "CIRCUIT_COLUMNS"
        raise ValueError(f"input columns lack {', '.join(missing)} (read {read})")
    fields = _column_fields(table)
    extras = _column_commands(table, fields.kind) if commands else None
    return assemble(fields, extras, TableFields(table), settings)


def _decision_times(table: pa.Table) -> np.ndarray:
    """Each row's decision time: `received_at`, or its `ts` where there is none."""
    ts = table["ts"]
    if "received_at" in table.column_names and table["received_at"].null_count < len(ts):
        ts = pc.coalesce(table["received_at"], ts)
    return ts.combine_chunks().to_numpy(zero_copy_only=False).astype(np.int64)


def _column_fields(table: pa.Table) -> _Fields:
    kind_codes, kinds = dictionary_codes(table["kind"])
    kind = _kind_codes(kinds)[kind_codes] if kinds else np.zeros(0, np.int8)
    ts = _decision_times(table)
    own_ts = table["ts"].combine_chunks().to_numpy(zero_copy_only=False).astype(np.int64)
    event_ids = table["event_id"]
    if EVENT_HASH in table.column_names and table[EVENT_HASH].null_count == 0:
        # The source hashed the ids (in parallel, as it read them): far cheaper than
        # dictionary-encoding millions of distinct strings; repeats are re-checked.
        hashes = table[EVENT_HASH].combine_chunks().to_numpy(zero_copy_only=False)
        ids, exact_ids = hashes.astype(np.uint64).view(np.int64), event_ids
    else:
        ids, exact_ids = dictionary_codes(event_ids, values=False)[0], None
    is_worker = kind <= FAILURE
    has_task = is_worker & (kind != HEARTBEAT) & (kind != CHECKPOINT)

    def rows(name: str, mask: np.ndarray) -> pa.ChunkedArray:  # one column, not the table
        return table[name].filter(pa.array(mask))

    w_codes, worker_ids = dictionary_codes(rows("worker_id", is_worker))
    hw_codes, classes = dictionary_codes(rows("hardware_class", is_worker))
    tt_codes, task_types = dictionary_codes(rows("task_type", has_task))
    task_codes, _ = dictionary_codes(rows("task_id", has_task), values=False)

    is_failure = kind == FAILURE
    type_codes, failure_types = dictionary_codes(rows("failure_type", is_failure))
    by_type = np.array([-1 if t is None else FAILURE_CODE[t] for t in failure_types], np.int8)
    failure_codes = by_type[type_codes] if len(failure_types) else np.zeros(0, np.int8)
    unclassified = np.flatnonzero(failure_codes == -1)
    if len(unclassified):  # classified from the message, once per distinct message
        message_codes, messages = dictionary_codes(rows("message", is_failure).take(unclassified))
        by_message = np.array([FAILURE_CODE[classify_message(m)] for m in messages], np.int8)
        failure_codes[unclassified] = by_message[message_codes]

    is_operator = kind == OPERATOR
    operators = [
        (RANK[circuit_kind], circuit_id, FORCE_OPEN if action == "FORCE_OPEN" else RESET)
        for circuit_kind, circuit_id, action in zip(
            rows("circuit_kind", is_operator).to_pylist(),
            rows("circuit_id", is_operator).to_pylist(),
            rows("action", is_operator).to_pylist(),
            strict=True,
        )
    ]
    return _Fields(
        kind,
        ts,
        own_ts,
        ids,
        exact_ids,
        *sequenced_column(event_ids),
        w_codes,
        worker_ids,
        hw_codes,
        classes,
        tt_codes,
        task_types,
        task_codes,
        failure_codes,
        operators,
    )


def _column_commands(table: pa.Table, kind: np.ndarray) -> CommandFields:
    def column(name: str, rows: np.ndarray) -> pa.Array:
        chosen = table[name].filter(pa.array(rows))
        return chosen.combine_chunks() if isinstance(chosen, pa.ChunkedArray) else chosen

    n = len(kind)
    with_task = (kind >= TASK_STARTED) & (kind <= FAILURE)
    attempt = np.where(with_task, _ints(table["attempt"]), 0)
    task_key = np.full(n, -1, np.int64)
    keys = pc.dictionary_encode(column("task_id", with_task), null_encoding="encode")
    task_key[with_task] = keys.indices.to_numpy(zero_copy_only=False)
    key_rank = np.zeros(len(keys.dictionary), np.int64)  # UTF-8 byte order: Python's too
    key_rank[pc.sort_indices(keys.dictionary).to_numpy()] = np.arange(len(keys.dictionary))
    checkpoint_seq = np.where(kind == CHECKPOINT, _ints(table["checkpoint_seq"]), 0)
    configs = np.flatnonzero(kind == CONFIG)
    texts = table["config"].take(pa.array(configs, pa.int64())).to_pylist()
    return CommandFields(
        attempt,
        task_key,
        key_rank,
        checkpoint_seq,
        _rungs(kind, column),
        [(i, json.loads(text)) for i, text in zip(configs.tolist(), texts, strict=True)],
    )


def _ints(values: pa.ChunkedArray) -> np.ndarray:
    """A whole integer column (nulls as 0): cheaper than filtering its thousands of chunks."""
    return pc.fill_null(values, 0).to_numpy().astype(np.int64)


def _rungs(kind: np.ndarray, column: Callable[[str, np.ndarray], pa.Array]) -> np.ndarray:
    """RUNG_* bits per FAILURE, decided once per distinct (batch_size, precision)."""
    rungs = np.zeros(len(kind), np.int8)
    is_failure = kind == FAILURE
    failures = np.flatnonzero(is_failure)
    if not len(failures):
        return rungs
    batch = pc.dictionary_encode(column("batch_size", is_failure), null_encoding="encode")
    precision = pc.dictionary_encode(column("precision", is_failure), null_encoding="encode")
    pair = batch.indices.to_numpy(zero_copy_only=False).astype(np.int64) * len(
        precision.dictionary
    ) + precision.indices.to_numpy(zero_copy_only=False)
    distinct, inverse = np.unique(pair, return_inverse=True)
    batches, precisions = batch.dictionary.to_pylist(), precision.dictionary.to_pylist()
    width = len(precisions)
    bits = [rung_bits(batches[code // width], precisions[code % width]) for code in distinct]
    rungs[failures] = np.array(bits, np.int8)[inverse]
    return rungs
