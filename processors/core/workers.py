"""What the core knows of each worker, and the choices made over a hardware class."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from itertools import accumulate

from .circuit import CLOSED, OPENISH, Circuit


class Worker:
    """One worker: liveness, started tasks, recent event ids (for dropping repeats)."""

    __slots__ = (
        "circuit",
        "hardware_class",
        "hw_circuit",
        "id",
        "last_ts",
        "lost",
        "seen",
        "seen_order",
        "tasks",
        "timer_gen",
    )

    def __init__(self, worker_id: str, circuit: Circuit, hardware: Circuit, ts: int) -> None:
        self.id = worker_id
        self.circuit = circuit
        self.hardware_class = hardware.id
        self.hw_circuit = hardware
        self.last_ts = ts  # newest event's ts
        self.lost = False
        self.timer_gen = 0  # the heap entry with this gen is the live lost-worker timer
        self.tasks: dict[str, tuple[int, str | None]] = {}  # started: task_id -> (attempt, type)
        self.seen: set[str] = set()
        self.seen_order: deque[str] = deque()

    # Snapshots: the recent ids are most of a worker's state. Pickled one by one they cost
    # ~0.5 µs each (the decider's snapshot pauses grew with history); as one joined string
    # and their lengths they are two buffers, and `seen` is rebuilt from them.
    _PLAIN = ("id", "circuit", "hardware_class", "hw_circuit", "last_ts", "lost", "timer_gen",
              "tasks")  # fmt: skip

    def __getstate__(self) -> tuple:
        order = self.seen_order
        plain = tuple(getattr(self, name) for name in self._PLAIN)
        return (*plain, "".join(order), array("L", map(len, order)))

    def __setstate__(self, state: tuple) -> None:
        *plain, joined, lengths = state
        for name, value in zip(self._PLAIN, plain, strict=True):
            setattr(self, name, value)
        ends = list(accumulate(lengths))
        order = [joined[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        self.seen_order = deque(order)
        self.seen = set(order)


def remember(seen: set[str], order: deque[str], event_id: str, limit: int) -> None:
    """Add an id to a bounded set that forgets the oldest first."""
    seen.add(event_id)
    order.append(event_id)
    if len(order) > limit:
        seen.discard(order.popleft())


def fleet_guard_holds(
    worker: Worker, members: Iterable[Worker], min_workers: int, max_open_fraction: float
) -> bool:
    """Would opening `worker`'s circuit leave more than max_open_fraction of its class's
    live workers OPEN or FORCED_OPEN, in a class of at least min_workers live workers?

    A lost worker is outside that population, so the guard never holds for it.
    """
    if worker.lost:
        return False
    live = opened = 0
    for member in members:
        if not member.lost:
            live += 1
            if member.circuit.state in OPENISH:
                opened += 1
    return live >= min_workers and (opened + 1) / live > max_open_fraction


class ClassMembers:
    """The workers of one hardware class, kept in id order so that the first eligible
    worker found is also the one that wins ties."""

    __slots__ = ("ids", "workers")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.workers: list[Worker] = []

    def add(self, worker: Worker) -> None:
        at = bisect_left(self.ids, worker.id)
        self.ids.insert(at, worker.id)
        self.workers.insert(at, worker)

    def remove(self, worker: Worker) -> None:
        at = bisect_left(self.ids, worker.id)
        del self.ids[at]
        del self.workers[at]


def pick_target(members: ClassMembers, failed_worker: str) -> str | None:
    """The healthiest live worker with a CLOSED circuit other than the failed one; ties by
    id. A CLOSED circuit's health only falls with consecutive failures (to 70 at 3), so
    the first fully healthy worker in id order wins and the scan usually stops early."""
    best: Worker | None = None
    best_failures = 3
    for member in members.workers:
        circuit = member.circuit
        if member.lost or circuit.state is not CLOSED or member.id == failed_worker:
            continue
        failures = circuit.consecutive_failures
        if failures == 0:
            return member.id
        if best is None or min(failures, 3) < best_failures:
            best, best_failures = member, min(failures, 3)
    return None if best is None else best.id
