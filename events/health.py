"""Health figures of CIRCUITS.md (the seed's formulas), shared by core, projector and dashboard."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from .models import CircuitState

_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_CLOSED = CircuitState.CLOSED
_FORCED_OPEN = CircuitState.FORCED_OPEN


def circuit_health(
    state: CircuitState | str,
    consecutive_failures: int = 0,
    half_open_successes: int = 0,
    total_trips: int = 0,
) -> float:
    """0-100 for one circuit; `total_trips` counts every opening in the circuit's life."""
    if state == _CLOSED:
        if consecutive_failures <= 0:
            return 100.0
        return float(max(70, 100 - 10 * consecutive_failures))
    if state == _HALF_OPEN:
        return float(min(40 + 10 * half_open_successes, 60))
    if state == _OPEN:
        return float(max(0, 20 - 2 * total_trips))
    if state == _FORCED_OPEN:
        return 0.0
    raise ValueError(f"state: unknown circuit state {state!r}")


class FleetAggregate(TypedDict):
    total_circuits: int
    open_circuits: int
    half_open_circuits: int
    closed_circuits: int
    average_health: float
    overall_health: float


def fleet_aggregate(circuits: Iterable[tuple[CircuitState | str, float]]) -> FleetAggregate:
    """The fleet figures from (state, health) pairs; forced-open counts as open.

    An empty fleet is fully healthy (100), so a fresh dashboard does not alarm.
    """
    total = opened = half_open = closed = 0
    health_sum = 0.0
    for state, health in circuits:
        total += 1
        health_sum += health
        if state in (_OPEN, _FORCED_OPEN):
            opened += 1
        elif state == _HALF_OPEN:
            half_open += 1
        elif state == _CLOSED:
            closed += 1
    if total == 0:
        return FleetAggregate(
            total_circuits=0,
            open_circuits=0,
            half_open_circuits=0,
            closed_circuits=0,
            average_health=100.0,
            overall_health=100.0,
        )
    return FleetAggregate(
        total_circuits=total,
        open_circuits=opened,
        half_open_circuits=half_open,
        closed_circuits=closed,
        average_health=round(health_sum / total, 6),
        overall_health=overall_health(total, opened, half_open),
    )


def overall_health(total: int, opened: int, half_open: int) -> float:
    """`100 - (open + 0.4 x half_open) / total x 100`; 100 for an empty fleet."""
    if total == 0:
        return 100.0
    return round(100 - (opened + 0.4 * half_open) / total * 100, 6)
