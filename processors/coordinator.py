"""The reference coordinator: turns recovery commands into work assignments.

A library piece a fleet scheduler can adopt. It reads derived records from a callable
source (the embedded pipeline's records, or `CommandConsumer.poll` on Kafka), learns every
circuit's state from `circuit_state_changed` records, and answers one question for the
scheduler: "this worker is idle; what should it run?"

It honours the commands: the retry carries the new `attempt`, the command's `parameters`
(batch_size, precision, …) on top of the task's previous ones and its `recovery_command_id`;
it waits `delay_s` (event time); it moves the task to the target worker or hardware class;
it restarts the browser first for BROWSER_RESTART; it resumes from `checkpoint_seq`. It
sends no work where a circuit is OPEN or FORCED_OPEN and at most `half_open_max_calls`
probes at a time where one is HALF_OPEN. ESCALATION is reported (`escalations`), not retried.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from faultstream.events.config import CoreSettings
from faultstream.events.models import (
    CircuitKind,
    CircuitState,
    CircuitStateChanged,
    DerivedRecord,
    RecoveryCommand,
    RecoveryStrategy,
)

CommandSource = Callable[[], Iterable[DerivedRecord]]
CircuitKey = tuple[CircuitKind, str]

_BLOCKED = (CircuitState.OPEN, CircuitState.FORCED_OPEN)
# Strategies that retry where the task failed; the others move it.
_SAME_WORKER = frozenset(
    {
        RecoveryStrategy.IMMEDIATE_RETRY,
        RecoveryStrategy.DELAYED_RETRY,
        RecoveryStrategy.REDUCED_BATCH_SIZE,
        RecoveryStrategy.REDUCED_PRECISION,
        RecoveryStrategy.BROWSER_RESTART,
    }
)


@dataclass(frozen=True)
class Assignment:
    """One retry, ready for a worker to run."""

    task_id: str
    task_type: str | None
    attempt: int
    recovery_command_id: str
    strategy: RecoveryStrategy
    parameters: dict[str, str]
    checkpoint_seq: int | None
    not_before_ms: int
    worker_id: str | None  # the worker it should run on (for a move: the preferred target)
    hardware_class: str | None  # the class it must run on, when known
    avoid_worker_id: str | None  # a moved task never goes back where it failed
    pinned: bool  # only `worker_id` may run it (a browser restart is local)
    restart_browser: bool
    queued_at_ms: int


@dataclass
class Dispatch:
    """A task handed to a worker; give it back to `completed` when its outcome is known."""

    ticket: int
    probes: list[CircuitKey] = field(default_factory=list)


class Coordinator:
    def __init__(
        self,
        settings: CoreSettings | None = None,
        *,
        source: CommandSource | None = None,
        target_grace_ms: int = 60_000,
    ) -> None:
        self.settings = settings or CoreSettings()
        self.source = source
        # How long a moved task waits for its preferred target before any fit worker may take it.
        self.target_grace_ms = target_grace_ms
        self.states: dict[CircuitKey, CircuitState] = {}
        self.pending: dict[str, Assignment] = {}
        self.escalations: list[RecoveryCommand] = []
        self.task_parameters: dict[str, dict[str, str]] = {}
        self.worker_classes: dict[str, str] = {}
        self._probes: dict[CircuitKey, set[int]] = {}
        self._seen_commands: set[str] = set()
        self._tickets = itertools.count(1)

    # --- input ----------------------------------------------------------------------------

    def register_worker(self, worker_id: str, hardware_class: str) -> None:
        """Tell the coordinator a worker's class, so a moved task stays on a fitting class."""
        self.worker_classes[worker_id] = hardware_class

    def remember_parameters(self, task_id: str, parameters: dict[str, str]) -> None:
        """The attributes a task was first started with (a retry changes only some)."""
        self.task_parameters.setdefault(task_id, dict(parameters))

    def pump(self) -> int:
        """Read what the source has now; returns how many records it gave."""
        if self.source is None:
            return 0
        records = list(self.source())
        self.observe(records)
        return len(records)

    def observe(self, records: Iterable[DerivedRecord]) -> None:
        for record in records:
            if isinstance(record, CircuitStateChanged):
                self._on_circuit(record)
            elif isinstance(record, RecoveryCommand):
                self._on_command(record)
            # circuit_figures (what the core counts) and alerts (for people): nothing for a
            # coordinator to act on

    def _on_circuit(self, change: CircuitStateChanged) -> None:
        key = (CircuitKind(change.circuit_kind), change.circuit_id)
        self.states[key] = CircuitState(change.to_state)
        if change.to_state == CircuitState.HALF_OPEN:
            self._probes[key] = set()  # a fresh half-open episode, a fresh probe budget

    def _on_command(self, command: RecoveryCommand) -> None:
        if command.command_id in self._seen_commands:
            return  # delivered twice (at-least-once on Kafka)
        self._seen_commands.add(command.command_id)
        queued = self.pending.get(command.task_id)
        if queued is not None and queued.attempt > command.attempt:
            return  # a newer plan for this task is already waiting
        if command.strategy == RecoveryStrategy.ESCALATION:
            self.pending.pop(command.task_id, None)
            self.escalations.append(command)
            return
        self.pending[command.task_id] = self._assignment(command)

    def _assignment(self, command: RecoveryCommand) -> Assignment:
        parameters = {**self.task_parameters.get(command.task_id, {}), **command.parameters}
        self.task_parameters[command.task_id] = parameters
        strategy = RecoveryStrategy(command.strategy)
        failed_class = self.worker_classes.get(command.worker_id)
        if strategy in _SAME_WORKER:
            worker_id, hardware_class, avoid = command.worker_id, failed_class, None
        else:
            worker_id = command.target_worker_id
            hardware_class = command.target_hardware_class or failed_class
            avoid = command.worker_id
        return Assignment(
            task_id=command.task_id,
            task_type=command.task_type,
            attempt=command.attempt,
            recovery_command_id=command.command_id,
            strategy=strategy,
            parameters=parameters,
            checkpoint_seq=command.checkpoint_seq,
            not_before_ms=command.ts + round(command.delay_s * 1000),
            worker_id=worker_id,
            hardware_class=hardware_class,
            avoid_worker_id=avoid,
            pinned=strategy == RecoveryStrategy.BROWSER_RESTART,
            restart_browser=strategy == RecoveryStrategy.BROWSER_RESTART,
            queued_at_ms=command.ts,
        )

    # --- decisions ------------------------------------------------------------------------

    def state(self, kind: CircuitKind, circuit_id: str) -> CircuitState:
        return self.states.get((kind, circuit_id), CircuitState.CLOSED)

    def admits(self, worker_id: str, hardware_class: str, task_type: str | None) -> bool:
        """May a task of `task_type` be sent to this worker now, by its three circuits?"""
        return all(self._admits(key) for key in _keys(worker_id, hardware_class, task_type))

    def _admits(self, key: CircuitKey) -> bool:
        state = self.states.get(key, CircuitState.CLOSED)
        if state in _BLOCKED:
            return False
        if state == CircuitState.HALF_OPEN:
            limit = self.settings.circuits.for_kind(key[0]).half_open_max_calls
            return len(self._probes.get(key, ())) < limit
        return True

    def next_assignment(
        self, worker_id: str, hardware_class: str, now_ms: int
    ) -> Assignment | None:
        """The oldest ready retry this worker may run now, or None. Call `dispatched` when
        the worker takes it."""
        if not self.admits(worker_id, hardware_class, None):
            return None
        best: Assignment | None = None
        for assignment in self.pending.values():
            if not self._fits(assignment, worker_id, hardware_class, now_ms):
                continue
            if best is None or (assignment.not_before_ms, assignment.task_id) < (
                best.not_before_ms,
                best.task_id,
            ):
                best = assignment
        if best is not None:
            del self.pending[best.task_id]
        return best

    def _fits(self, a: Assignment, worker_id: str, hardware_class: str, now_ms: int) -> bool:
        if a.not_before_ms > now_ms or worker_id == a.avoid_worker_id:
            return False
        if a.hardware_class is not None and a.hardware_class != hardware_class:
            return False
        waited = now_ms - max(a.queued_at_ms, a.not_before_ms)
        if (
            a.worker_id is not None
            and a.worker_id != worker_id
            and (a.pinned or waited < self.target_grace_ms)
        ):
            return False
        return self.admits(worker_id, hardware_class, a.task_type)

    def dispatched(self, worker_id: str, hardware_class: str, task_type: str | None) -> Dispatch:
        """Record that a task went to this worker; it takes a probe slot on every half-open
        circuit it touches."""
        dispatch = Dispatch(next(self._tickets))
        for key in _keys(worker_id, hardware_class, task_type):
            if self.states.get(key) == CircuitState.HALF_OPEN:
                self._probes.setdefault(key, set()).add(dispatch.ticket)
                dispatch.probes.append(key)
        return dispatch

    def completed(self, dispatch: Dispatch) -> None:
        """The task's outcome is in (or it was abandoned): its probe slots are free again."""
        for key in dispatch.probes:
            self._probes.get(key, set()).discard(dispatch.ticket)

    def forget(self, task_id: str) -> None:
        """Drop a waiting retry (the task was cancelled)."""
        self.pending.pop(task_id, None)


def _keys(worker_id: str, hardware_class: str, task_type: str | None) -> list[CircuitKey]:
    keys = [(CircuitKind.WORKER, worker_id), (CircuitKind.HARDWARE_CLASS, hardware_class)]
    if task_type is not None:
        keys.append((CircuitKind.TASK_TYPE, task_type))
    return keys
