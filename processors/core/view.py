"""The fleet's circuits as the GET /api/circuit-breakers document (CONTRACT.md), and its
workers and capacity per hardware class as the dashboard shows them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from faultstream.events.health import fleet_aggregate

from .circuit import CLOSED, OPENISH, Circuit

if TYPE_CHECKING:
    from .workers import Worker

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


# --- capacity: who can take work now -----------------------------------------------------


def available(worker: Worker) -> bool:
    """A worker can take work when it is live (not lost), its own circuit is CLOSED and its
    hardware class's circuit is neither OPEN nor FORCED_OPEN (a HALF_OPEN class takes
    probes). The dashboard states this rule beside the figures it gives."""
    return (
        not worker.lost
        and worker.circuit.state is CLOSED
        and worker.hw_circuit.state not in OPENISH
    )


def workers_view(workers: Iterable[Worker], now: int) -> dict[str, dict[str, Any]]:
    """Each known worker at `now`, by id: liveness, its circuit and whether it is available."""
    view = {}
    for worker in sorted(workers, key=lambda w: w.id):
        view[worker.id] = {
            "hardware_class": worker.hardware_class,
            "status": "lost" if worker.lost else "live",
            "last_seen": worker.last_ts,
            "silent_s": (now - worker.last_ts) / 1000,
            "state": str(worker.circuit.state),
            "health_percentage": worker.circuit.health,
            "available": available(worker),
        }
    return view


def capacity_view(
    workers: Iterable[Worker], hardware_classes: dict[str, Circuit]
) -> dict[str, dict[str, Any]]:
    """Per hardware class (every class circuit, even one without workers): its circuit's
    state, its known workers, the live ones, and the available ones (`available`)."""
    view = {
        class_id: {"state": str(circuit.state), "workers": 0, "live": 0, "available": 0}
        for class_id, circuit in sorted(hardware_classes.items())
    }
    for worker in workers:
        row = view[worker.hardware_class]  # a worker's class always has a circuit
        row["workers"] += 1
        row["live"] += not worker.lost
        row["available"] += available(worker)
    return view
