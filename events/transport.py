"""Where the worker SDK's events go: the `Transport` protocol and `KafkaTransport`.

`KafkaTransport` produces worker events with confluent-kafka and keeps every record it has
not yet seen acknowledged; what fails delivery or is still unacknowledged at close goes to
the spool (events/spool.py) and is sent again by the next emitter or by `resend_spool()`.
An event that can be neither sent nor spooled (it cannot be encoded, the spool cannot be
written) is counted as lost and logged: `flush()` reports it, it never vanishes quietly.

By default a sender thread does the encoding and producing: the caller's `send` only
appends the (already validated) event to a deque, so the worker pays for validation and
an append, not for Avro and librdkafka. One lock keeps queued events in send order when
`flush`, `close` or an over-full queue make the caller drain the deque itself.

librdkafka's own log and errors go through Python logging (`ClientLog`), once per state:
a broker that stays away is reported when it goes, not at every reconnect attempt.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, Producer

from .admin import MAX_MESSAGE_BYTES
from .codec import Codec
from .config import KafkaSettings, Settings
from .kafka_clients import librdkafka_config
from .models import WorkerEvent
from .spool import Spool

# A child of the emitter's logger, so silencing the SDK (as `faultstream emit` does)
# silences the transport too.
log = logging.getLogger("faultstream.events.emitter.transport")
librdkafka_log = logging.getLogger("faultstream.events.emitter.transport.librdkafka")

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
    # The contract's 1 MiB checkpoints, with room for the record around them.
    "message.max.bytes": MAX_MESSAGE_BYTES,
}


def build_producer_config(kafka: KafkaSettings, *, message_timeout_ms: int) -> dict[str, Any]:
    """The librdkafka settings of the SDK's producer (before a caller's overrides)."""
    return librdkafka_config(kafka, {**PRODUCER_DEFAULTS, "message.timeout.ms": message_timeout_ms})


class Transport(Protocol):
    """Where an emitter's events go: Kafka here, an in-process pipeline for the demo."""

    def send(self, event: WorkerEvent) -> None: ...

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` s for delivery; returns how many events are neither
        delivered nor spooled (still pending, or lost)."""
        ...

    def close(self, timeout: float) -> None: ...


# Parts of librdkafka's messages that change at every retry of the same failure.
_VOLATILE = (
    (re.compile(r",? ?\d+ identical error\(s\) suppressed"), ""),
    (re.compile(r"\d+ms\b"), "#ms"),
    (re.compile(r"\d+/\d+ brokers"), "# brokers"),
)


def _stable(text: str) -> str:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text


class ClientLog:
    """librdkafka's log (confluent-kafka's `logger` key) and errors (`error_cb`) through
    Python logging, once per state: a message that repeats while the broker stays away
    (one per reconnect attempt) is counted, not logged, until a delivery succeeds again.
    Also the transport's own "events spooled" notices, on the same rhythm."""

    def __init__(self, logger: logging.Logger = librdkafka_log) -> None:
        self.logger = logger
        self.troubled = False  # a warning was logged since the last good delivery
        self.repeats = 0  # librdkafka messages not logged since then
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def log(self, level: int, msg: str, *args: Any, **_kwargs: Any) -> None:
        """What confluent-kafka calls: log(level, "%s [%s] %s", facility, client, text)."""
        try:
            facility, text = (str(args[0]), str(args[-1])) if len(args) == 3 else ("", msg)
            if self.first((facility, _stable(text)), level):
                self.logger.log(level, "%s %s", facility, text)
        except Exception:  # raised into librdkafka's poll it would hit the sender
            self.logger.debug("librdkafka log record not handled", exc_info=True)

    def error(self, err: KafkaError) -> None:
        """The producer's `error_cb`."""
        try:
            if err.code() == KafkaError._TRANSPORT:  # librdkafka's FAIL log line says it
                return
            level = logging.ERROR if err.fatal() else logging.WARNING
            if self.first((err.name(), _stable(err.str())), level):
                self.logger.log(level, "%s %s", err.name(), err.str())
        except Exception:
            self.logger.debug("librdkafka error not handled", exc_info=True)

    def first(self, key: tuple[str, str], level: int = logging.WARNING) -> bool:
        """Whether `key` is news in this state (and note that it has been seen)."""
        with self._lock:
            if key in self._seen:
                self.repeats += 1
                return False
            self._seen.add(key)
            if level >= logging.WARNING:
                self.troubled = True
            return True

    def recovered(self) -> int:
        """A delivery succeeded: the next problem is news again. Returns how many repeated
        messages were not logged meanwhile (0 when nothing was wrong)."""
        with self._lock:
            if not self.troubled:
                return 0
            repeats, self.repeats = self.repeats, 0
            self._seen.clear()
            self.troubled = False
        self.logger.info("deliveries succeed again (%d repeated messages not logged)", repeats)
        return repeats


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
        stamp_event_time: bool = False,
    ) -> None:
        """`stamp_event_time`: the Kafka record's timestamp is the event's own `ts`, for a
        simulated fleet whose topics keep it (`kafka.input_timestamps = "CreateTime"`);
        otherwise the broker stamps its own time (LogAppendTime) and this one is unused."""
        kafka = settings.kafka
        self._stamp_event_time = stamp_event_time
        emitter = settings.emitter
        self.topic = kafka.topic("events")
        self.codec = codec or Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
        self.spool = (
            spool if spool is not None else Spool(emitter.spool_path, emitter.spool_max_bytes)
        )
        self.close_timeout_s = emitter.close_timeout_s
        self.client_log = ClientLog()
        config = build_producer_config(kafka, message_timeout_ms=message_timeout_ms)
        config.update(logger=self.client_log, error_cb=self.client_log.error)
        config.update(producer_config or {})
        self._producer = Producer(config)
        self._unacked: dict[str, WorkerEvent] = {}
        # Failed events to spool, with why; and why each unsendable one was lost. Callbacks
        # run on the sender and on the caller (flush): swaps of these need the lock.
        self._failed: list[tuple[WorkerEvent, str]] = []
        self._unsendable: list[str] = []
        self._failed_lock = threading.Lock()
        # Held while failed events are on their way to disk, so that a flush() on another
        # thread returns only once they are there (it counts neither pending nor spooled).
        self._settle_lock = threading.Lock()
        # Events re-sent from the spool: still in the file until acknowledged.
        self._from_spool: set[str] = set()
        self._spool_acked: set[str] = set()
        self._closed = False
        self._producer_closed = False
        self.acked = 0
        self.spooled = 0  # events this transport wrote to the spool
        self.lost = 0  # events neither delivered nor spooled (each logged)
        self._spooled_quietly = 0  # spooled while a notice of it was already logged
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
            self._spool_events([(event, "sent after close")])
            return
        if self._sender is None:
            self._produce(event)
            self._poll(0)  # serve delivery callbacks on the caller's thread
            if self._failed or self._unsendable:
                self._settle_failures()
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
                    producer.poll(0)  # log and error callbacks
                if self._failed or self._unsendable:
                    self._settle_failures()
            except Exception as exc:  # a bug: the worker keeps running, events are kept
                self._report_error("sender thread", exc)

    def _drain(self) -> None:
        """Encode and produce every queued event, in order, on the calling thread."""
        queue, produce = self._queue, self._produce
        with self._drain_lock:
            count = 0
            while queue:
                produce(queue.popleft())
                count += 1
                if count % _POLL_EVERY == 0:
                    self._poll(0)  # frees the GIL and librdkafka's delivery queue

    def _produce(self, event: WorkerEvent) -> None:
        """Hand one event to librdkafka; what cannot be is marked failed (to be spooled) or
        unsendable (lost). Never raises."""
        try:
            value = self.codec.encode_worker_event(event)
        except Exception as exc:  # the event itself: every later attempt would fail too
            reason = f"event {event.event_id!r} cannot be encoded ({exc})"
            if event.event_id in self._from_spool:  # it stays where it is
                self._add_failed(event, reason)
            else:
                with self._failed_lock:
                    self._unsendable.append(reason)
            return
        event_id = event.event_id
        self._unacked[event_id] = event
        on_delivery = partial(self._on_delivery, event_id)
        reason = "the producer's local queue stayed full"
        for attempt in range(_PRODUCE_RETRIES):
            try:
                self._producer.produce(
                    self.topic,
                    value,
                    event.worker_id,
                    on_delivery=on_delivery,
                    timestamp=event.ts if self._stamp_event_time else 0,  # 0: now
                )
                return
            except BufferError:
                self._poll(0.001 * (attempt + 1))
            except Exception as exc:  # KafkaException (e.g. too large), a closed producer
                reason = f"not accepted by the producer ({exc})"
                break
        # Keep the event on disk rather than block the worker (or drop it).
        if self._unacked.pop(event_id, None) is not None:
            self._add_failed(event, reason)

    def _poll(self, timeout: float) -> None:
        try:
            self._producer.poll(timeout)
        except Exception as exc:  # a callback raised; its event stays unacknowledged
            self._report_error("producer callback", exc)

    def _on_delivery(self, event_id: str, err: KafkaError | None, _msg: object) -> None:
        event = self._unacked.get(event_id)
        if event is None:  # already spooled by close()
            return
        if err is not None:
            # Failed before it leaves `_unacked`: a flush() on another thread always
            # counts it as pending or finds it among the failed.
            self._add_failed(event, f"not delivered ({err.str()})")
            self._unacked.pop(event_id, None)
            return
        self._unacked.pop(event_id, None)
        self.acked += 1
        if event_id in self._from_spool:
            with self._failed_lock:
                self._spool_acked.add(event_id)
        if self.client_log.troubled:
            self._recovered()

    def _add_failed(self, event: WorkerEvent, reason: str) -> None:
        with self._failed_lock:
            self._failed.append((event, reason))

    def _report_error(self, where: str, exc: Exception) -> None:
        """An unexpected exception: its traceback once per state, then a count."""
        if self.client_log.first((where, repr(exc))):
            log.error("faultstream %s error (events are kept)", where, exc_info=exc)

    # --- failures: the spool, or counted as lost -------------------------------------------

    def _settle_failures(self) -> None:
        with self._settle_lock:
            self._settle_failures_locked()

    def _settle_failures_locked(self) -> None:
        with self._failed_lock:
            failed, self._failed = self._failed, []
            unsendable, self._unsendable = self._unsendable, []
        if unsendable:
            first = unsendable[0]
            self._lose(len(unsendable), first if len(unsendable) == 1 else f"first: {first}")
        if not failed:
            return
        from_spool = self._from_spool
        again = [why for e, why in failed if e.event_id in from_spool]
        if again:  # still in the spool: written once, however often they fail
            reasons = "; ".join(sorted(set(again)))
            if self.client_log.first(("failed again", reasons)):
                log.warning(
                    "%d spooled events failed again and stay spooled: %s", len(again), reasons
                )
        self._spool_events([(e, why) for e, why in failed if e.event_id not in from_spool])

    def _spool_events(self, failed: list[tuple[WorkerEvent, str]]) -> None:
        if not failed:
            return
        try:
            appended = self.spool.append(event for event, _ in failed)
        except Exception as exc:  # a full disk, a bad path: nowhere left to keep them
            self._lose(len(failed), f"the spool {self.spool.path} cannot be written ({exc})")
            return
        with self._failed_lock:
            self.lost += appended.lost  # the spool logged those
            self.spooled += appended.added
        if not appended.added:
            return
        why = "; ".join(sorted({why for _, why in failed}))
        if self.client_log.first(("spooled", why)):
            log.warning(
                "%d events spooled to %s, to be sent again: %s",
                appended.added,
                self.spool.path,
                why,
            )
        else:
            self._spooled_quietly += appended.added

    def _lose(self, count: int, reason: str) -> None:
        with self._failed_lock:
            self.lost += count
        log.error("%d events lost: %s", count, reason)

    def _recovered(self) -> None:
        self.client_log.recovered()
        self._report_quiet_spooling("while the broker was away")

    def _report_quiet_spooling(self, when: str) -> None:
        quiet, self._spooled_quietly = self._spooled_quietly, 0
        if quiet:
            log.warning("%d more events spooled %s", quiet, when)

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
        self._settle_failures()
        if self._spool_acked:
            with self._failed_lock:
                acked, self._spool_acked = self._spool_acked, set()
            try:
                self.spool.remove(acked)
            except OSError as exc:  # they stay spooled: sent again, ignored downstream
                log.warning("delivered events not removed from %s (%s)", self.spool.path, exc)
            self._from_spool -= acked

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events sent but not yet acknowledged (queued for the sender or in flight)."""
        return len(self._queue) + len(self._unacked)

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` s for acknowledgements; returns how many events sent through
        this transport are neither delivered nor spooled: still pending, or lost."""
        self._drain()  # queued events first, so the producer's flush covers them
        if not self._producer_closed:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self._producer.flush(max(0.0, deadline - time.monotonic()))
                    break
                except Exception as exc:  # a callback raised: report, keep waiting
                    self._report_error("producer callback", exc)
                    if time.monotonic() >= deadline:
                        break
        self._settle_spool()
        return self.pending + self.lost

    def close(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` s (default `[emitter] close_timeout_s`) for what is in
        flight, then spool whatever is still unacknowledged and stop the producer."""
        if self._closed:
            return
        wait = self.close_timeout_s if timeout is None else timeout
        self._closed = True
        if self._sender is not None:
            self._stopping = True
            self._wake.set()
            self._sender.join()
        self.flush(wait)
        left = [e for eid, e in self._unacked.items() if eid not in self._from_spool]
        self._unacked.clear()
        # Possibly delivered after all (in flight); a repeat event_id is ignored downstream.
        self._spool_events([(e, "unacknowledged at close") for e in left])
        try:
            self._producer.purge()
            self._producer.flush(0)  # purged records' callbacks find nothing left to spool
            stop = getattr(self._producer, "close", None)  # not in older confluent-kafka
            if stop is not None and len(self._producer) == 0:  # its flush has no timeout
                stop()  # no more reconnecting to a broker that is away
        except Exception as exc:
            self._report_error("producer close", exc)
        self._producer_closed = True
        self._settle_spool()
        # A send that raced with close() (it saw the transport still open) lands here.
        raced = [self._queue.popleft() for _ in range(len(self._queue))]
        self._spool_events(
            [(e, "raced close") for e in raced if e.event_id not in self._from_spool]
        )
        self._report_quiet_spooling("before close")
        if self.client_log.repeats:
            log.info("%d repeated messages were not logged", self.client_log.repeats)
