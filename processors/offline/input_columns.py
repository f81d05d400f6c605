"""The history tables' inputs as Arrow columns, read by DuckDB without a record per row
(`input_columns` of the DuckDB and read-model sources in `sources.py`): worker events and
control records merged in `seq` order, the order the processor saw them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from faultstream.projections.schema import CONTROL, EVENTS

# Columns computed from another column of a table: (that column, the expression).
_COMPUTED = {"event_hash": ("event_id", "hash(event_id)")}
# Columns that are one key of the events' `attributes`.
_ATTRIBUTES = ("batch_size", "precision")
# The type of the NULL a table reads for a column it lacks (VARCHAR when not named here).
_NULL_TYPES = {"attempt": "INTEGER", "checkpoint_seq": "BIGINT", "received_at": "BIGINT"}


def read_input_columns(
    con: duckdb.DuckDBPyConnection, columns: Sequence[str], where: str, params: list[int]
) -> pa.Table:
    """`columns` of every input record `where` selects (one row per record, in `seq`
    order; null where a record has no such field; CONFIG_CHANGED's `config` as JSON
    text)."""
    plain = [c for c in columns if c not in _ATTRIBUTES]
    events = _read_in_seq_order(con, "events", EVENTS, plain, where, params)
    control = _read_in_seq_order(con, "control", CONTROL, plain, where, params)
    merged = _merge_by_seq(events, control)
    for name in (c for c in columns if c in _ATTRIBUTES):
        merged = merged.append_column(name, _attribute(con, name, merged, where, params))
    return merged.select(list(columns))


def _read_in_seq_order(
    con: duckdb.DuckDBPyConnection,
    table: str,
    layout: dict[str, Any],
    columns: Sequence[str],
    where: str,
    params: list[int],
) -> pa.Table:
    """One history table's `columns` (and `seq`), ascending by `seq`. The writers append
    in `seq` order, so the rows are read as stored and only sorted when they are not: a
    DuckDB sort of a million rows costs as much as reading them."""
    select = ", ".join(f"{_expression(c, layout)} AS {c}" for c in columns)
    query = f"SELECT {select}, seq FROM {table}{where}"
    result = con.sql(query, params=params).to_arrow_table()
    seq = result["seq"].to_numpy()
    if len(seq) > 1 and not (seq[1:] > seq[:-1]).all():
        result = con.sql(f"{query} ORDER BY seq", params=params).to_arrow_table()
    return result


def _attribute(
    con: duckdb.DuckDBPyConnection, key: str, merged: pa.Table, where: str, params: list[int]
) -> pa.Array:
    """`attributes[key]` of each row of `merged` (null where absent), read only from the
    events that have attributes (few): extracting a key from every row's map costs as
    much as a third of the whole read. (`map_extract(...)[1]`: DuckDB 1.1 has no
    `map_extract_value`.)"""
    having = f"{where} AND" if where else " WHERE"
    found = con.sql(
        f"SELECT seq, map_extract(attributes, '{key}')[1] AS value FROM events"
        f"{having} cardinality(attributes) > 0",
        params=params,
    ).to_arrow_table()
    at = np.searchsorted(merged["seq"].to_numpy(), found["seq"].to_numpy())
    slot = np.full(merged.num_rows, found.num_rows, np.int64)  # the null after the values
    slot[at] = np.arange(found.num_rows)
    values = pa.concat_arrays([*found["value"].chunks, pa.nulls(1, pa.string())])
    return values.take(pa.array(slot))


def _expression(column: str, layout: dict[str, Any]) -> str:
    source, expression = _COMPUTED.get(column, (column, column))
    if source not in layout:
        return f"NULL::{_NULL_TYPES.get(column, 'VARCHAR')}"
    return f"{expression}::VARCHAR" if layout[source][0] == "JSON" else expression


def _merge_by_seq(events: pa.Table, control: pa.Table) -> pa.Table:
    """Two tables each ascending by `seq` (unique across both) as one, by slicing: the few
    control rows land between runs of events without copying (`take` would copy all)."""
    if not control.num_rows or not events.num_rows:
        return pa.concat_tables([events, control])
    at = np.searchsorted(events["seq"].to_numpy(), control["seq"].to_numpy()).tolist()
    pieces, start = [], 0
    for row, cut in enumerate(at):
        if cut > start:
            pieces.append(events.slice(start, cut - start))
        pieces.append(control.slice(row, 1))
        start = cut
    pieces.append(events.slice(start))
    return pa.concat_tables(pieces)
