"""The core: one fleet's circuits, workers and tasks, fed one input record at a time.

`FleetCore.process(record)` is a deterministic function of (state, record, settings): no
clock, no I/O, no randomness. It evolves its own state in place (for speed) and returns
the derived records in order. Read CIRCUITS.md beside it; the sections match.

Figures: every change to what the views count (a circuit's counters and state, a worker's
liveness, class or availability, a class's capacity) marks the circuits whose figures it
changes; each TICK publishes one `circuit_figures` record per marked circuit, in (kind
rank, id) order, and clears the marks (/tmp/figures-spec.md until the docs have it).
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any

from faultstream.events.classify import classify_message
from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import (
    CircuitKind,
    ConfigChanged,
    DerivedRecord,
    EventKind,
    FailureType,
    InputRecord,
    Operator,
    OperatorAction,
    RecoveryCommand,
    RecoveryStrategy,
    WorkerEvent,
)

from .circuit import CLOSED, HARDWARE_CLASS, OPEN, TASK_TYPE, WORKER, Circuit, CircuitParams
from .ids import command_id, migration_command_id
from .recovery import MOVES_TASK, Plan, plan_failure
from .view import capacity_view, circuits_view, figures, workers_view
from .workers import ClassMembers, Worker, fleet_guard_holds, pick_target, remember

SEEN_IDS_PER_WORKER = 10_000
SEEN_CONTROL_IDS = 100_000
LOST = 3  # rank of a lost-worker timer when due moments and ids tie (after circuits)
_SNAPSHOT_VERSION = 3  # 2: a worker's recent ids as one joined string; 3: figure marks
_KIND_RANK = {
    CircuitKind.WORKER: WORKER,
    CircuitKind.HARDWARE_CLASS: HARDWARE_CLASS,
    CircuitKind.TASK_TYPE: TASK_TYPE,
}


class FleetCore:
    """Circuits and recovery of a whole fleet (CIRCUITS.md), driven by event time."""

    def __init__(self, settings: CoreSettings | None = None) -> None:
        self.now = 0
        self._circuits: tuple[dict[str, Circuit], ...] = ({}, {}, {})  # by rank, then id
        self._workers: dict[str, Worker] = {}
        self._by_class: dict[str, ClassMembers] = {}
        self._checkpoints: dict[str, int] = {}  # task_id -> newest checkpoint_seq
        # Due moments: (due ms unrounded, id, rank, seq, Circuit | Worker, gen). An entry
        # whose gen is no longer its target's is stale and skipped when popped.
        self._heap: list[tuple[float, str, int, int, Any, int]] = []
        self._seq = 0
        self._control_seen: set[str] = set()
        self._control_order: deque[str] = deque()
        # Circuits whose figures changed since the last TICK published them.
        self._marked: set[Circuit] = set()
        self._apply_settings(settings or CoreSettings())

    def _apply_settings(self, settings: CoreSettings) -> None:
        self.settings = settings
        circuits = settings.circuits
        self._params = tuple(CircuitParams.of(circuits.for_kind(kind)) for kind in CircuitKind)
        self._attribution = {
            failure_type: _KIND_RANK[circuits.attribution.circuit_for(failure_type)]
            for failure_type in FailureType
        }
        self._max_retries = settings.recovery.max_retries
        self._heartbeat_ms = settings.recovery.heartbeat_timeout_s * 1000.0
        self._guard_fraction = circuits.worker.max_open_fraction
        self._guard_min = circuits.worker.guard_min_workers

    # --- the one entry point -------------------------------------------------------

    def process(self, record: InputRecord) -> list[DerivedRecord]:
        """The derived records of one input, in order; a repeated event_id yields none."""
        event_id = record.event_id
        handler = _WORKER_HANDLERS.get(record.kind)  # type: ignore[arg-type]
        worker = None
        if handler is not None:
            worker = self._workers.get(record.worker_id)  # type: ignore[union-attr]
            if worker is not None:
                seen = worker.seen
                if event_id in seen:
                    return []
                # Inline `remember`: this is the path every heartbeat takes.
                seen.add(event_id)
                order = worker.seen_order
                order.append(event_id)
                if len(order) > SEEN_IDS_PER_WORKER:
                    seen.discard(order.popleft())
        else:
            if event_id in self._control_seen:
                return []
            remember(self._control_seen, self._control_order, event_id, SEEN_CONTROL_IDS)

        before = self.now
        # Decision time: the broker's clock, never the worker's (CIRCUITS.md).
        ts = record.received_at
        if ts is None:  # a hand-written history: its own ts
            ts = record.ts
        if ts > before:
            self.now = ts
        out: list[DerivedRecord] = []
        heap = self._heap
        if heap and heap[0][0] <= self.now:
            self._reveal_due(event_id, before, out)

        if worker is not None:
            if record.hardware_class != worker.hardware_class:  # type: ignore[union-attr]
                self._move_class(worker, record)  # type: ignore[arg-type]
            if ts > worker.last_ts:
                worker.last_ts = ts  # the heap timer catches up lazily when it pops
            if worker.lost:
                worker.lost = False
                self._push_lost_timer(worker, self._lost_due(worker))
                self._marked.add(worker.circuit)  # live again: its figures and its class's
                self._marked.add(worker.hw_circuit)
        elif handler is not None:  # created after the due moments: they precede this input
            worker = self._new_worker(record, ts)  # type: ignore[arg-type]
            remember(worker.seen, worker.seen_order, event_id, SEEN_IDS_PER_WORKER)
        if handler is not None:
            if handler is not _on_heartbeat:  # a heartbeat only marks the worker alive
                handler(self, worker, record, out)
        elif record.kind == "OPERATOR":
            self._on_operator(record, out)  # type: ignore[arg-type]
        elif record.kind == "CONFIG_CHANGED":
            self._on_config(record)  # type: ignore[arg-type]
        elif self._marked:  # a TICK: what it revealed, then the figures that changed
            self._publish_figures(event_id, out)
        return out

    # --- due moments ---------------------------------------------------------------

    def _reveal_due(self, caused_by: str, floor_ts: int, out: list[DerivedRecord]) -> None:
        """Apply everything due by `now`, in order of due moment, id, kind rank.

        Circuits half-open when now >= due; a worker is lost only when now > due ("more
        than heartbeat_timeout_s"). Output ts never goes below the clock before this
        input (`floor_ts`), so the derived stream's clock never goes back.
        """
        heap = self._heap
        now = self.now
        not_yet = []
        while heap and heap[0][0] <= now:
            entry = heappop(heap)
            due, _, rank, _, target, gen = entry
            if rank != LOST:
                if gen == target.gen and target.state is OPEN:
                    ts = max(target.due_ms, floor_ts)
                    out.append(target.half_open(self._params[rank], ts, caused_by))
                    self._mark_transition(target)
                continue
            if gen != target.timer_gen or target.lost:
                continue
            current = self._lost_due(target)
            if current > due:  # seen since the timer was set: wait for the newer due
                self._push_lost_timer(target, current)
            elif due >= now:
                not_yet.append(entry)
            else:
                self._lose_worker(target, due, caused_by, floor_ts, out)
        for entry in not_yet:
            heappush(heap, entry)

    def _push_half_open(self, circuit: Circuit) -> None:
        self._seq += 1
        entry = (circuit.due_exact, circuit.id, circuit.rank, self._seq, circuit, circuit.gen)
        heappush(self._heap, entry)

    def _lost_due(self, worker: Worker) -> float:
        return round(worker.last_ts + self._heartbeat_ms, 6)

    def _push_lost_timer(self, worker: Worker, due: float) -> None:
        worker.timer_gen += 1
        self._seq += 1
        heappush(self._heap, (due, worker.id, LOST, self._seq, worker, worker.timer_gen))

    # --- workers -------------------------------------------------------------------

    def _new_worker(self, event: WorkerEvent, received_at: int) -> Worker:
        worker_id = event.worker_id
        hardware = self._circuit(HARDWARE_CLASS, event.hardware_class)
        worker = Worker(worker_id, self._circuit(WORKER, worker_id), hardware, received_at)
        self._workers[worker_id] = worker
        self._members(worker.hardware_class).add(worker)
        self._push_lost_timer(worker, self._lost_due(worker))
        self._marked.add(worker.circuit)
        self._marked.add(hardware)
        return worker

    def _members(self, hardware_class: str) -> ClassMembers:
        members = self._by_class.get(hardware_class)
        if members is None:
            members = self._by_class[hardware_class] = ClassMembers()
        return members

    def _move_class(self, worker: Worker, event: WorkerEvent) -> None:
        self._by_class[worker.hardware_class].remove(worker)
        self._marked.add(worker.hw_circuit)
        worker.hardware_class = event.hardware_class
        worker.hw_circuit = self._circuit(HARDWARE_CLASS, event.hardware_class)
        self._members(worker.hardware_class).add(worker)
        self._marked.add(worker.hw_circuit)
        self._marked.add(worker.circuit)

    def _lose_worker(
        self, worker: Worker, due: float, caused_by: str, floor_ts: int, out: list[DerivedRecord]
    ) -> None:
        """A lost worker: one WORKER_DISCONNECTION counted, each started task migrated."""
        worker.lost = True
        worker.timer_gen += 1
        self._marked.add(worker.circuit)
        self._marked.add(worker.hw_circuit)
        due_ms = math.ceil(due)
        ts = max(due_ms, floor_ts)
        silence = self._heartbeat_ms / 1000.0
        reason = f"{FailureType.WORKER_DISCONNECTION}: worker lost, silent over {silence:g}s"
        rank = self._attribution[FailureType.WORKER_DISCONNECTION]
        if rank == WORKER:
            counted_on = [worker.circuit]
        elif rank == HARDWARE_CLASS:
            counted_on = [worker.hw_circuit]
        else:  # attributed to task types: those of the tasks it was running
            task_types = sorted({t for _, t in worker.tasks.values() if t is not None})
            counted_on = [self._circuit(TASK_TYPE, t) for t in task_types]
        for circuit in counted_on:
            self._count_failure(circuit, ts, caused_by, reason, out)
        for task_id in sorted(worker.tasks):
            attempt, task_type = worker.tasks[task_id]
            if attempt >= self._max_retries:
                why = f"{reason}; attempt {attempt} reached max_retries {self._max_retries}"
                plan = Plan(RecoveryStrategy.ESCALATION, why)
            else:
                plan = Plan(RecoveryStrategy.DIFFERENT_WORKER, reason)
            cid = migration_command_id(worker.id, due_ms, task_id)
            command = self._command(plan, cid, ts, task_id, task_type, worker, attempt, caused_by)
            out.append(command)
        worker.tasks.clear()

    # --- worker events -------------------------------------------------------------

    def _on_started(self, worker: Worker, event: WorkerEvent, out: list) -> None:
        worker.tasks[event.task_id] = (event.attempt, event.task_type)  # type: ignore[index]
        self._circuit(TASK_TYPE, event.task_type)  # type: ignore[arg-type]

    def _on_checkpoint(self, worker: Worker, event: WorkerEvent, out: list) -> None:
        known = self._checkpoints.get(event.task_id)  # type: ignore[arg-type]
        if known is None or event.checkpoint_seq > known:  # type: ignore[operator]
            self._checkpoints[event.task_id] = event.checkpoint_seq  # type: ignore[index,assignment]

    def _on_success(self, worker: Worker, event: WorkerEvent, out: list) -> None:
        task_id = event.task_id
        worker.tasks.pop(task_id, None)  # type: ignore[arg-type]
        self._checkpoints.pop(task_id, None)  # type: ignore[arg-type]
        task_type = self._circuit(TASK_TYPE, event.task_type)  # type: ignore[arg-type]
        now = self.now
        params = self._params
        mark = self._marked.add
        for circuit in (worker.circuit, worker.hw_circuit, task_type):
            mark(circuit)
            changed = circuit.on_success(params[circuit.rank], now, event.event_id)
            if changed is not None:
                out.append(changed)
                self._mark_transition(circuit)

    def _on_failure(self, worker: Worker, event: WorkerEvent, out: list) -> None:
        worker.tasks.pop(event.task_id, None)  # type: ignore[arg-type]
        failure_type = event.failure_type or classify_message(event.message)
        task_type = self._circuit(TASK_TYPE, event.task_type)  # type: ignore[arg-type]
        rank = self._attribution[failure_type]
        circuit = (worker.circuit, worker.hw_circuit, task_type)[rank]
        reason = str(failure_type)
        # Fleet guard: when most of a class fails together, blame the class, not each machine.
        guarded = (
            rank == WORKER
            and circuit.would_open_on_failure(self._params[WORKER])
            and fleet_guard_holds(
                worker,
                self._by_class[worker.hardware_class].workers,
                self._guard_min,
                self._guard_fraction,
            )
        )
        if guarded:
            circuit = worker.hw_circuit
            reason = f"fleet_guard: {failure_type} counted on hardware_class {circuit.id}"
        self._count_failure(circuit, self.now, event.event_id, reason, out)

        plan = plan_failure(
            failure_type=failure_type,
            attempt=event.attempt,
            max_retries=self._max_retries,
            event_id=event.event_id,
            hardware_class=worker.hardware_class,
            attributes=event.attributes,
            worker=worker.circuit,
            hardware=worker.hw_circuit,
            task_type=task_type,
            now=self.now,
        )
        if guarded:
            plan = Plan(
                plan.strategy,
                f"fleet_guard; {plan.reason}",
                plan.delay_s,
                plan.target_hardware_class,
                plan.parameters,
            )
        out.append(
            self._command(
                plan,
                command_id(event.event_id),
                self.now,
                event.task_id,  # type: ignore[arg-type]
                event.task_type,
                worker,
                event.attempt,
                event.event_id,
            )
        )

    # --- circuits and commands -----------------------------------------------------

    def _circuit(self, rank: int, circuit_id: str) -> Circuit:
        circuits = self._circuits[rank]
        circuit = circuits.get(circuit_id)
        if circuit is None:
            circuit = circuits[circuit_id] = Circuit(rank, circuit_id, self._params[rank])
            self._marked.add(circuit)
        return circuit

    def _count_failure(
        self, circuit: Circuit, ts: int, caused_by: str, reason: str, out: list[DerivedRecord]
    ) -> None:
        self._marked.add(circuit)
        changed = circuit.on_failure(self._params[circuit.rank], ts, caused_by, reason)
        if changed is not None:
            out.append(changed)
            self._mark_transition(circuit)
            if circuit.state is OPEN:
                self._push_half_open(circuit)

    def _mark_transition(self, circuit: Circuit) -> None:
        """A circuit changed state: its figures, and the availability it decides (a worker's
        counts in its class's capacity; a class's, in each member's `available`)."""
        marked = self._marked
        marked.add(circuit)
        if circuit.rank == WORKER:
            worker = self._workers.get(circuit.id)
            if worker is not None:
                marked.add(worker.hw_circuit)
        elif circuit.rank == HARDWARE_CLASS:
            members = self._by_class.get(circuit.id)
            if members is not None:
                marked.update(member.circuit for member in members.workers)

    def _publish_figures(self, caused_by: str, out: list[DerivedRecord]) -> None:
        """One circuit_figures per marked circuit, in (kind rank, id) order; marks cleared."""
        now = self.now
        workers, by_class = self._workers, self._by_class
        for circuit in sorted(self._marked, key=_rank_and_id):
            if circuit.rank == WORKER:
                out.append(figures(circuit, now, caused_by, worker=workers.get(circuit.id)))
            elif circuit.rank == HARDWARE_CLASS:
                members = by_class.get(circuit.id)
                out.append(
                    figures(circuit, now, caused_by, members=members.workers if members else ())
                )
            else:
                out.append(figures(circuit, now, caused_by))
        self._marked.clear()

    def _command(
        self,
        plan: Plan,
        cid: str,
        ts: int,
        task_id: str,
        task_type: str | None,
        worker: Worker,
        attempt: int,
        caused_by: str,
    ) -> RecoveryCommand:
        strategy = plan.strategy
        target = checkpoint = None
        if strategy in MOVES_TASK:
            checkpoint = self._checkpoints.get(task_id)
            members = self._by_class.get(plan.target_hardware_class or worker.hardware_class)
            target = pick_target(members, worker.id) if members else None
        elif strategy is RecoveryStrategy.ESCALATION:
            self._checkpoints.pop(task_id, None)  # the task is given up: forget it
        return RecoveryCommand.model_construct(
            command_id=cid,
            ts=ts,
            task_id=task_id,
            task_type=task_type,
            worker_id=worker.id,
            strategy=strategy,
            attempt=attempt + 1,
            delay_s=float(plan.delay_s),
            target_worker_id=target,
            target_hardware_class=plan.target_hardware_class,
            parameters=plan.parameters,
            checkpoint_seq=checkpoint,
            reason=plan.reason,
            caused_by=caused_by,
        )

    # --- control records -----------------------------------------------------------

    def _on_operator(self, record: Operator, out: list[DerivedRecord]) -> None:
        # An unknown circuit is created: forcing a class open before it is ever seen works.
        rank = _KIND_RANK[record.circuit_kind]
        circuit = self._circuit(rank, record.circuit_id)
        self._marked.add(circuit)  # a RESET of a CLOSED circuit zeroes counters, silently
        if record.action is OperatorAction.FORCE_OPEN:
            if circuit.state is CLOSED:
                circuit.reset_timeout_s = self._params[rank].recovery_timeout_s
            changed = circuit.force_open(self.now, record.event_id, record.actor)
        else:
            changed = circuit.reset(self._params[rank], self.now, record.event_id, record.actor)
        if changed is not None:
            out.append(changed)
            self._mark_transition(circuit)

    def _on_config(self, record: ConfigChanged) -> None:
        # An invalid configuration in the history is not fatal here: it is ignored and the
        # old settings stay (the processor and replay validate before writing one).
        # Already-open circuits keep their timeout until their next transition.
        try:
            settings = self.settings.merged(record.config)
        except ConfigError:
            return
        old_heartbeat = self.settings.recovery.heartbeat_timeout_s
        self._apply_settings(settings)
        if settings.recovery.heartbeat_timeout_s != old_heartbeat:
            # Lost-worker timers only move later lazily; a shorter timeout needs them anew.
            self._heap = [entry for entry in self._heap if entry[2] != LOST]
            heapify(self._heap)
            for worker in self._workers.values():
                if not worker.lost:
                    self._push_lost_timer(worker, self._lost_due(worker))

    # --- views and snapshots -------------------------------------------------------

    def circuits_view(self) -> dict[str, Any]:
        """The GET /api/circuit-breakers shape of CONTRACT.md, at `now`."""
        return circuits_view(self._circuits, self.now)

    def workers_view(self) -> dict[str, dict[str, Any]]:
        """Each known worker at `now` (view.workers_view), for the dashboard."""
        return workers_view(self._workers.values(), self.now)

    def capacity_view(self) -> dict[str, dict[str, Any]]:
        """Available workers per hardware class at `now` (view.capacity_view)."""
        return capacity_view(self._workers.values(), self._circuits[HARDWARE_CLASS])

    def snapshot(self) -> bytes:
        """The whole state, for this same code version only."""
        return pickle.dumps((_SNAPSHOT_VERSION, self.__dict__), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, data: bytes) -> FleetCore:
        """The core a snapshot holds; ValueError for a snapshot of another code version
        (whose objects may not even unpickle with this code)."""
        try:
            version, state = pickle.loads(data)
        except Exception as exc:  # whatever an old layout raises as it unpickles
            raise ValueError(f"snapshot: unreadable by this version ({exc!r})") from None
        if version not in (2, _SNAPSHOT_VERSION):
            raise ValueError(f"snapshot: version {version}, expected {_SNAPSHOT_VERSION}")
        core = cls.__new__(cls)
        core.__dict__.update(state)
        if version == 2:  # from before figures: the next TICK publishes every circuit's
            core._marked = {c for circuits in core._circuits for c in circuits.values()}
        return core


def _rank_and_id(circuit: Circuit) -> tuple[int, str]:
    return circuit.rank, circuit.id


def _on_heartbeat(core: FleetCore, worker: Worker, event: WorkerEvent, out: list) -> None:
    """Liveness only, marked before any handler runs."""


_WORKER_HANDLERS: dict[str, Callable[[FleetCore, Worker, WorkerEvent, list], None]] = {
    EventKind.HEARTBEAT: _on_heartbeat,
    EventKind.TASK_STARTED: FleetCore._on_started,
    EventKind.CHECKPOINT: FleetCore._on_checkpoint,
    EventKind.SUCCESS: FleetCore._on_success,
    EventKind.FAILURE: FleetCore._on_failure,
}
