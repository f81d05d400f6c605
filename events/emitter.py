"""The worker SDK: build, validate and send worker events without ever blocking or failing
the worker because of the broker.

`Emitter` builds events (events/build.py: bad input raises InvalidEventError naming the
field and sends nothing) and hands them to a `Transport` (events/transport.py; by default
`KafkaTransport`, which sends from a background thread and spools what the broker does
not acknowledge).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from random import Random
from types import TracebackType
from typing import Any

from .build import build_worker_event
from .config import EmitterSettings, Settings, load_settings
from .models import EventKind, FailureType, WorkerEvent
from .transport import DEFAULT_MESSAGE_TIMEOUT_MS, KafkaTransport, Transport

__all__ = [
    "DEFAULT_MESSAGE_TIMEOUT_MS",
    "Emitter",
    "KafkaTransport",
    "Transport",
    "build_worker_event",
    "new_event_id",
]


# uuid4's version and variant bits, applied to 128 random bits.
_UUID4_KEEP = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)
# A private generator, seeded from os.urandom: a `random.seed(n)` elsewhere (a simulator,
# a test) must not make two processes repeat ids, and neither may a fork.
_ids = Random()
_random_bits = _ids.getrandbits
_forks = [0]  # forks between the first process and this one: a child needs new producers


def _after_fork() -> None:
    _ids.seed()
    _forks[0] += 1


os.register_at_fork(after_in_child=_after_fork)


def new_event_id() -> str:
    """A uuid4 as 32 hex digits at a quarter of the cost of `uuid.uuid4().hex`: ids need
    to be unique, not secret, so a seeded generator (thread-safe) replaces a system call
    per event."""
    return "%032x" % ((_random_bits(128) & _UUID4_KEEP) | _UUID4_SET)


# For a transport without a setting of its own (a custom one, a test double).
_DEFAULT_CLOSE_TIMEOUT_S: float = EmitterSettings.model_fields["close_timeout_s"].default


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Emitter(AbstractContextManager["Emitter"]):
    """Reports one worker's events. Thread-safe enough for a heartbeat thread beside the
    worker's own calls (the producer is thread-safe; bookkeeping is per event id)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        worker_id: str,
        hardware_class: str,
        transport: Transport | None = None,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
    ) -> None:
        # Checked once here, by the model's own rules (UTF-8 text included), so a bad
        # identity fails at start-up, not in the sender thread at the first event.
        self._build(EventKind.HEARTBEAT, worker_id, hardware_class, ts=0)
        self.worker_id = worker_id
        self.hardware_class = hardware_class
        if transport is None:
            transport = KafkaTransport(
                settings or load_settings(), message_timeout_ms=message_timeout_ms
            )
        self.transport = transport
        self._heartbeat: tuple[threading.Thread, threading.Event] | None = None
        # Sequenced ids, `<producer>.<n>`: the decider remembers a producer's numbers as
        # ranges, so dropping repeats costs it next to nothing however many events it
        # has seen (processors/core/repeats.py). A fresh producer per emitter and per
        # process (a forked child draws its own); numbers come from a thread-safe count.
        self._new_producer()

    def _new_producer(self) -> None:
        self.producer = f"{_random_bits(64):016x}"
        self._numbers = itertools.count(1)
        self._fork = _forks[0]

    # --- building events -----------------------------------------------------------------

    @staticmethod
    def _build(
        kind: EventKind,
        worker_id: str,
        hardware_class: str,
        *,
        event_id: str | None = None,
        ts: int | None = None,
        **fields: Any,
    ) -> WorkerEvent:
        """Any worker's event, validated (the `faultstream emit` command uses this)."""
        fields["event_id"] = new_event_id() if event_id is None else event_id
        fields["kind"] = kind
        fields["ts"] = now_ms() if ts is None else ts
        fields["worker_id"] = worker_id
        fields["hardware_class"] = hardware_class
        return build_worker_event(fields)

    def _send(
        self, kind: EventKind, event_id: str | None, ts: int | None, fields: dict[str, Any]
    ) -> str:
        if event_id is None:
            if self._fork != _forks[0]:
                self._new_producer()
            event_id = f"{self.producer}.{next(self._numbers)}"
        fields["event_id"] = event_id
        fields["kind"] = kind
        fields["ts"] = time.time_ns() // 1_000_000 if ts is None else ts
        fields["worker_id"] = self.worker_id
        fields["hardware_class"] = self.hardware_class
        event = build_worker_event(fields)
        self.transport.send(event)
        return event.event_id

    def emit(self, event: WorkerEvent) -> str:
        """Send a prebuilt event (any worker's: the CLI and simulators use this)."""
        self.transport.send(event)
        return event.event_id

    def heartbeat(self, *, event_id: str | None = None, ts: int | None = None) -> str:
        return self._send(EventKind.HEARTBEAT, event_id, ts, {})

    def task_started(
        self,
        task_id: str,
        task_type: str,
        *,
        attempt: int = 0,
        recovery_command_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        ts: int | None = None,
    ) -> str:
        return self._send(
            EventKind.TASK_STARTED,
            event_id,
            ts,
            {
                "task_id": task_id,
                "task_type": task_type,
                "attempt": attempt,
                "recovery_command_id": recovery_command_id,
                "attributes": {} if attributes is None else attributes,
            },
        )

    def checkpoint(
        self,
        task_id: str,
        seq: int,
        state: bytes | None = None,
        *,
        task_type: str | None = None,
        attempt: int = 0,
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        ts: int | None = None,
    ) -> str:
        return self._send(
            EventKind.CHECKPOINT,
            event_id,
            ts,
            {
                "task_id": task_id,
                "task_type": task_type,
                "checkpoint_seq": seq,
                "checkpoint_state": state,
                "attempt": attempt,
                "attributes": {} if attributes is None else attributes,
            },
        )

    def success(
        self,
        task_id: str,
        task_type: str,
        *,
        attempt: int = 0,
        recovery_command_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        ts: int | None = None,
    ) -> str:
        return self._send(
            EventKind.SUCCESS,
            event_id,
            ts,
            {
                "task_id": task_id,
                "task_type": task_type,
                "attempt": attempt,
                "recovery_command_id": recovery_command_id,
                "attributes": {} if attributes is None else attributes,
            },
        )

    def failure(
        self,
        task_id: str,
        task_type: str,
        *,
        failure_type: FailureType | str | None = None,
        message: str | None = None,
        attempt: int = 0,
        recovery_command_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        ts: int | None = None,
    ) -> str:
        """A failed task; with no `failure_type` the processor classifies `message`."""
        return self._send(
            EventKind.FAILURE,
            event_id,
            ts,
            {
                "task_id": task_id,
                "task_type": task_type,
                "failure_type": failure_type,
                "message": message,
                "attempt": attempt,
                "recovery_command_id": recovery_command_id,
                "attributes": {} if attributes is None else attributes,
            },
        )

    def task(
        self,
        task_id: str,
        task_type: str,
        *,
        attempt: int = 0,
        recovery_command_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> AbstractContextManager[Any]:
        """TASK_STARTED now, then SUCCESS on normal exit or a classified FAILURE (the
        exception re-raised); see events/task.py."""
        from .task import task_context

        return task_context(
            self,
            task_id,
            task_type,
            attempt=attempt,
            recovery_command_id=recovery_command_id,
            attributes=attributes,
        )

    # --- heartbeat, flush, close ---------------------------------------------------------

    def start_heartbeat(self, interval_s: float = 10.0) -> None:
        """Send a HEARTBEAT every `interval_s` from a daemon thread until close()."""
        from .task import heartbeat_loop

        if self._heartbeat is not None:
            return
        stop = threading.Event()
        thread = threading.Thread(
            target=heartbeat_loop,
            args=(self, interval_s, stop),
            name=f"faultstream-heartbeat-{self.worker_id}",
            daemon=True,
        )
        thread.start()
        self._heartbeat = (thread, stop)

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            thread, stop = self._heartbeat
            stop.set()
            thread.join()
            self._heartbeat = None

    def resend_spool(self, timeout: float = 30.0) -> int:
        """Send spooled events again now; returns how many remain spooled (0 when the
        transport has no spool)."""
        resend = getattr(self.transport, "resend_spool", None)
        return resend(timeout) if resend is not None else 0

    def flush(self, timeout: float = 30.0) -> int:
        """Wait up to `timeout` s for acknowledgements; returns how many events are neither
        delivered nor spooled: still in flight, or lost (each loss is logged)."""
        return self.transport.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop the heartbeat, wait up to `timeout` s (default `[emitter] close_timeout_s`)
        for acknowledgements, then spool whatever is unacknowledged."""
        self.stop_heartbeat()
        if timeout is None:
            timeout = getattr(self.transport, "close_timeout_s", _DEFAULT_CLOSE_TIMEOUT_S)
        self.transport.close(timeout)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
