"""The fleet's circuits as the GET /api/circuit-breakers document (CONTRACT.md), and its
workers and capacity per hardware class as the dashboard shows them; `figures` gives one
circuit's share of those views as the `circuit_figures` record the core publishes, from the
same functions (`available`, `worker_figures`, `capacity`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from faultstream.events.health import fleet_aggregate
from faultstream.events.models import CircuitFigures, trusted

from .circuit import CLOSED, HARDWARE_CLASS, OPENISH, WORKER, Circuit

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


def worker_figures(worker: Worker) -> tuple[str, bool, bool]:
    """A worker's hardware class, whether it is live (not lost) and whether it is
    available: what workers_view shows and a worker circuit's figures carry."""
    return worker.hardware_class, not worker.lost, available(worker)


def workers_view(workers: Iterable[Worker], now: int) -> dict[str, dict[str, Any]]:
    """Each known worker at `now`, by id: liveness, its circuit and whether it is available."""
    view = {}
    for worker in sorted(workers, key=lambda w: w.id):
        hardware_class, live, free = worker_figures(worker)
        view[worker.id] = {
            "hardware_class": hardware_class,
            "status": "live" if live else "lost",
            "last_seen": worker.last_ts,
            "silent_s": (now - worker.last_ts) / 1000,
            "state": str(worker.circuit.state),
            "health_percentage": worker.circuit.health,
            "available": free,
        }
    return view


def capacity(members: Iterable[Worker]) -> tuple[int, int, int]:
    """(known, live, available) among the workers of one hardware class: capacity_view's
    figures of a class, and those its circuit_figures carry."""
    known = live = free = 0
    for worker in members:
        known += 1
        live += not worker.lost
        free += available(worker)
    return known, live, free


def capacity_view(
    workers: Iterable[Worker], hardware_classes: dict[str, Circuit]
) -> dict[str, dict[str, Any]]:
    """Per hardware class (every class circuit, even one without workers): its circuit's
    state, its known workers, the live ones, and the available ones (`available`)."""
    members: dict[str, list[Worker]] = {class_id: [] for class_id in hardware_classes}
    for worker in workers:
        members[worker.hardware_class].append(worker)  # a worker's class always has a circuit
    view = {}
    for class_id, circuit in sorted(hardware_classes.items()):
        known, live, free = capacity(members[class_id])
        view[class_id] = {"state": str(circuit.state), "workers": known, "live": live,
                          "available": free}  # fmt: skip
    return view


def figures(
    circuit: Circuit,
    ts: int,
    caused_by: str,
    event_id: str,
    worker: Worker | None = None,
    class_capacity: tuple[int, int, int] | None = None,
) -> CircuitFigures:
    """One circuit's figures at `ts` as the views give them, under `event_id` (ids.py
    `figures_ids`): its state, counters and health (circuits_view); for a worker circuit,
    its `worker` (None: not known) as workers_view shows it; for a hardware_class circuit,
    its `class_capacity` (workers.py `ClassMembers.capacity`, the counts `capacity` gives)."""
    hardware_class = live = free = None
    known = live_workers = available_workers = None
    if circuit.rank == WORKER and worker is not None:
        hardware_class, live, free = worker_figures(worker)
    elif circuit.rank == HARDWARE_CLASS:
        known, live_workers, available_workers = class_capacity or (0, 0, 0)
    return trusted(CircuitFigures, {
        "event_id": event_id,
        "ts": ts,
        "circuit_kind": circuit.kind,
        "circuit_id": circuit.id,
        "state": circuit.state,
        "consecutive_failures": circuit.consecutive_failures,
        "half_open_successes": circuit.half_open_successes,
        "trips": circuit.trips,
        "total_trips": circuit.total_trips,
        "total_successes": circuit.total_successes,
        "total_failures": circuit.total_failures,
        "health": circuit.health,
        "caused_by": caused_by,
        "hardware_class": hardware_class,
        "live": live,
        "available": free,
        "workers": known,
        "live_workers": live_workers,
        "available_workers": available_workers,
    })  # fmt: skip
