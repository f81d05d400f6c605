"""The core: one fleet's circuits, workers and tasks, fed one input record at a time.

`FleetCore.process(record)` is a deterministic function of (state, record, settings): no
clock, no I/O, no randomness. It evolves its own state in place (for speed) and returns
the derived records in order. Read docs/circuits.md beside it; the sections match.

Figures: every change to what the views count (a circuit's counters and state, a worker's
liveness, class or availability, a class's capacity) marks the circuits whose figures it
changes; each TICK publishes one `circuit_figures` record per marked circuit, in (kind
rank, id) order, and clears the marks (docs/architecture.md, "One truth").

Beyond consecutive failures: windows (window.py) are entered as outcomes are counted;
outlier boundaries and open-too-long timers are due moments in the same heap as the
half-openings and lost workers; alerts (alerts.py) are decided where their rule is and
written after the records of their decision (`_judge_alerts`).
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush, heapreplace
from operator import attrgetter
from typing import Any

from faultstream.events.classify import classify_message
from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.health import overall_health
from faultstream.events.models import (
    Alert,
    CircuitKind,
    CircuitStateChanged,
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

from .alerts import CAPACITY, CLOCK_SKEW, ESCALATIONS, FLEET_HEALTH, OPEN_LONGER, AlertBook
from .circuit import (
    CLOSED,
    HALF_OPEN,
    HARDWARE_CLASS,
    OPEN,
    OPENISH,
    TASK_TYPE,
    WORKER,
    Circuit,
    CircuitParams,
)
from .ids import command_id, figures_ids, migration_command_id
from .recovery import MOVES_TASK, Learned, Plan, plan_failure
from .repeats import SEEN_CONTROL_IDS, first_time, remember
from .view import capacity_view, circuits_view, figures, workers_view
from .workers import ClassMembers, Worker, fleet_guard_holds, pick_target

AWAITED_COMMANDS = 100_000  # commands whose outcome may still come (adaptive trials)
# Ranks of due moments that tie on moment and id: an outlier boundary (id "") first, then
# circuits half-opening (their kind rank), lost workers, circuits open too long (4 + rank).
BOUNDARY = -1
LOST = 3
OUTAGE = 4
# 3: figure marks; 4: windows, outliers, moves, trials, alerts; 5: windows' two deques, floors;
# 6: sequenced ids' producers
_SNAPSHOT_VERSION = 6
_RANK_AND_ID = attrgetter("rank", "id")  # the order figures are published in
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
        # Slow calls: (task_id, attempt) -> received_at of its newest TASK_STARTED.
        self._starts: dict[tuple[str, int], int] = {}
        # Load-balanced moves: task_id -> the worker a move command sent it to, until it
        # starts anywhere or finishes.
        self._moves: dict[str, Worker] = {}
        # Adaptive ladders: (task_id, attempt) -> (failure type, class, strategy) of the
        # command that attempt carries out; its outcome becomes a trial in `_learned`.
        self._awaiting: dict[tuple[str, int], tuple[FailureType, str, RecoveryStrategy]] = {}
        self._learned: Learned = {}
        # Alerts: the firing ones; those decided but not yet written (they follow the
        # records of their decision); what the threshold rules must judge again.
        self._alerts = AlertBook()
        self._pending_alerts: list[Alert] = []
        self._dirty_classes: set[str] = set()
        self._health_dirty = False
        self._circuit_count = self._open_count = self._half_open_count = 0
        self._boundary_gen = 0
        self._received = 0  # the received_at of the worker event being handled
        self._apply_settings(settings or CoreSettings())
        if self._outlier_factor:
            self._push_boundary()

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
        # A whole number of ms (the usual case): an int ms plus it needs no rounding.
        self._heartbeat_whole = self._heartbeat_ms.is_integer()
        self._guard_fraction = circuits.worker.max_open_fraction
        self._guard_min = circuits.worker.guard_min_workers
        worker = circuits.worker
        self._outlier_factor = worker.outlier_stdev_factor
        self._outlier_ms = worker.outlier_interval_s * 1000.0
        self._outlier_hosts = worker.outlier_minimum_hosts
        self._outlier_volume = worker.outlier_request_volume
        recovery = settings.recovery
        self._min_samples = recovery.adaptive_min_samples if recovery.adaptive else 0
        alerts = settings.alerts
        self._capacity_below = alerts.class_capacity_below
        self._open_longer_ms = alerts.open_longer_than_s * 1000.0
        self._escalation_alerts = alerts.escalations
        self._health_below = alerts.fleet_health_below
        self._skew_ms = settings.clock.max_skew_s * 1000.0
        self._skew_alerts = alerts.clock_skew
        self._skew_limit = self._skew_ms if alerts.clock_skew else math.inf

    # --- the one entry point -------------------------------------------------------

    def process(self, record: InputRecord) -> list[DerivedRecord]:
        """The derived records of one input, in order; a repeated event_id yields none."""
        event_id = record.event_id
        handler = _WORKER_HANDLERS.get(record.kind)  # type: ignore[arg-type]
        worker = None
        if handler is not None:
            worker = self._workers.get(record.worker_id)  # type: ignore[union-attr]
            if worker is not None and not first_time(worker, event_id):
                return []
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
                self._revive(worker)
        elif handler is not None:  # created after the due moments: they precede this input
            worker = self._new_worker(record, ts)  # type: ignore[arg-type]
            first_time(worker, event_id)
        if handler is not None:
            if handler is not _on_heartbeat:  # a heartbeat only marks the worker alive
                self._received = ts
                handler(self, worker, record, out)
            skew = record.ts - ts
            if worker.skewed or (skew > self._skew_limit or -skew > self._skew_limit):  # type: ignore[union-attr]
                self._judge_skew(worker, skew, event_id)  # type: ignore[arg-type]
        elif record.kind == "OPERATOR":
            self._on_operator(record, out)  # type: ignore[arg-type]
        elif record.kind == "CONFIG_CHANGED":
            self._on_config(record)  # type: ignore[arg-type]
        elif self._marked:  # a TICK: what it revealed, then the figures that changed
            self._publish_figures(event_id, out)
        if self._pending_alerts or self._dirty_classes or self._health_dirty:
            self._judge_alerts(self.now, event_id, out)
        return out

    # --- due moments ---------------------------------------------------------------

    def _reveal_due(self, caused_by: str, floor_ts: int, out: list[DerivedRecord]) -> None:
        """Apply everything due by `now`, in order of due moment, id, kind rank.

        Circuits half-open when now >= due; a worker is lost only when now > due ("more
        than heartbeat_timeout_s"). Output ts never goes below the clock before this
        input (`floor_ts`), so the derived stream's clock never goes back. The alert rules
        are judged after each due moment that changed something.
        """
        heap = self._heap
        now = self.now
        not_yet = []
        while heap and heap[0][0] <= now:
            due, _, rank, _, target, gen = heap[0]
            if rank == LOST and gen == target.timer_gen and not target.lost:
                current = self._lost_due(target)
                if current > due:  # seen since the timer was set: wait for the newer due
                    self._push_lost_timer(target, current, replacing_top=True)
                    continue
            entry = heappop(heap)
            if rank == BOUNDARY:
                if gen != self._boundary_gen:
                    continue
                ts = max(math.ceil(due), floor_ts)
                self._judge_outliers(ts, caused_by, out)
                self._push_boundary()
            elif rank < LOST:
                if gen != target.gen or target.state is not OPEN:
                    continue
                ts = max(target.due_ms, floor_ts)
                change = target.half_open(self._params[rank], ts, caused_by)
                out.append(change)
                self._transitioned(target, change)
            elif rank == LOST:
                if gen != target.timer_gen or target.lost:
                    continue
                if due >= now:
                    not_yet.append(entry)
                    continue
                ts = max(math.ceil(due), floor_ts)
                self._lose_worker(target, due, caused_by, floor_ts, out)
            else:
                ts = max(math.ceil(due), floor_ts)
                if not self._open_too_long(target, gen, due, ts, caused_by):
                    continue
            if self._pending_alerts or self._dirty_classes or self._health_dirty:
                self._judge_alerts(ts, caused_by, out)
        for entry in not_yet:
            heappush(heap, entry)

    def _push_half_open(self, circuit: Circuit) -> None:
        self._seq += 1
        entry = (circuit.due_exact, circuit.id, circuit.rank, self._seq, circuit, circuit.gen)
        heappush(self._heap, entry)

    def _lost_due(self, worker: Worker) -> float:
        due = worker.last_ts + self._heartbeat_ms
        return due if self._heartbeat_whole else round(due, 6)

    def _push_lost_timer(self, worker: Worker, due: float, replacing_top: bool = False) -> None:
        """The worker's timer, due at `due`; `replacing_top` the heap's top entry in the same
        move (one sift instead of a pop and a push: each live worker's timer does that once
        a timeout)."""
        worker.timer_gen += 1
        self._seq += 1
        entry = (due, worker.id, LOST, self._seq, worker, worker.timer_gen)
        (heapreplace if replacing_top else heappush)(self._heap, entry)

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
        self._dirty_classes.add(worker.hardware_class)
        return worker

    def _members(self, hardware_class: str) -> ClassMembers:
        members = self._by_class.get(hardware_class)
        if members is None:
            members = self._by_class[hardware_class] = ClassMembers()
        return members

    def _move_class(self, worker: Worker, event: WorkerEvent) -> None:
        self._by_class[worker.hardware_class].remove(worker)
        self._marked.add(worker.hw_circuit)
        self._dirty_classes.add(worker.hardware_class)
        worker.hardware_class = event.hardware_class
        worker.hw_circuit = self._circuit(HARDWARE_CLASS, event.hardware_class)
        self._members(worker.hardware_class).add(worker)
        self._marked.add(worker.hw_circuit)
        self._marked.add(worker.circuit)
        self._dirty_classes.add(worker.hardware_class)

    def _set_lost(self, worker: Worker, lost: bool) -> None:
        """Lost or live again: its figures, its class's and the class's capacity change."""
        members = self._by_class[worker.hardware_class]
        members.count(worker, -1)
        worker.lost = lost
        members.count(worker, 1)
        self._marked.add(worker.circuit)
        self._marked.add(worker.hw_circuit)
        self._dirty_classes.add(worker.hardware_class)

    def _revive(self, worker: Worker) -> None:
        self._set_lost(worker, False)
        self._push_lost_timer(worker, self._lost_due(worker))

    def _lose_worker(
        self, worker: Worker, due: float, caused_by: str, floor_ts: int, out: list[DerivedRecord]
    ) -> None:
        """A lost worker: one WORKER_DISCONNECTION counted, each started task migrated, in
        start order (each move counts as in flight on its target for the next pick)."""
        self._set_lost(worker, True)
        worker.timer_gen += 1
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
        for task_id, (attempt, task_type) in list(worker.tasks.items()):
            if attempt >= self._max_retries:
                why = f"{reason}; attempt {attempt} reached max_retries {self._max_retries}"
                plan = Plan(RecoveryStrategy.ESCALATION, why)
            else:
                plan = Plan(RecoveryStrategy.DIFFERENT_WORKER, reason)
            cid = migration_command_id(worker.id, due_ms, task_id)
            failure = (FailureType.WORKER_DISCONNECTION, worker.hardware_class)
            command = self._command(
                plan, cid, ts, task_id, task_type, worker, attempt, caused_by, failure
            )
            out.append(command)
        worker.tasks.clear()

    # --- worker events -------------------------------------------------------------

    def _on_started(self, worker: Worker, event: WorkerEvent, out: list) -> None:
        task_id = event.task_id
        tasks = worker.tasks
        tasks.pop(task_id, None)  # type: ignore[arg-type]  # a restart is its newest start
        tasks[task_id] = (event.attempt, event.task_type)  # type: ignore[index]
        self._starts[task_id, event.attempt] = self._received  # type: ignore[index]
        if task_id in self._moves:
            self._arrived(task_id)  # type: ignore[arg-type]
        self._circuit(TASK_TYPE, event.task_type)  # type: ignore[arg-type]

    def _on_checkpoint(self, worker: Worker, event: WorkerEvent, out: list) -> None:
        known = self._checkpoints.get(event.task_id)  # type: ignore[arg-type]
        if known is None or event.checkpoint_seq > known:  # type: ignore[operator]
            self._checkpoints[event.task_id] = event.checkpoint_seq  # type: ignore[index,assignment]

    def _on_success(self, worker: Worker, event: WorkerEvent, out: list) -> None:
        task_id = event.task_id
        self._checkpoints.pop(task_id, None)  # type: ignore[arg-type]
        started = self._finished(worker, task_id, event.attempt, success=True)  # type: ignore[arg-type]
        task_type = self._circuit(TASK_TYPE, event.task_type)  # type: ignore[arg-type]
        now = self.now
        params = self._params
        mark = self._marked.add
        duration = -1 if started is None else self._received - started
        for circuit in (worker.circuit, worker.hw_circuit, task_type):
            mark(circuit)
            kind = params[circuit.rank]
            changed = circuit.on_success(kind, now, event.event_id, duration)
            if isinstance(changed, str):  # a window rule met
                # The fleet guard holds back a worker's opening: then nothing changes.
                if circuit.rank == WORKER and self._guard_holds(worker):
                    continue
                changed = circuit.open_by(kind, now, event.event_id, changed)  # type: ignore[arg-type]
            if changed is not None:
                out.append(changed)
                self._transitioned(circuit, changed)
                if circuit.state is OPEN:  # a window rule opened it
                    self._push_half_open(circuit)
        if self._alerts.tasks and task_id in self._alerts.tasks:
            self._queue_alert(
                self._alerts.resolve(
                    ESCALATIONS, "task", task_id, f"task {task_id} succeeded", now, event.event_id
                )
            )

    def _on_failure(self, worker: Worker, event: WorkerEvent, out: list) -> None:
        self._finished(worker, event.task_id, event.attempt, success=False)  # type: ignore[arg-type]
        failure_type = event.failure_type or classify_message(event.message)
        task_type = self._circuit(TASK_TYPE, event.task_type)  # type: ignore[arg-type]
        rank = self._attribution[failure_type]
        circuit = (worker.circuit, worker.hw_circuit, task_type)[rank]
        reason = str(failure_type)
        # Fleet guard: when most of a class fails together, blame the class, not each machine.
        guarded = (
            rank == WORKER
            and circuit.would_open_on_failure(self._params[WORKER], self.now)
            and self._guard_holds(worker)
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
            learned=self._learned if self._min_samples else None,
            min_samples=self._min_samples,
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
                (failure_type, worker.hardware_class),
            )
        )

    def _guard_holds(self, worker: Worker) -> bool:
        """Whether the fleet guard holds back opening `worker`'s circuit now."""
        members = self._by_class[worker.hardware_class].workers
        return fleet_guard_holds(worker, members, self._guard_min, self._guard_fraction)

    def _finished(self, worker: Worker, task_id: str, attempt: int, *, success: bool) -> int | None:
        """A task's outcome: no longer in flight or moving, a trial of the command it
        carried out, and a share of its worker's success rate in this outlier interval.
        The received_at of that attempt's newest start (None: not seen) is returned."""
        if worker.tasks.pop(task_id, None) is not None:
            self._by_class[worker.hardware_class].lower(worker)  # its load fell
        if task_id in self._moves:
            self._arrived(task_id)
        key = (task_id, attempt)
        trial = self._awaiting.pop(key, None)
        if trial is not None:
            counts = self._learned.setdefault(trial, [0, 0])
            counts[0] += 1
            counts[1] += success
        if self._outlier_factor:
            if success:
                worker.interval_successes += 1
            else:
                worker.interval_failures += 1
        return self._starts.pop(key, None)

    def _arrived(self, task_id: str) -> None:
        target = self._moves.pop(task_id, None)
        if target is not None:
            target.incoming -= 1
            self._by_class[target.hardware_class].lower(target)

    # --- circuits and commands -----------------------------------------------------

    def _circuit(self, rank: int, circuit_id: str) -> Circuit:
        circuits = self._circuits[rank]
        circuit = circuits.get(circuit_id)
        if circuit is None:
            circuit = circuits[circuit_id] = Circuit(rank, circuit_id, self._params[rank])
            self._marked.add(circuit)
            self._circuit_count += 1
            self._health_dirty = True
            if rank == HARDWARE_CLASS:
                self._dirty_classes.add(circuit_id)
        return circuit

    def _count_failure(
        self, circuit: Circuit, ts: int, caused_by: str, reason: str, out: list[DerivedRecord]
    ) -> None:
        self._marked.add(circuit)
        changed = circuit.on_failure(self._params[circuit.rank], ts, caused_by, reason)
        if changed is not None:
            out.append(changed)
            self._transitioned(circuit, changed)
            if circuit.state is OPEN:
                self._push_half_open(circuit)

    def _transitioned(self, circuit: Circuit, change: CircuitStateChanged) -> None:
        """A circuit changed state: its figures, and the availability it decides (a worker's
        counts in its class's capacity; a class's, in each member's `available`); the
        fleet's state counts; the open-too-long clock."""
        marked = self._marked
        marked.add(circuit)
        was, now_in = change.from_state, change.to_state
        if circuit.rank == WORKER:
            worker = self._workers.get(circuit.id)
            if worker is not None:
                marked.add(worker.hw_circuit)
                if not worker.lost and (was is CLOSED or now_in is CLOSED):
                    members = self._by_class[worker.hardware_class]
                    members.closed(worker, 1 if now_in is CLOSED else -1)
                    self._dirty_classes.add(worker.hardware_class)
        elif circuit.rank == HARDWARE_CLASS:
            members = self._by_class.get(circuit.id)
            if members is not None:
                marked.update(member.circuit for member in members.workers)
            self._dirty_classes.add(circuit.id)
        self._open_count += (now_in in OPENISH) - (was in OPENISH)
        self._half_open_count += (now_in is HALF_OPEN) - (was is HALF_OPEN)
        self._health_dirty = True
        if was is CLOSED:
            if self._open_longer_ms:
                self._push_outage_timer(circuit)
        elif now_in is CLOSED and self._alerts.fires(OPEN_LONGER, circuit.kind.value, circuit.id):
            message = f"{circuit.kind.value} circuit {circuit.id} is CLOSED again"
            self._queue_alert(
                self._alerts.resolve(
                    OPEN_LONGER, circuit.kind.value, circuit.id, message, change.ts,
                    change.caused_by,
                )
            )  # fmt: skip

    def _publish_figures(self, caused_by: str, out: list[DerivedRecord]) -> None:
        """One circuit_figures per marked circuit, in (kind rank, id) order; marks cleared."""
        now = self.now
        workers, by_class = self._workers, self._by_class
        figures_id = figures_ids(caused_by)
        for circuit in sorted(self._marked, key=_RANK_AND_ID):
            event_id = figures_id(circuit.kind, circuit.id)
            if circuit.rank == WORKER:
                worker = workers.get(circuit.id)
                out.append(figures(circuit, now, caused_by, event_id, worker=worker))
            elif circuit.rank == HARDWARE_CLASS:
                members = by_class.get(circuit.id)
                known = members.capacity(circuit.state) if members else None
                out.append(figures(circuit, now, caused_by, event_id, class_capacity=known))
            else:
                out.append(figures(circuit, now, caused_by, event_id))
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
        failure: tuple[FailureType, str],
    ) -> RecoveryCommand:
        """The command for `plan`; `failure` is the (failure type, hardware class) of the
        failure it answers: its strategy's trial is counted under them."""
        strategy = plan.strategy
        target = checkpoint = None
        if strategy in MOVES_TASK:
            checkpoint = self._checkpoints.get(task_id)
            members = self._by_class.get(plan.target_hardware_class or worker.hardware_class)
            target = pick_target(members, worker.id) if members else None
            if target is not None:
                self._moving(task_id, self._workers[target])
        elif strategy is RecoveryStrategy.ESCALATION:
            self._checkpoints.pop(task_id, None)  # the task is given up: forget it
            if self._escalation_alerts:
                message = f"task {task_id} escalated: {plan.reason}"
                self._queue_alert(
                    self._alerts.fire(ESCALATIONS, "task", task_id, message, ts, caused_by)
                )
        awaiting = self._awaiting
        key = (task_id, attempt + 1)
        awaiting.pop(key, None)  # a newer command for the same attempt: the newest waits
        awaiting[key] = (*failure, strategy)
        if len(awaiting) > AWAITED_COMMANDS:  # one whose task never ran again: forget it
            del awaiting[next(iter(awaiting))]
        return plan.command(
            command_id=cid,
            ts=ts,
            task_id=task_id,
            task_type=task_type,
            worker_id=worker.id,
            attempt=attempt,
            target=target,
            checkpoint=checkpoint,
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
            self._transitioned(circuit, changed)

    def _on_config(self, record: ConfigChanged) -> None:
        # An invalid configuration in the history is not fatal here: it is ignored and the
        # old settings stay (the processor and replay validate before writing one).
        # Already-open circuits keep their timeout until their next transition.
        try:
            settings = self.settings.merged(record.config)
        except ConfigError:
            return
        old = self.settings
        self._apply_settings(settings)
        if settings.recovery.heartbeat_timeout_s != old.recovery.heartbeat_timeout_s:
            # Lost-worker timers only move later lazily; a shorter timeout needs them anew.
            self._heap = [entry for entry in self._heap if entry[2] != LOST]
            heapify(self._heap)
            for worker in self._workers.values():
                if not worker.lost:
                    self._push_lost_timer(worker, self._lost_due(worker))
        self._outliers_changed(old.circuits.worker)
        if settings.alerts.open_longer_than_s != old.alerts.open_longer_than_s:
            for circuits in self._circuits:  # each outage's clock, at the new length
                for circuit in circuits.values():
                    if circuit.outage_since >= 0 and self._open_longer_ms:
                        self._push_outage_timer(circuit)
        if settings.alerts != old.alerts:  # the threshold rules judge again, or resolve
            self._dirty_classes.update(self._circuits[HARDWARE_CLASS])
            self._health_dirty = True

    def _moving(self, task_id: str, target: Worker) -> None:
        """A move command sent the task to `target`: in flight there until it starts."""
        self._arrived(task_id)
        self._moves[task_id] = target
        target.incoming += 1

    # --- outlier workers -----------------------------------------------------------

    def _outliers_changed(self, old: Any) -> None:
        """After new settings: counts carry over; the next boundary is the next multiple
        of the (new) interval, or none when the rule is off."""
        worker = self.settings.circuits.worker
        on, was_on = worker.outlier_stdev_factor > 0, old.outlier_stdev_factor > 0
        if on and (not was_on or worker.outlier_interval_s != old.outlier_interval_s):
            self._push_boundary()
        elif was_on and not on:
            self._boundary_gen += 1
            for member in self._workers.values():
                member.interval_successes = member.interval_failures = 0

    def _push_boundary(self) -> None:
        """The next interval boundary after now (boundaries are multiples of the interval
        in epoch time); the ones now has already passed judged an empty interval."""
        self._boundary_gen += 1
        self._seq += 1
        boundary = (math.floor(self.now / self._outlier_ms) + 1) * self._outlier_ms
        heappush(self._heap, (boundary, "", BOUNDARY, self._seq, None, self._boundary_gen))

    def _judge_outliers(self, ts: int, caused_by: str, out: list[DerivedRecord]) -> None:
        """Per hardware class, the live workers with the request volume are the sample; with
        enough of them, each CLOSED worker whose success rate is below mean - factor x
        stdev opens, worst first, each subject to the fleet guard. Counts restart.

        Sums run in worker-id order, so both engines round alike."""
        params = self._params[WORKER]
        factor, volume = self._outlier_factor, self._outlier_volume
        for class_id in sorted(self._by_class):
            sample = []
            for member in self._by_class[class_id].workers:
                outcomes = member.interval_successes + member.interval_failures
                if not member.lost and outcomes >= volume:
                    sample.append((member.interval_successes / outcomes, member.id, member))
                member.interval_successes = member.interval_failures = 0
            if len(sample) < self._outlier_hosts:
                continue
            mean = 0.0
            for rate, _, _ in sample:
                mean += rate
            mean /= len(sample)
            spread = 0.0
            for rate, _, _ in sample:
                spread += (rate - mean) * (rate - mean)
            limit = mean - factor * math.sqrt(spread / len(sample))
            for rate, _, member in sorted(sample, key=_rate_and_id):
                if rate >= limit:
                    break
                circuit = member.circuit
                if circuit.state is not CLOSED or self._guard_holds(member):
                    continue
                reason = (
                    f"outlier: success rate {rate:.1%} below {limit:.1%} "
                    f"(mean {mean:.1%} of {len(sample)} {class_id} workers)"
                )
                change = circuit.open_by(params, ts, caused_by, reason)
                out.append(change)
                self._transitioned(circuit, change)
                self._push_half_open(circuit)

    # --- alerts --------------------------------------------------------------------

    def _queue_alert(self, alert: Alert | None) -> None:
        """An alert follows the records of the decision that caused it."""
        if alert is not None:
            self._pending_alerts.append(alert)

    def _judge_alerts(self, ts: int, caused_by: str, out: list[DerivedRecord]) -> None:
        """After a due moment or an input: the alerts it decided, then the threshold rules
        (each class's capacity, in id order; the fleet's health) where anything changed.
        A rule fires when met and not firing, and resolves when firing and no longer met
        (or switched off)."""
        out.extend(self._pending_alerts)
        self._pending_alerts.clear()
        book = self._alerts
        if self._dirty_classes:
            threshold = self._capacity_below
            for class_id in sorted(self._dirty_classes):
                firing = book.fires(CAPACITY, "hardware_class", class_id)
                if not threshold and not firing:
                    continue
                members = self._by_class.get(class_id)
                state = self._circuits[HARDWARE_CLASS][class_id].state
                _, live, free = members.capacity(state) if members else (0, 0, 0)
                # The share below the threshold, without dividing: both engines agree.
                below = bool(threshold) and (free * 100.0 < threshold * live or live == 0)
                if below == firing:
                    continue
                share = f"{free} of {live} live {class_id} workers available"
                if below:
                    message = f"{share}, below {threshold:g}%"
                    alert = book.fire(CAPACITY, "hardware_class", class_id, message, ts, caused_by)
                else:
                    alert = book.resolve(CAPACITY, "hardware_class", class_id, share, ts, caused_by)
                out.append(alert)  # type: ignore[arg-type]
            self._dirty_classes.clear()
        if self._health_dirty:
            self._health_dirty = False
            threshold = self._health_below
            health = overall_health(self._circuit_count, self._open_count, self._half_open_count)
            below = bool(threshold) and health < threshold
            if below != book.fires(FLEET_HEALTH, "fleet", "fleet"):
                text = f"overall health {health:g}"
                if below:
                    text = f"{text}, below {threshold:g}"
                    alert = book.fire(FLEET_HEALTH, "fleet", "fleet", text, ts, caused_by)
                else:
                    alert = book.resolve(FLEET_HEALTH, "fleet", "fleet", text, ts, caused_by)
                out.append(alert)  # type: ignore[arg-type]

    def _push_outage_timer(self, circuit: Circuit) -> None:
        self._seq += 1
        due = round(circuit.outage_since + self._open_longer_ms, 6)
        entry = (due, circuit.id, OUTAGE + circuit.rank, self._seq, circuit, circuit.outage_since)
        heappush(self._heap, entry)

    def _open_too_long(
        self, circuit: Circuit, since: int, due: float, ts: int, caused_by: str
    ) -> bool:
        """An outage timer is due: FIRING if the circuit has not been CLOSED since."""
        if circuit.outage_since != since or not self._open_longer_ms:
            return False
        if round(since + self._open_longer_ms, 6) > due:  # the setting grew meanwhile
            return False
        seconds = self._open_longer_ms / 1000.0
        message = f"{circuit.kind.value} circuit {circuit.id} not CLOSED for {seconds:g}s"
        kind = circuit.kind.value
        alert = self._alerts.fire(OPEN_LONGER, kind, circuit.id, message, ts, caused_by)
        self._queue_alert(alert)
        return alert is not None

    def _judge_skew(self, worker: Worker, skew_ms: int, caused_by: str) -> None:
        """A worker whose clock is off by more than max_skew_s fires; its next event within
        it resolves (also after the rule is switched off)."""
        now = self.now
        if abs(skew_ms) > self._skew_ms:
            if not worker.skewed and self._skew_alerts:
                worker.skewed = True
                message = f"worker {worker.id}'s clock is {skew_ms / 1000.0:+g}s off the broker's"
                self._queue_alert(
                    self._alerts.fire(CLOCK_SKEW, "worker", worker.id, message, now, caused_by)
                )
        elif worker.skewed:
            worker.skewed = False
            message = f"worker {worker.id}'s clock is within {self._skew_ms / 1000.0:g}s again"
            self._queue_alert(
                self._alerts.resolve(CLOCK_SKEW, "worker", worker.id, message, now, caused_by)
            )

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
        if version != _SNAPSHOT_VERSION:
            raise ValueError(f"snapshot: version {version}, expected {_SNAPSHOT_VERSION}")
        core = cls.__new__(cls)
        core.__dict__.update(state)
        return core


def _rate_and_id(sample: tuple[float, str, Worker]) -> tuple[float, str]:
    return sample[0], sample[1]


def _on_heartbeat(core: FleetCore, worker: Worker, event: WorkerEvent, out: list) -> None:
    """Liveness only, marked before any handler runs."""


_WORKER_HANDLERS: dict[str, Callable[[FleetCore, Worker, WorkerEvent, list], None]] = {
    EventKind.HEARTBEAT: _on_heartbeat,
    EventKind.TASK_STARTED: FleetCore._on_started,
    EventKind.CHECKPOINT: FleetCore._on_checkpoint,
    EventKind.SUCCESS: FleetCore._on_success,
    EventKind.FAILURE: FleetCore._on_failure,
}
