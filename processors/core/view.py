"""The fleet's circuits as the GET /api/circuit-breakers document (CONTRACT.md)."""

from __future__ import annotations

from typing import Any

from faultstream.events.health import fleet_aggregate

from .circuit import Circuit

SECTIONS = ("workers", "hardware_classes", "task_types")  # in circuit rank order


def circuits_view(circuits: tuple[dict[str, Circuit], ...], now: int) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    pairs = []
    for name, by_id in zip(SECTIONS, circuits, strict=True):
        section = {}
        for circuit_id in sorted(by_id):
            circuit = by_id[circuit_id]
            health = circuit.health
            pairs.append((circuit.state, health))
            section[circuit_id] = {
                "state": str(circuit.state),
                "health_percentage": health,
                "total_successes": circuit.total_successes,
                "total_failures": circuit.total_failures,
            }
        sections[name] = section
    return {"timestamp": now, "aggregate": dict(fleet_aggregate(pairs)), **sections}
