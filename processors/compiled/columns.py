"""A history stored as Arrow columns, encoded for the compiled core without a record per
row: the table a DuckDB file or the read models give (`input_columns(window,
REPLAY_COLUMNS)` in processors/offline/sources.py). The tuner's `encode_columns` does the shared
part; the extras (attempts, task ids, checkpoints, the ladder's attributes, settings
changes) are read column by column here, and `TableFields` hands `materialize.py` the
strings of the few records that cause derived output, by index.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faultstream.events.config import CoreSettings
from faultstream.processors.offline.sources import REPLAY_COLUMNS
from faultstream.processors.offline.tune.encode import (
    CHECKPOINT,
    FAILURE,
    TASK_STARTED,
    encode_columns,
)

from .encode import CONFIG, Encoded, Extras, assemble, rung_bits

_CONFIG_KIND = "CONFIG_CHANGED"


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


def encode_table(table: pa.Table, settings: CoreSettings | None = None) -> Encoded:
    """`encode_history` of the history in `table` (one row per input record, in order,
    holding at least `REPLAY_COLUMNS`); raises UnsupportedHistory as it does."""
    missing = [c for c in REPLAY_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"input columns lack {', '.join(missing)} (read REPLAY_COLUMNS)")
    is_config = pc.equal(table["kind"], _CONFIG_KIND).to_numpy(zero_copy_only=False)
    configs = np.flatnonzero(is_config)
    standin = table
    if len(configs):  # a control record like a TICK for the tuner's encoder
        at = table.column_names.index("kind")
        standin = table.set_column(at, "kind", pc.if_else(is_config, "TICK", table["kind"]))
    base = encode_columns(standin)
    kind = base.kind.copy()
    kind[configs] = CONFIG
    n = len(kind)

    def column(name: str, rows: np.ndarray) -> pa.Array:
        chosen = table[name].filter(pa.array(rows))
        return chosen.combine_chunks() if isinstance(chosen, pa.ChunkedArray) else chosen

    with_task = (kind >= TASK_STARTED) & (kind <= FAILURE)
    attempt = np.where(with_task, _ints(table["attempt"]), 0)
    task_key = np.full(n, -1, np.int64)
    keys = pc.dictionary_encode(column("task_id", with_task), null_encoding="encode")
    task_key[with_task] = keys.indices.to_numpy(zero_copy_only=False)
    key_rank = np.zeros(len(keys.dictionary), np.int64)  # UTF-8 byte order: Python's too
    key_rank[pc.sort_indices(keys.dictionary).to_numpy()] = np.arange(len(keys.dictionary))
    checkpoint_seq = np.where(kind == CHECKPOINT, _ints(table["checkpoint_seq"]), 0)
    extras = Extras(attempt, task_key, key_rank, checkpoint_seq, _rungs(kind, column))
    texts = table["config"].take(pa.array(configs, pa.int64())).to_pylist()
    configs_in_force = [
        (i, json.loads(text)) for i, text in zip(configs.tolist(), texts, strict=True)
    ]
    return assemble(TableFields(table), base, kind, extras, configs_in_force, settings)


def _ints(values: pa.ChunkedArray) -> np.ndarray:
    """A whole integer column (nulls as 0): cheaper than filtering its thousands of chunks."""
    return pc.fill_null(values, 0).to_numpy().astype(np.int64)


def _rungs(kind: np.ndarray, column: Any) -> np.ndarray:
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
