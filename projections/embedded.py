"""The embedded pipeline: the Kafka-free default behind `faultstream demo`.

Input records go straight into the same pure core (`FleetCore`) the Faust app runs, and
inputs plus derived records go straight into the same `HistoryWriter` the projector uses.
Nothing here decides anything: there is no second implementation of any rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING

from faultstream.events.config import CoreSettings
from faultstream.events.models import DerivedRecord, InputRecord, WorkerEvent
from faultstream.processors.core import FleetCore

from .tables import HistoryWriter

if TYPE_CHECKING:
    from faultstream.events.circuit_view import CircuitView

DerivedListener = Callable[[list[DerivedRecord]], None]
DEFAULT_HEALTH_INTERVAL_MS = 60_000
_HAND_OVER = 4096  # inputs per call into the writer: one call per record costs more than the core


class EmbeddedPipeline:
    """Core + history writer in one process.

    `ingest(record)` returns the derived records and also hands them to every subscriber
    (a coordinator's inbox, say). With a `writer`, the history lands in DuckDB, with a
    health snapshot at every `health_interval_ms` boundary of event time. With `tap`, every
    input record is also written as one JSON line (the `simulate --output` history).
    Records reach the writer in chunks (a call per record costs more than the core itself);
    `flush()` writes everything ingested so far.
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
        self._snapshot_due: float = -math.inf  # the event time of the next health snapshot
        self._listeners: list[DerivedListener] = []
        self._inputs: list[InputRecord] = []
        self._derived: list[DerivedRecord] = []
        self.inputs = 0
        self.derived = 0

    def subscribe(self, listener: DerivedListener) -> None:
        self._listeners.append(listener)

    def circuit_view(self) -> CircuitView:
        """A `CircuitView` fed by this pipeline's circuit records, as a Kafka view is fed
        by the circuits topic (guards and coordinators ask it the same way). It sees the
        changes from now on: take it before ingesting."""
        from faultstream.events.circuit_view import CircuitView  # confluent-kafka: on demand

        view = CircuitView(self.core.settings.circuits)
        self.subscribe(view.apply_many)
        return view

    def ingest(self, record: InputRecord) -> list[DerivedRecord]:
        writer = self.writer
        if writer is not None and record.ts > self._snapshot_due:
            self._snapshot(record.ts)
        out = self.core.process(record)
        self.inputs += 1
        if self.tap is not None:
            self.tap.write(record.model_dump_json())
            self.tap.write("\n")
        if writer is not None:
            self._inputs.append(record)
            if out:
                self._derived.extend(out)
            if len(self._inputs) >= _HAND_OVER:
                self._hand_over()
        if out:
            self.derived += len(out)
            for listener in self._listeners:
                listener(out)
        return out

    def ingest_many(self, records: Iterable[InputRecord]) -> int:
        """Feed a recorded history; returns how many derived records it produced."""
        before = self.derived
        ingest = self.ingest
        for record in records:
            ingest(record)
        return self.derived - before

    def flush(self) -> None:
        """Write every record ingested so far to the history (one writer transaction)."""
        if self.writer is not None:
            self._hand_over()
            self.writer.flush()

    def _hand_over(self) -> None:
        writer = self.writer
        assert writer is not None
        if self._inputs:
            writer.append_inputs(self._inputs)
            self._inputs = []
        if self._derived:
            writer.append_derived(self._derived)
            self._derived = []

    def _snapshot(self, ts: int) -> None:
        # As the projector does (projections/health.py): boundaries are the multiples of
        # the interval from the first input on, and the figures at a boundary B are the
        # state after every input with ts <= B, taken when the first input past B comes.
        interval = self.health_interval_ms
        if self._next_snapshot is None:
            self._next_snapshot = -(-ts // interval) * interval
        else:
            view = self.core.circuits_view()
            while self._next_snapshot < ts:
                self.writer.snapshot_health(self._next_snapshot, view)  # type: ignore[union-attr]
                self._next_snapshot += interval
        self._snapshot_due = self._next_snapshot

    def close(self) -> None:
        if self.writer is not None:
            self._hand_over()
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
