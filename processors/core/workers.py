"""What the core knows of each worker, and the choices made over a hardware class."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from itertools import accumulate

from faultstream.events.models import CircuitState

from .circuit import CLOSED, OPENISH, Circuit


class Worker:
    """One worker: liveness, started tasks, recent event ids (for dropping repeats)."""

    __slots__ = (
        "circuit",
        "hardware_class",
        "hw_circuit",
        "id",
        "incoming",
        "interval_failures",
        "interval_successes",
        "last_ts",
        "lost",
        "producers",
        "seen",
        "seen_order",
        "skewed",
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
        # Started and not finished, in start order: task_id -> (attempt, task_type).
        self.tasks: dict[str, tuple[int, str | None]] = {}
        self.incoming = 0  # tasks moved here that have not started anywhere or finished
        self.interval_successes = 0  # outcomes of its tasks since the last outlier boundary
        self.interval_failures = 0
        self.skewed = False  # its clock was off by more than max_skew_s at its newest event
        self.seen: set[str] = set()
        self.seen_order: deque[str] = deque()
        self.producers: dict[str, list[int]] = {}  # sequenced ids: producer -> ranges

    # Snapshots: plain recent ids can be most of a worker's state. Pickled one by one they cost
    # ~0.5 µs each (the decider's snapshot pauses grew with history); as one joined string
    # and their lengths they are two buffers, and `seen` is rebuilt from them.
    _PLAIN = ("id", "circuit", "hardware_class", "hw_circuit", "last_ts", "lost", "timer_gen",
              "tasks", "incoming", "interval_successes", "interval_failures",
              "skewed", "producers")  # fmt: skip

    def __getstate__(self) -> tuple:
        order = self.seen_order
        plain = tuple(getattr(self, name) for name in self._PLAIN)
        return (*plain, "".join(order), array("L", map(len, order)))

    def __setstate__(self, state: tuple) -> None:
        *plain, joined, lengths = state
        for name, value in zip(self._PLAIN, plain, strict=True):
            setattr(self, name, value)
        ends = list(accumulate(lengths))
        order = [joined[start:end] for start, end in zip([0, *ends], ends, strict=False)]
        self.seen_order = deque(order)
        self.seen = set(order)


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


NO_FLOOR = 1 << 62  # the floor of a class with no worker able to take a task
FEW_AT_FLOOR = 32  # above this many, `pick_target` scans in id order instead


class ClassMembers:
    """The workers of one hardware class, kept in id order so that the first eligible
    worker found is also the one that wins ties; how many are live, and live with a
    CLOSED circuit (the class's capacity, kept as its members change); and a floor under
    the tasks in flight on those that can take a move (`pick_target`)."""

    __slots__ = ("at_floor", "closed_live", "floor", "ids", "live", "workers")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.workers: list[Worker] = []
        self.live = 0
        self.closed_live = 0
        # At most the fewest tasks in flight on any live, CLOSED member, and every such
        # member with that many (among some that no longer are): lowered as a load falls
        # or a worker can take tasks again, made exact by each scan that ends.
        self.floor = NO_FLOOR
        self.at_floor: set[Worker] = set()

    def add(self, worker: Worker) -> None:
        at = bisect_left(self.ids, worker.id)
        self.ids.insert(at, worker.id)
        self.workers.insert(at, worker)
        self.count(worker, 1)

    def remove(self, worker: Worker) -> None:
        at = bisect_left(self.ids, worker.id)
        del self.ids[at]
        del self.workers[at]
        self.count(worker, -1)
        self.at_floor.discard(worker)

    def capacity(self, class_state: CircuitState) -> tuple[int, int, int]:
        """(known, live, available) with the class's circuit in `class_state`: what
        view.py `capacity` counts over the members, from the counts kept."""
        return len(self.workers), self.live, 0 if class_state in OPENISH else self.closed_live

    def count(self, worker: Worker, sign: int) -> None:
        """Add (1) or take away (-1) a member's share of the live and closed counts."""
        if not worker.lost:
            self.live += sign
            if worker.circuit.state is CLOSED:
                self.closed_live += sign
                if sign > 0:
                    self.lower(worker)

    def closed(self, worker: Worker, sign: int) -> None:
        """A live member's circuit became CLOSED (1) or left CLOSED (-1)."""
        self.closed_live += sign
        if sign > 0:
            self.lower(worker)

    def lower(self, worker: Worker) -> None:
        """A member's load fell, or it can take tasks again: the floor follows it down."""
        load = len(worker.tasks) + worker.incoming
        if load < self.floor:
            self.floor = load
            self.at_floor = {worker}
        elif load == self.floor:
            self.at_floor.add(worker)


def in_flight(worker: Worker) -> int:
    """Tasks started on the worker and not finished, plus tasks moved to it that have not
    started anywhere or finished. (The rule's definition; `pick_target`, on the hot path,
    inlines it.)"""
    return len(worker.tasks) + worker.incoming


def pick_target(members: ClassMembers, failed_worker: str) -> str | None:
    """Among the live workers with a CLOSED circuit other than the failed one: the fewest
    tasks in flight (`in_flight`), then the healthiest, then by id.

    A CLOSED circuit's health only falls with consecutive failures, to 70 at 3. The few
    members at the class's floor are looked at first: when one of them can take the task,
    the floor is the fewest there are, and they are every worker with that few."""
    at_floor, floor = members.at_floor, members.floor
    if len(at_floor) <= FEW_AT_FLOOR:
        best: Worker | None = None
        best_key = (0, "")
        for member in list(at_floor):
            circuit = member.circuit
            if (
                member.lost
                or circuit.state is not CLOSED
                or len(member.tasks) + member.incoming != floor
            ):
                at_floor.discard(member)  # no longer at the floor: a scan finds it if due
            elif member.id != failed_worker:
                key = (min(circuit.consecutive_failures, 3), member.id)
                if best is None or key < best_key:
                    best, best_key = member, key
        if best is not None:
            return best.id
    return _scan(members, failed_worker)


def _scan(members: ClassMembers, failed_worker: str) -> str | None:
    """`pick_target` over every member, in id order (a later worker must be strictly
    better); a fully healthy one at the floor wins at once. A scan that ends makes the
    floor exact."""
    best: Worker | None = None
    best_load = best_failures = 0
    floor = members.floor
    fewest, at_fewest = NO_FLOOR, []  # over every worker that can take tasks
    closed = CLOSED
    for member in members.workers:
        circuit = member.circuit
        if member.lost or circuit.state is not closed:
            continue
        load = len(member.tasks) + member.incoming
        if load <= fewest:
            if load < fewest:
                fewest, at_fewest = load, []
            at_fewest.append(member)
        if member.id == failed_worker or (best is not None and load > best_load):
            continue
        failures = circuit.consecutive_failures
        if failures > 3:
            failures = 3
        if best is None or load < best_load or failures < best_failures:
            if load <= floor and failures == 0:
                return member.id
            best, best_load, best_failures = member, load, failures
    members.floor, members.at_floor = fewest, set(at_fewest)
    return None if best is None else best.id
