"""The core's own views as of its TICKs: what the read side must show.

The core publishes its figures (`circuit_figures`) at each TICK, so the read side shows the
fleet as the core held it right after its newest TICK; these helpers replay a history
through a fresh core and keep its views at each TICK, the independent expectation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faultstream.events.config import CoreSettings
from faultstream.events.models import InputRecord, Tick, received_at
from faultstream.processors.core import FleetCore

EMPTY_FLEET = {"workers": {}, "hardware_classes": {}, "task_types": {}}


def views(core: FleetCore) -> dict[str, Any]:
    return {
        "now": core.now,
        "circuits": core.circuits_view(),
        "workers": core.workers_view(),
        "capacity": core.capacity_view(),
    }


def views_at_ticks(
    records: Iterable[InputRecord], settings: CoreSettings | None = None
) -> list[dict[str, Any]]:
    """The core's views right after each TICK, in order (`now`: the decision time its
    figures carry)."""
    core = FleetCore(settings)
    at_ticks = []
    for record in records:
        core.process(record)
        if isinstance(record, Tick):
            at_ticks.append(views(core))
    return at_ticks


def as_of(at_ticks: list[dict[str, Any]], at: int | None = None) -> dict[str, Any] | None:
    """The views after the last TICK whose figures are dated at or before `at` (None: the
    last TICK); None before the first."""
    shown = [v for v in at_ticks if at is None or v["now"] <= at]
    return shown[-1] if shown else None


def ending_in_a_tick(records: list[InputRecord], event_id: str = "final-tick") -> list[Any]:
    """`records` and then a TICK at the newest decision time, so the core publishes its final
    figures (it publishes them only at a TICK)."""
    last = max(received_at(r) for r in records)
    return [*records, Tick(event_id=event_id, ts=last, received_at=last)]
