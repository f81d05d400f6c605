"""A history held as Arrow columns (a source's `input_columns`), for the tuner.

The compiled twin encodes straight from the columns (`compiled.encode_table`); the records
themselves are built only if something needs them (the exact path, when the compiled one
refuses the history), from the source's validating reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faultstream.events.models import ConfigChanged, InputRecord, received_at


@dataclass
class ColumnarInputs:
    """The inputs a configuration is replayed over (no CONFIG_CHANGED), as columns, and
    the same inputs as records on demand (built once)."""

    table: pa.Table
    _load: Callable[[], Iterable[InputRecord]]
    _records: list[InputRecord] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.table.num_rows

    def records(self) -> list[InputRecord]:
        if self._records is None:
            self._records = list(self._load())
        return self._records


@dataclass(frozen=True)
class ColumnarHistory:
    """A whole history (CONFIG_CHANGED included) as columns; `load` yields the same
    records, in the same order, as models."""

    table: pa.Table
    load: Callable[[], Iterable[InputRecord]]

    def __len__(self) -> int:
        return self.table.num_rows

    def _received_at(self) -> pa.ChunkedArray:
        """Each record's decision time (models.received_at)."""
        table = self.table
        if "received_at" not in table.column_names:
            return table["ts"]
        return pc.coalesce(table["received_at"], table["ts"])

    def newest(self) -> int | None:
        return pc.max(self._received_at()).as_py() if self.table.num_rows else None

    def since(self, oldest: int) -> ColumnarHistory:
        """Only the records received at `oldest` or later."""
        load = self.load
        table = self.table.filter(pc.greater_equal(self._received_at(), oldest))
        return ColumnarHistory(table, lambda: (r for r in load() if received_at(r) >= oldest))

    def config_changes(self) -> list[ConfigChanged]:
        """The CONFIG_CHANGED records, in order (they are few: built from the columns)."""
        rows = self.table.filter(pc.equal(self.table["kind"], "CONFIG_CHANGED"))
        return [
            ConfigChanged(event_id=event_id, ts=ts, config=json.loads(config), actor=actor)
            for event_id, ts, config, actor in zip(
                rows["event_id"].to_pylist(),
                rows["ts"].to_pylist(),
                rows["config"].to_pylist(),
                rows["actor"].to_pylist(),
                strict=True,
            )
        ]

    def inputs(self) -> ColumnarInputs:
        """Without the CONFIG_CHANGED records: what every candidate is replayed over."""
        load = self.load
        kind = self.table["kind"]
        table = self.table.filter(pc.not_equal(kind, "CONFIG_CHANGED"))
        return ColumnarInputs(table, lambda: (r for r in load() if r.kind != "CONFIG_CHANGED"))

    def worker_events(self) -> int:
        """How many worker events (not TICK, OPERATOR, CONFIG_CHANGED) it holds."""
        kind = self.table["kind"]
        control = pc.is_in(kind, pa.array(["TICK", "OPERATOR", "CONFIG_CHANGED"]))
        return int(np.count_nonzero(~control.to_numpy(zero_copy_only=False)))
