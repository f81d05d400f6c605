"""Where the worker SDK's events go: the `Transport` protocol and `KafkaTransport`.

`KafkaTransport` produces worker events with confluent-kafka and keeps every record it has
not yet seen acknowledged; what fails delivery or is still unacknowledged at close goes to
the spool (events/spool.py) and is sent again by the next emitter or by `resend_spool()`.

By default a sender thread does the encoding and producing: the caller's `send` only
appends the (already validated) event to a deque, so the worker pays for validation and
an append, not for Avro and librdkafka. One lock keeps queued events in send order when
`flush`, `close` or an over-full queue make the caller drain the deque itself.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, Producer

from .codec import Codec
from .config import Settings
from .models import WorkerEvent
from .spool import Spool

# A child of the emitter's logger, so silencing the SDK (as `faultstream emit` does)
# silences the transport too.
log = logging.getLogger("faultstream.events.emitter.transport")

DEFAULT_MESSAGE_TIMEOUT_MS = 5 * 60 * 1000  # a broker may be away this long, no event lost
# Events waiting for the sender before the caller drains them itself. Small on purpose:
# under sustained load, sharing the GIL with a busy sender thread halves throughput
# (each poll hands the GIL to the caller for a whole switch interval), so a caller that
# outruns the sender does the encoding itself, as with background=False.
DEFAULT_MAX_QUEUED = 256
_PRODUCE_RETRIES = 5  # on a full local queue: serve callbacks and retry, then spool
_POLL_EVERY = 256  # produce calls between two polls while draining a backlog
_ACK_POLL_S = 0.001  # the sender's wait while acks are due: bounds added latency
_IDLE_WAIT_S = 0.1  # the sender's sleep with nothing queued or in flight

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    # Where aiokafka (Faust) puts a key, so a worker's events stay in order.
    "partitioner": "murmur2_random",
    "linger.ms": 5,
    "queue.buffering.max.messages": 1_000_000,
    "compression.type": "lz4",
}


class Transport(Protocol):
    """Where an emitter's events go: Kafka here, an in-process pipeline for the demo."""

    def send(self, event: WorkerEvent) -> None: ...

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` s for delivery; returns how many are still undelivered."""
        ...

    def close(self, timeout: float) -> None: ...


class KafkaTransport:
    """Produces worker events to `<prefix>.events`, key worker_id, and spools what the
    broker did not acknowledge. Never raises to the caller for a broker problem.

    `background=False` encodes and produces on the caller's thread instead (no thread)."""

    def __init__(
        self,
        settings: Settings,
        *,
        codec: Codec | None = None,
        spool: Spool | None = None,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
        producer_config: Mapping[str, Any] | None = None,
        resend_spooled: bool = True,
        background: bool = True,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        kafka = settings.kafka
        self.topic = kafka.topic("events")
        self.codec = codec or Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
        self.spool = spool if spool is not None else Spool(settings.emitter.spool_path)
        config: dict[str, Any] = {
            **PRODUCER_DEFAULTS,
            "bootstrap.servers": kafka.bootstrap_servers,
            "message.timeout.ms": message_timeout_ms,
        }
        config.update(producer_config or {})
        self._producer = Producer(config)
        self._unacked: dict[str, WorkerEvent] = {}
        self._failed: list[WorkerEvent] = []
        # Callbacks run on the sender and on the caller (flush): swaps of these need a lock.
        self._failed_lock = threading.Lock()
        # Events re-sent from the spool: still in the file until acknowledged.
        self._from_spool: set[str] = set()
        self._spool_acked: set[str] = set()
        self._closed = False
        self.acked = 0
        self._queue: deque[WorkerEvent] = deque()
        self._max_queued = max_queued
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = False
        self._stopping = False
        self._sender: threading.Thread | None = None
        if background:
            self._sender = threading.Thread(
                target=self._run_sender, name="faultstream-sender", daemon=True
            )
            self._sender.start()
        if resend_spooled:
            self._send_spooled()

    # --- sending -------------------------------------------------------------------------

    def send(self, event: WorkerEvent) -> None:
        if self._closed:  # nothing would send it any more: keep it on disk
            self._spool_now([event], "sent after close")
            return
        if self._sender is None:
            self._produce(event)
            self._producer.poll(0)  # serve delivery callbacks on the caller's thread
            if self._failed:
                self._spool_failed()
            return
        queue = self._queue
        queue.append(event)
        if self._idle:
            self._wake.set()
        elif len(queue) > self._max_queued:
            self._drain()  # the sender is behind: help, rather than grow without bound

    def _run_sender(self) -> None:
        queue, producer = self._queue, self._producer
        while not self._stopping:
            try:
                if queue:
                    self._drain()
                    producer.poll(0)
                elif self._unacked:
                    producer.poll(_ACK_POLL_S)
                else:
                    self._idle = True
                    if not queue:  # re-checked after raising the flag: no lost wake-up
                        self._wake.wait(_IDLE_WAIT_S)
                    self._wake.clear()
                    self._idle = False
                    producer.poll(0)  # error callbacks, if any were configured
                if self._failed:
                    self._spool_failed()
            except Exception:  # the worker must keep running; what failed is spooled
                log.exception("faultstream sender thread error")

    def _drain(self) -> None:
        """Encode and produce every queued event, in order, on the calling thread."""
        queue, produce, poll = self._queue, self._produce, self._producer.poll
        with self._drain_lock:
            count = 0
            while queue:
                event = queue.popleft()
                try:
                    produce(event)
                except Exception:  # a bug, not the broker: keep the event, keep going
                    log.exception("could not produce event %s; spooled", event.event_id)
                    self._unacked.pop(event.event_id, None)
                    self._add_failed(event)
                count += 1
                if count % _POLL_EVERY == 0:
                    poll(0)  # frees the GIL and librdkafka's delivery queue

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
        self._add_failed(self._unacked.pop(event.event_id))

    def _on_delivery(self, event_id: str, err: KafkaError | None, _msg: object) -> None:
        event = self._unacked.pop(event_id, None)
        if event is None:  # already spooled by close()
            return
        if err is None:
            self.acked += 1
            if event_id in self._from_spool:
                with self._failed_lock:
                    self._spool_acked.add(event_id)
            return
        log.warning("event %s not delivered (%s); spooled", event_id, err.str())
        if event_id not in self._from_spool:  # a re-sent one is still in the spool
            self._add_failed(event)

    def _add_failed(self, event: WorkerEvent) -> None:
        with self._failed_lock:
            self._failed.append(event)

    def _spool_failed(self) -> None:
        with self._failed_lock:
            failed, self._failed = self._failed, []
        self.spool.append(failed)

    def _spool_now(self, events: list[WorkerEvent], why: str) -> None:
        if events:
            self.spool.append(events)
            log.warning("%d events %s; spooled", len(events), why)

    # --- the spool -----------------------------------------------------------------------

    def _send_spooled(self) -> int:
        events = [e for e in self.spool.read() if e.event_id not in self._from_spool]
        for event in events:
            self._from_spool.add(event.event_id)
            self.send(event)
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
            with self._failed_lock:
                acked, self._spool_acked = self._spool_acked, set()
            self.spool.remove(acked)
            self._from_spool -= acked

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events sent but not yet acknowledged (queued for the sender or in flight)."""
        return len(self._queue) + len(self._unacked)

    def flush(self, timeout: float) -> int:
        self._drain()  # queued events first, so the producer's flush covers them
        self._producer.flush(timeout)
        self._settle_spool()
        return self.pending

    def close(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sender is not None:
            self._stopping = True
            self._wake.set()
            self._sender.join()
        self.flush(timeout)
        left = [e for eid, e in self._unacked.items() if eid not in self._from_spool]
        self._unacked.clear()
        # Possibly delivered after all (in flight); a repeat event_id is ignored downstream.
        self._spool_now(left, "unacknowledged at close")
        self._producer.purge()
        self._producer.flush(0)  # purged records' callbacks find nothing left to spool
        self._settle_spool()
        # A send that raced with close() (it saw the transport still open) lands here.
        raced = [self._queue.popleft() for _ in range(len(self._queue))]
        self._spool_now([e for e in raced if e.event_id not in self._from_spool], "raced close")
