"""The simulated fleet: workers running tasks on simulated event time, closed-loop.

Workers report through the real worker SDK (`Emitter`) over an injected transport; TICKs
go to `send_control`. Retries come from the reference `Coordinator`, which reads the
recovery commands the core derived from these very events, so every recovery outcome in
the history is the result of what the coordinator did. Event time starts at a fixed
epoch and all randomness comes from `random.Random(seed)`: a seed reproduces the history.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from faultstream.events.emitter import Emitter, Transport
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import InputRecord, RecoveryStrategy, Tick
from faultstream.processors.coordinator import Assignment, Coordinator, Dispatch

from .incidents import IncidentState, Outcome, SimTask, SimWorker, decide_outcome, slowdown
from .scenario import ONE_WORKER_KINDS, Scenario

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_RETRY_IDLE_MS = 10_000  # a worker with nothing it may run looks again after this


@dataclass
class Run:
    """One attempt of a task on a worker."""

    task: SimTask
    attempt: int
    recovery_command_id: str | None
    parameters: dict[str, str]
    outcome: Outcome
    started_at: int
    end_at: int
    next_seq: int
    dispatch: Dispatch


class FleetSimulator:
    def __init__(
        self,
        scenario: Scenario,
        *,
        transport: Transport,
        send_control: Callable[[InputRecord], object],
        coordinator: Coordinator,
        seed: int = 7,
        workers: int | None = None,
        duration_ms: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.coordinator = coordinator
        self.send_control = send_control
        self.seed = seed
        self.rng = random.Random(seed)
        self.duration_ms = duration_ms or scenario.duration_ms
        self.start_ms = EPOCH_MS
        self.now = EPOCH_MS
        self.workers = _build_fleet(scenario, workers or scenario.workers)
        self.emitters = {
            w.worker_id: Emitter(
                worker_id=w.worker_id, hardware_class=w.hardware_class, transport=transport
            )
            for w in self.workers
        }
        for w in self.workers:
            coordinator.register_worker(w.worker_id, w.hardware_class)
        self.incidents = [IncidentState(spec) for spec in scenario.incidents]
        _check_named_workers(scenario, self.workers)
        self.runs: dict[str, Run] = {}
        self.tasks: dict[str, SimTask] = {}
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._task_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._silence_pending: IncidentState | None = None
        self.events_sent = 0

    # --- the event loop -------------------------------------------------------------------

    def _at(self, ts: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (ts, next(self._order), action))

    def run(self, progress: Callable[[float], None] | None = None) -> None:
        end = self.start_ms + self.duration_ms
        self._at(self.start_ms, self._tick)
        for i, worker in enumerate(self.workers):
            offset = i * self.scenario.heartbeat_interval_ms // max(len(self.workers), 1)
            self._at(self.start_ms + offset, lambda w=worker: self._heartbeat(w))
            self._at(self.start_ms + offset + 1, lambda w=worker: self._idle(w))
        for state in self.incidents:
            self._at(self.start_ms + state.spec.start_ms, lambda s=state: self._begin(s))
            if state.spec.kind == "silent_worker":
                self._at(self.start_ms + state.spec.end_ms, lambda s=state: self._return(s))
        step = max(self.duration_ms // 100, 1)
        next_report = self.start_ms
        while self._queue and self._queue[0][0] <= end:
            ts, _, action = heapq.heappop(self._queue)
            self.now = ts
            action()
            if progress is not None and ts >= next_report:
                progress((ts - self.start_ms) / self.duration_ms)
                next_report = ts + step
        if progress is not None:
            progress(1.0)

    def _event_id(self) -> str:
        return f"sim{self.seed}-{next(self._event_ids):08d}"

    def _offset(self) -> int:
        return self.now - self.start_ms

    # --- clock and heartbeats -------------------------------------------------------------

    def _tick(self) -> None:
        self.send_control(Tick(event_id=f"sim{self.seed}-tick-{self.now}", ts=self.now))
        self.coordinator.pump()
        self._at(self.now + self.scenario.tick_interval_ms, self._tick)

    def _heartbeat(self, worker: SimWorker) -> None:
        if not worker.silent:
            self.emitters[worker.worker_id].heartbeat(event_id=self._event_id(), ts=self.now)
            self.events_sent += 1
        self._at(self.now + self.scenario.heartbeat_interval_ms, lambda: self._heartbeat(worker))

    # --- incidents ------------------------------------------------------------------------

    def _begin(self, state: IncidentState) -> None:
        state.started_at = self.now
        spec = state.spec
        members = sorted(
            w.worker_id for w in self.workers if w.hardware_class == spec.hardware_class
        )
        if spec.worker is not None:
            state.workers = [spec.worker]  # named: no draw, so other incidents keep theirs
        elif spec.kind in ONE_WORKER_KINDS and members:
            state.workers = [self.rng.choice(members)]
        elif spec.kind == "hardware_fault" and members:
            count = max(1, round(len(members) * spec.fraction))
            state.workers = sorted(self.rng.sample(members, count))
        elif spec.kind == "silent_worker":
            self._silence_pending = state  # the next worker of the class to checkpoint

    def _return(self, state: IncidentState) -> None:
        for worker_id in state.workers:
            worker = self._worker(worker_id)
            if worker.silent:
                worker.silent = False  # restarted: its old task is gone, it takes new work
                run = self.runs.pop(worker_id, None)
                if run is not None:
                    self.coordinator.completed(run.dispatch)
                self._idle(worker)

    def _worker(self, worker_id: str) -> SimWorker:
        return next(w for w in self.workers if w.worker_id == worker_id)

    # --- tasks ----------------------------------------------------------------------------

    def _idle(self, worker: SimWorker) -> None:
        if worker.silent or worker.worker_id in self.runs:
            return
        coordinator = self.coordinator
        coordinator.pump()
        assignment = coordinator.next_assignment(worker.worker_id, worker.hardware_class, self.now)
        if assignment is not None:
            self._start_retry(worker, assignment)
            return
        task_type = self._pick_task_type(worker)
        if task_type is None:
            # A worker left without work restarts a dead browser on its own.
            worker.browser_ok = True
            self._at(self.now + _RETRY_IDLE_MS, lambda: self._idle(worker))
            return
        spec = self.scenario.task_types[task_type]
        task = SimTask(
            task_id=f"task-{next(self._task_ids):06d}",
            task_type=task_type,
            duration_ms=round(self.rng.uniform(*spec.duration_s) * 1000),
            attributes=dict(spec.attributes),
        )
        self.tasks[task.task_id] = task
        coordinator.remember_parameters(task.task_id, task.attributes)
        self._start(worker, task, attempt=0, command_id=None, parameters=task.attributes)

    def _pick_task_type(self, worker: SimWorker) -> str | None:
        fits = [
            t
            for t in self.scenario.task_types.values()
            if worker.hardware_class in t.hardware
            and self.coordinator.admits(worker.worker_id, worker.hardware_class, t.name)
        ]
        if not fits:
            return None
        return self.rng.choices([t.name for t in fits], weights=[t.weight for t in fits])[0]

    def _start_retry(self, worker: SimWorker, assignment: Assignment) -> None:
        task = self.tasks.get(assignment.task_id)
        if task is None:  # a command about a task this fleet never ran
            self._idle(worker)
            return
        if assignment.restart_browser:
            worker.browser_ok = True
        parameters = dict(assignment.parameters)
        first_seq = 0
        if assignment.checkpoint_seq is not None:
            parameters["resume_from_checkpoint"] = str(assignment.checkpoint_seq)
            first_seq = assignment.checkpoint_seq + 1
        self._start(
            worker,
            task,
            attempt=assignment.attempt,
            command_id=assignment.recovery_command_id,
            parameters=parameters,
            first_seq=first_seq,
            strategy=assignment.strategy,
        )

    def _start(
        self,
        worker: SimWorker,
        task: SimTask,
        *,
        attempt: int,
        command_id: str | None,
        parameters: dict[str, str],
        first_seq: int = 0,
        strategy: RecoveryStrategy | None = None,
    ) -> None:
        emitter = self.emitters[worker.worker_id]
        emitter.task_started(
            task.task_id,
            task.task_type,
            attempt=attempt,
            recovery_command_id=command_id,
            attributes=parameters,
            event_id=self._event_id(),
            ts=self.now,
        )
        self.events_sent += 1
        dispatch = self.coordinator.dispatched(
            worker.worker_id, worker.hardware_class, task.task_type
        )
        outcome = decide_outcome(
            self.rng,
            self.incidents,
            self._offset(),
            worker,
            task,
            parameters,
            self.scenario.background_failure_rate,
            strategy,
        )
        interval = self.scenario.checkpoint_interval_ms
        duration = task.duration_ms
        if (
            worker.hardware_class == "cpu"
            and "cpu" not in self.scenario.task_types[task.task_type].hardware
        ):
            duration = round(duration * self.scenario.cpu_slowdown)
        duration = round(duration * slowdown(self.incidents, self._offset(), worker, task))
        # Resuming from a checkpoint skips the work it already holds.
        remaining = max(duration - first_seq * interval, interval)
        run_ms = max(1_000, round(remaining * outcome.at_fraction))
        run = Run(task, attempt, command_id, parameters, outcome, self.now, self.now + run_ms,
                  first_seq, dispatch)  # fmt: skip
        self.runs[worker.worker_id] = run
        if interval < run_ms:
            self._at(self.now + interval, lambda: self._checkpoint(worker, run))
        self._at(run.end_at, lambda: self._finish(worker, run))

    def _checkpoint(self, worker: SimWorker, run: Run) -> None:
        if worker.silent or self.runs.get(worker.worker_id) is not run:
            return
        self.emitters[worker.worker_id].checkpoint(
            run.task.task_id,
            run.next_seq,
            f"step={run.next_seq}".encode(),
            task_type=run.task.task_type,
            attempt=run.attempt,
            event_id=self._event_id(),
            ts=self.now,
        )
        self.events_sent += 1
        run.next_seq += 1
        pending = self._silence_pending
        if pending is not None and worker.hardware_class == pending.spec.hardware_class:
            # Goes quiet right after a checkpoint: the task must move and resume from it.
            self._silence_pending = None
            worker.silent = True
            pending.workers = [worker.worker_id]
            pending.tasks.add(run.task.task_id)
            return
        if self.now + self.scenario.checkpoint_interval_ms < run.end_at:
            self._at(self.now + self.scenario.checkpoint_interval_ms,
                     lambda: self._checkpoint(worker, run))  # fmt: skip

    def _finish(self, worker: SimWorker, run: Run) -> None:
        if worker.silent or self.runs.get(worker.worker_id) is not run:
            return
        del self.runs[worker.worker_id]
        emitter = self.emitters[worker.worker_id]
        task, outcome = run.task, run.outcome
        if outcome.failure_type is None:
            emitter.success(
                task.task_id,
                task.task_type,
                attempt=run.attempt,
                recovery_command_id=run.recovery_command_id,
                attributes=run.parameters,
                event_id=self._event_id(),
                ts=self.now,
            )
        else:
            emitter.failure(
                task.task_id,
                task.task_type,
                failure_type=outcome.failure_type,
                message=outcome.message,
                attempt=run.attempt,
                recovery_command_id=run.recovery_command_id,
                attributes=run.parameters,
                event_id=self._event_id(),
                ts=self.now,
            )
            if outcome.incident is not None:
                for state in self.incidents:
                    if state.spec.name == outcome.incident:
                        state.tasks.add(task.task_id)
        self.events_sent += 1
        self.coordinator.completed(run.dispatch)
        gap = round(self.rng.uniform(*self.scenario.idle_gap_s) * 1000)
        self._at(self.now + gap, lambda: self._idle(worker))


def _check_named_workers(scenario: Scenario, workers: list[SimWorker]) -> None:
    known = {w.worker_id for w in workers}
    for index, spec in enumerate(scenario.incidents):
        if spec.worker is not None and spec.worker not in known:
            raise ConfigError(
                f"{scenario.source}: incidents[{index}].worker: {spec.worker!r} is not in "
                f"this fleet of {len(workers)} workers"
            )


def _build_fleet(scenario: Scenario, count: int) -> list[SimWorker]:
    """Workers per class by the fleet shares (largest remainder), ids like `cuda-03`."""
    total = sum(scenario.fleet.values())
    exact = {cls: count * share / total for cls, share in scenario.fleet.items()}
    sizes = {cls: int(value) for cls, value in exact.items()}
    by_remainder = sorted(exact, key=lambda cls: (sizes[cls] - exact[cls], cls))
    for cls in by_remainder[: count - sum(sizes.values())]:
        sizes[cls] += 1
    return [
        SimWorker(f"{cls}-{i:02d}", cls) for cls in scenario.fleet for i in range(1, sizes[cls] + 1)
    ]
