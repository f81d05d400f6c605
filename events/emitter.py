"""The worker SDK: build, validate and send worker events without ever blocking or failing
the worker because of the broker.

`Emitter` builds events (validated by the pydantic model; bad input raises
InvalidEventError naming the field and sends nothing) and hands them to a `Transport`.
`KafkaTransport` produces them with confluent-kafka and keeps every record it has not yet
seen acknowledged; what fails delivery or is still unacknowledged at close goes to the
spool (events/spool.py) and is sent again by the next emitter or by `resend_spool()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import Any, Protocol

from confluent_kafka import KafkaError, Producer
from pydantic import ValidationError

from .codec import Codec
from .config import Settings, load_settings
from .exceptions import InvalidEventError
from .models import EventKind, FailureType, WorkerEvent
from .spool import Spool

log = logging.getLogger(__name__)

DEFAULT_MESSAGE_TIMEOUT_MS = 5 * 60 * 1000  # a broker may be away this long, no event lost
_PRODUCE_RETRIES = 5  # on a full local queue: serve callbacks and retry, then spool


class Transport(Protocol):
    """Where an emitter's events go: Kafka here, an in-process pipeline for the demo."""

    def send(self, event: WorkerEvent) -> None: ...

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` s for delivery; returns how many are still undelivered."""
        ...

    def close(self, timeout: float) -> None: ...


def new_event_id() -> str:
    """A uuid4 as 32 hex digits, a third of the cost of `uuid.uuid4().hex`."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class KafkaTransport:
    """Produces worker events to `<prefix>.events`, key worker_id, and spools what the
    broker did not acknowledge. Never raises to the caller for a broker problem."""

    def __init__(
        self,
        settings: Settings,
        *,
        codec: Codec | None = None,
        spool: Spool | None = None,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
        producer_config: Mapping[str, Any] | None = None,
        resend_spooled: bool = True,
    ) -> None:
        kafka = settings.kafka
        self.topic = kafka.topic("events")
        self.codec = codec or Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
        self.spool = spool if spool is not None else Spool(settings.emitter.spool_path)
        config: dict[str, Any] = {
            "bootstrap.servers": kafka.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            # Where aiokafka (Faust) puts a key, so a worker's events stay in order.
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            "message.timeout.ms": message_timeout_ms,
            "compression.type": "lz4",
        }
        config.update(producer_config or {})
        self._producer = Producer(config)
        self._unacked: dict[str, WorkerEvent] = {}
        self._failed: list[WorkerEvent] = []
        # Events re-sent from the spool: still in the file until acknowledged.
        self._from_spool: set[str] = set()
        self._spool_acked: set[str] = set()
        self._closed = False
        self.acked = 0
        if resend_spooled:
            self._send_spooled()

    # --- sending -------------------------------------------------------------------------

    def send(self, event: WorkerEvent) -> None:
        self._produce(event)
        self._producer.poll(0)  # serve delivery callbacks on the caller's thread
        if self._failed:
            self._spool_failed()

    def _produce(self, event: WorkerEvent) -> None:
        value = self.codec.encode_worker_event(event)
        self._unacked[event.event_id] = event
        on_delivery = partial(self._on_delivery, event.event_id)
        for attempt in range(_PRODUCE_RETRIES):
            try:
                self._producer.produce(self.topic, value, event.worker_id, on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.001 * (attempt + 1))
        # The local queue stayed full: keep the event on disk rather than block the worker.
        log.warning("producer queue full; event %s spooled", event.event_id)
        self._failed.append(self._unacked.pop(event.event_id))

    def _on_delivery(self, event_id: str, err: KafkaError | None, _msg: object) -> None:
        event = self._unacked.pop(event_id, None)
        if event is None:  # already spooled by close()
            return
        if err is None:
            self.acked += 1
            if event_id in self._from_spool:
                self._spool_acked.add(event_id)
            return
        log.warning("event %s not delivered (%s); spooled", event_id, err.str())
        if event_id not in self._from_spool:  # a re-sent one is still in the spool
            self._failed.append(event)

    def _spool_failed(self) -> None:
        failed, self._failed = self._failed, []
        self.spool.append(failed)

    # --- the spool -----------------------------------------------------------------------

    def _send_spooled(self) -> int:
        events = [e for e in self.spool.read() if e.event_id not in self._from_spool]
        for event in events:
            self._from_spool.add(event.event_id)
            self._produce(event)
        if events:
            log.info("re-sending %d spooled events", len(events))
        return len(events)

    def resend_spool(self, timeout: float = 30.0) -> int:
        """Send the spooled events again and wait for them; returns how many remain."""
        self._send_spooled()
        self.flush(timeout)
        return len(self.spool.read())

    def _settle_spool(self) -> None:
        if self._failed:
            self._spool_failed()
        if self._spool_acked:
            acked, self._spool_acked = self._spool_acked, set()
            self.spool.remove(acked)
            self._from_spool -= acked

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events sent but not yet acknowledged."""
        return len(self._unacked)

    def flush(self, timeout: float) -> int:
        self._producer.flush(timeout)
        self._settle_spool()
        return len(self._unacked)

    def close(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush(timeout)
        left = [e for eid, e in self._unacked.items() if eid not in self._from_spool]
        self._unacked.clear()
        if left:
            # Possibly delivered after all (in flight); a repeat event_id is ignored downstream.
            self.spool.append(left)
            log.warning("%d events unacknowledged at close; spooled", len(left))
        self._producer.purge()
        self._producer.flush(0)  # purged records' callbacks find nothing left to spool
        self._settle_spool()


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
        # Checked once here so a bad identity fails at start-up, not at the first failure.
        self._build(EventKind.HEARTBEAT, worker_id, hardware_class, ts=0)
        self.worker_id = worker_id
        self.hardware_class = hardware_class
        if transport is None:
            transport = KafkaTransport(
                settings or load_settings(), message_timeout_ms=message_timeout_ms
            )
        self.transport = transport
        self._heartbeat: tuple[threading.Thread, threading.Event] | None = None

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
        try:
            return WorkerEvent(
                event_id=event_id if event_id is not None else new_event_id(),
                kind=kind,
                ts=ts if ts is not None else time.time_ns() // 1_000_000,
                worker_id=worker_id,
                hardware_class=hardware_class,
                **fields,
            )
        except ValidationError as exc:
            raise InvalidEventError.from_validation(exc) from None

    def _send(self, kind: EventKind, **fields: Any) -> str:
        event = self._build(kind, self.worker_id, self.hardware_class, **fields)
        self.transport.send(event)
        return event.event_id

    def emit(self, event: WorkerEvent) -> str:
        """Send a prebuilt event (any worker's: the CLI and simulators use this)."""
        self.transport.send(event)
        return event.event_id

    def heartbeat(self, *, event_id: str | None = None, ts: int | None = None) -> str:
        return self._send(EventKind.HEARTBEAT, event_id=event_id, ts=ts)

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
            task_id=task_id,
            task_type=task_type,
            attempt=attempt,
            recovery_command_id=recovery_command_id,
            attributes=attributes or {},
            event_id=event_id,
            ts=ts,
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
            task_id=task_id,
            task_type=task_type,
            checkpoint_seq=seq,
            checkpoint_state=state,
            attempt=attempt,
            attributes=attributes or {},
            event_id=event_id,
            ts=ts,
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
            task_id=task_id,
            task_type=task_type,
            attempt=attempt,
            recovery_command_id=recovery_command_id,
            attributes=attributes or {},
            event_id=event_id,
            ts=ts,
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
            task_id=task_id,
            task_type=task_type,
            failure_type=failure_type,
            message=message,
            attempt=attempt,
            recovery_command_id=recovery_command_id,
            attributes=attributes or {},
            event_id=event_id,
            ts=ts,
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
        """Wait for acknowledgements; returns how many events are still undelivered."""
        return self.transport.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the heartbeat, wait up to `timeout` s, spool whatever is unacknowledged."""
        self.stop_heartbeat()
        self.transport.close(timeout)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
