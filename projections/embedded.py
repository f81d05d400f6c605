"""The embedded pipeline: the Kafka-free default behind `faultstream demo`.

Input records go straight into the same pure core (`FleetCore`) the Faust app runs, and
inputs plus derived records go straight into the same `HistoryWriter` the projector uses.
Nothing here decides anything: there is no second implementation of any rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import IO

from faultstream.events.config import CoreSettings
from faultstream.events.models import DerivedRecord, InputRecord, WorkerEvent
from faultstream.processors.core import FleetCore

from .tables import HistoryWriter

DerivedListener = Callable[[list[DerivedRecord]], None]
DEFAULT_HEALTH_INTERVAL_MS = 60_000
_INPUT_CHUNK = 4096


class EmbeddedPipeline:
    """Core + history writer in one process.

    `ingest(record)` returns the derived records and also hands them to every subscriber
    (a coordinator's inbox, say). With a `writer`, the history lands in DuckDB, with a
    health snapshot at every `health_interval_ms` boundary of event time. With `tap`, every
    input record is also written as one JSON line (the `simulate --output` history).
    """

    def __init__(
        self,
        settings: CoreSettings | None = None,
        *,
        writer: HistoryWriter | None = None,
        tap: IO[str] | None = None,
        health_interval_ms: int = DEFAULT_HEALTH_INTERVAL_MS,
    ) -> None:
        self.core = FleetCore(settings)
        self.writer = writer
        self.tap = tap
        self.health_interval_ms = health_interval_ms
        self._next_snapshot: int | None = None
        self._listeners: list[DerivedListener] = []
        self._inputs: list[InputRecord] = []
        self.inputs = 0
        self.derived = 0

    def subscribe(self, listener: DerivedListener) -> None:
        self._listeners.append(listener)

    def ingest(self, record: InputRecord) -> list[DerivedRecord]:
        if self.writer is not None:
            self._maybe_snapshot(record.ts)
        out = self.core.process(record)
        self.inputs += 1
        if self.tap is not None:
            self.tap.write(record.model_dump_json())
            self.tap.write("\n")
        if self.writer is not None:
            # Inputs go to the writer in chunks: one call per record costs more than the core.
            self._inputs.append(record)
            if out:
                self._flush_inputs()
                self.writer.append_derived(out)
            elif len(self._inputs) >= _INPUT_CHUNK:
                self._flush_inputs()
        if out:
            self.derived += len(out)
            for listener in self._listeners:
                listener(out)
        return out

    def ingest_many(self, records: Iterable[InputRecord]) -> int:
        """Feed a recorded history; returns how many derived records it produced."""
        before = self.derived
        for record in records:
            self.ingest(record)
        return self.derived - before

    def _flush_inputs(self) -> None:
        if self._inputs:
            self.writer.append_inputs(self._inputs)  # type: ignore[union-attr]
            self._inputs = []

    def _maybe_snapshot(self, ts: int) -> None:
        # The figures at a boundary are the state after every record before it.
        interval = self.health_interval_ms
        if self._next_snapshot is None:
            self._next_snapshot = (ts // interval + 1) * interval
            self.writer.snapshot_health(ts, self.core.circuits_view())  # type: ignore[union-attr]
            return
        if ts < self._next_snapshot:
            return
        view = self.core.circuits_view()
        while self._next_snapshot <= ts:
            self.writer.snapshot_health(self._next_snapshot, view)  # type: ignore[union-attr]
            self._next_snapshot += interval

    def close(self) -> None:
        if self.writer is not None:
            self._flush_inputs()
            if self._next_snapshot is not None:
                self.writer.snapshot_health(self.core.now, self.core.circuits_view())
            self.writer.close()
        if self.tap is not None:
            self.tap.flush()


class EmbeddedTransport:
    """A worker-SDK `Transport` that delivers each event into an embedded pipeline, so a
    simulated (or in-process) worker uses the real `Emitter` unchanged."""

    def __init__(self, pipeline: EmbeddedPipeline) -> None:
        self.pipeline = pipeline

    def send(self, event: WorkerEvent) -> None:
        self.pipeline.ingest(event)

    def flush(self, timeout: float) -> int:
        return 0  # delivery is synchronous: nothing is ever pending

    def close(self, timeout: float) -> None:
        return None
