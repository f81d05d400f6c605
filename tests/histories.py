"""A small deterministic builder of input histories for the core's tests.

    h = History()
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH")
    outputs = h.run()          # every derived record, in order

Event ids are `e1`, `e2`, … in the order built, so a scenario reads top to bottom.
"""

from __future__ import annotations

from typing import Any

from faultstream.events.config import CoreSettings
from faultstream.events.models import (
    Alert,
    CircuitFigures,
    CircuitStateChanged,
    ConfigChanged,
    DerivedRecord,
    InputRecord,
    Operator,
    RecoveryCommand,
    Tick,
    WorkerEvent,
)
from faultstream.processors.core import FleetCore


class History:
    def __init__(self, hardware_class: str = "cuda", task_type: str = "bert") -> None:
        self.records: list[InputRecord] = []
        self.hardware_class = hardware_class
        self.task_type = task_type
        self._next = 0

    def _id(self) -> str:
        self._next += 1
        return f"e{self._next}"

    def event(self, kind: str, worker: str, ts: int, **fields: Any) -> WorkerEvent:
        fields.setdefault("hardware_class", self.hardware_class)
        if kind != "HEARTBEAT":
            fields.setdefault("task_id", f"t-{worker}")
        if kind in ("TASK_STARTED", "SUCCESS", "FAILURE"):
            fields.setdefault("task_type", self.task_type)
        record = WorkerEvent(event_id=self._id(), kind=kind, ts=ts, worker_id=worker, **fields)
        self.records.append(record)
        return record

    def heartbeat(self, worker: str, ts: int, **fields: Any) -> WorkerEvent:
        return self.event("HEARTBEAT", worker, ts, **fields)

    def started(self, worker: str, ts: int, **fields: Any) -> WorkerEvent:
        return self.event("TASK_STARTED", worker, ts, **fields)

    def checkpoint(self, worker: str, ts: int, seq: int, **fields: Any) -> WorkerEvent:
        return self.event("CHECKPOINT", worker, ts, checkpoint_seq=seq, **fields)

    def success(self, worker: str, ts: int, **fields: Any) -> WorkerEvent:
        return self.event("SUCCESS", worker, ts, **fields)

    def failure(
        self, worker: str, ts: int, failure_type: str | None = "SOFTWARE_ERROR", **fields: Any
    ) -> WorkerEvent:
        return self.event("FAILURE", worker, ts, failure_type=failure_type, **fields)

    def tick(self, ts: int) -> Tick:
        record = Tick(event_id=self._id(), ts=ts)
        self.records.append(record)
        return record

    def operator(self, action: str, circuit_kind: str, circuit_id: str, ts: int) -> Operator:
        record = Operator(
            event_id=self._id(),
            ts=ts,
            action=action,
            circuit_kind=circuit_kind,
            circuit_id=circuit_id,
            actor="alice",
        )
        self.records.append(record)
        return record

    def config(self, ts: int, config: dict[str, Any]) -> ConfigChanged:
        record = ConfigChanged(event_id=self._id(), ts=ts, config=config, actor="alice")
        self.records.append(record)
        return record

    def run(self, settings: CoreSettings | None = None) -> list[DerivedRecord]:
        return run(self.records, settings)


def run(
    records: list[InputRecord], settings: CoreSettings | None = None, core: FleetCore | None = None
) -> list[DerivedRecord]:
    core = core or FleetCore(settings)
    return [out for record in records for out in core.process(record)]


def transitions(outputs: list[DerivedRecord]) -> list[CircuitStateChanged]:
    return [o for o in outputs if isinstance(o, CircuitStateChanged)]


def commands(outputs: list[DerivedRecord]) -> list[RecoveryCommand]:
    return [o for o in outputs if isinstance(o, RecoveryCommand)]


def figures(outputs: list[DerivedRecord]) -> list[CircuitFigures]:
    return [o for o in outputs if isinstance(o, CircuitFigures)]


def alerts(outputs: list[DerivedRecord]) -> list[Alert]:
    return [o for o in outputs if isinstance(o, Alert)]


def without_alerts(outputs: list[DerivedRecord]) -> list[DerivedRecord]:
    """The circuits' and commands' records: for the tests of other rules than alerts."""
    return [o for o in outputs if not isinstance(o, Alert)]


def moves(outputs: list[DerivedRecord]) -> list[tuple[str, str, str, str]]:
    """Transitions as (kind, id, from, to), the shape most assertions want."""
    return [
        (t.circuit_kind.value, t.circuit_id, t.from_state.value, t.to_state.value)
        for t in transitions(outputs)
    ]


def core_settings(**changes: Any) -> CoreSettings:
    """Default settings with nested changes, e.g. core_settings(recovery={"max_retries": 5})."""
    return CoreSettings().merged(changes)
