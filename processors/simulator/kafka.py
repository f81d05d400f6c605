"""Lockstep between the simulated fleet and the processor on Kafka.

Fleet time runs far faster than wall time, and the reference coordinator must see every
derived record of everything sent so far before it assigns work — exactly what the
embedded pipeline gives it. `LockstepBridge` provides that over Kafka:

* Order. The processor's history is the order of `<prefix>.ordered`. With a one-partition
  events topic, events keep their send order; TICKs travel on `<prefix>.control`, so around
  each TICK the bridge waits until `<prefix>.ordered` holds everything sent before it
  (and the TICK itself before the next event). The processor then sees the fleet's order.
* Completeness. The bridge runs a shadow `FleetCore` on the records it sends, so it knows
  exactly which derived records the processor must produce (the core is deterministic).
  When the coordinator pumps, the bridge waits until those very records have arrived from
  `<prefix>.circuits` / `.commands` / `.figures` / `.alerts` and hands over the Kafka
  copies, in the core's order.
  No quiet-period guessing: it waits for named records, and only when some are due.

Anything else is a divergence and raises: a record in `<prefix>.ordered` the fleet did
not send (another producer, a processor's wall clock), a derived record that differs from
the shadow's, or one the shadow does not expect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from faultstream.events.admin import ALERTS, CIRCUITS, COMMANDS, CONTROL, FIGURES, ORDERED
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.frames import unpack as unpack_frame
from faultstream.events.kafka_clients import librdkafka_config
from faultstream.events.models import (
    Alert,
    DerivedRecord,
    InputRecord,
    RecoveryCommand,
    WorkerEvent,
)
from faultstream.events.spool import Spool
from faultstream.events.transport import PRODUCER_DEFAULTS, KafkaTransport
from faultstream.processors.core import FleetCore

_POLL_S = 0.02
# Latency over throughput: one record at a time, uncompressed (lz4 also needs cramjam in
# the processor's aiokafka).
_LOCKSTEP_PRODUCER = {"linger.ms": 0, "compression.type": "none"}
_FLUSH_S = 30.0


class LockstepError(FaultstreamError):
    """The processor did not produce what the core says it must, or not in time."""


def derived_id(record: DerivedRecord) -> str:
    if isinstance(record, RecoveryCommand):
        return record.command_id
    if isinstance(record, Alert):  # its FIRING and RESOLVED records share the alert_id
        return f"{record.alert_id}/{record.state}"
    return record.event_id


class LockstepBridge:
    """The simulator's transport and control sink, and the coordinator's source, on Kafka.

    `alive` is called while waiting; it should raise when a service the run depends on has
    died, so a crash is reported at once rather than as a timeout.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        spool_path: str | Path,
        timeout_s: float = 90.0,
        alive: Callable[[], None] | None = None,
    ) -> None:
        kafka = settings.kafka
        self.prefix = kafka.topic_prefix
        self.timeout_s = timeout_s
        self.alive = alive
        self.codec = Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
        self.shadow = FleetCore(settings.core)
        # No resend of an old spool: a stray event would break the lockstep order.
        self.events = KafkaTransport(
            settings,
            codec=self.codec,
            spool=Spool(spool_path),
            producer_config=_LOCKSTEP_PRODUCER,
            resend_spooled=False,
            stamp_event_time=True,  # the simulated clock (the demo's topics use CreateTime)
        )
        self.control_topic = kafka.topic(CONTROL)
        self.control = Producer(
            librdkafka_config(kafka, {**PRODUCER_DEFAULTS, **_LOCKSTEP_PRODUCER})
        )
        self.topics = {
            kafka.topic(name): name for name in (ORDERED, CIRCUITS, COMMANDS, FIGURES, ALERTS)
        }
        self.consumer = Consumer(
            librdkafka_config(
                kafka,
                {
                    "group.id": f"{kafka.topic_prefix}.demo-lockstep",
                    "enable.auto.commit": False,
                    # The broker answers a fetch as soon as one byte is there, else after 5 ms.
                    "fetch.wait.max.ms": 5,
                },
            )
        )
        self._assign_all()
        self.sent: list[str] = []  # input event ids, in send order
        self._sent_ids: set[str] = set()
        self.confirmed = 0  # how many of `sent` are in `.ordered`, in that order
        self._tick_unconfirmed = False
        self.expected: list[DerivedRecord] = []  # the shadow's outputs not yet handed over
        self.arrived: dict[str, DerivedRecord] = {}
        self._handed: set[str] = set()
        self.derived = 0

    def _assign_all(self) -> None:
        metadata = self.consumer.list_topics(timeout=10)
        assignment = []
        for topic in self.topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise LockstepError(f"topic {topic} does not exist; create the topics first")
            assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in info.partitions]
        self.consumer.assign(assignment)

    @property
    def inputs(self) -> int:
        return len(self.sent)

    # --- the simulator's side ---------------------------------------------------------------

    def send(self, event: WorkerEvent) -> None:
        """`Transport.send`: no event may overtake a TICK on its way to `.ordered`."""
        if self._tick_unconfirmed:
            self._await_ordered("the last TICK")
            self._tick_unconfirmed = False
        self._record(event)
        self.events.send(event)

    def flush(self, timeout: float) -> int:
        return self.events.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.events.close(timeout)
        self.control.flush(timeout)
        self.consumer.close()

    def send_control(self, record: InputRecord) -> None:
        """A TICK (or other control record) after everything sent before it."""
        self._await_ordered(f"the events before {record.event_id}")
        self._record(record)
        self.control.produce(
            self.control_topic,
            value=self.codec.encode(record),
            key=record.event_id.encode(),
            timestamp=record.ts,  # the simulated clock (the demo's topics use CreateTime)
        )
        self.control.flush(_FLUSH_S)
        self._tick_unconfirmed = True

    def _record(self, record: InputRecord) -> None:
        if record.event_id in self._sent_ids:
            return  # the core ignores a repeat; so does the lockstep
        self._sent_ids.add(record.event_id)
        self.sent.append(record.event_id)
        self.expected.extend(self.shadow.process(record))

    # --- the coordinator's side -------------------------------------------------------------

    def drain(self) -> list[DerivedRecord]:
        """The derived records of everything sent so far, as read from Kafka."""
        if not self.expected:
            return []
        self.events.flush(_FLUSH_S)
        missing = {derived_id(r) for r in self.expected}
        self._wait(lambda: missing <= self.arrived.keys(), f"{len(missing)} derived records")
        out: list[DerivedRecord] = []
        for wanted in self.expected:
            got = self.arrived.pop(derived_id(wanted))
            if got != wanted:
                raise LockstepError(
                    f"the processor derived {got!r} where the core derives {wanted!r}"
                )
            self._handed.add(derived_id(got))
            out.append(got)
        if self.arrived:
            extra = next(iter(self.arrived))
            raise LockstepError(f"the processor derived {extra}, which the core does not")
        self.expected = []
        self.derived += len(out)
        return out

    def finish(self) -> None:
        """Wait until the processor has seen every record sent and its outputs are in."""
        self.events.flush(_FLUSH_S)
        self._await_ordered("the last records of the run")
        self._tick_unconfirmed = False
        self.drain()

    # --- waiting --------------------------------------------------------------------------

    def _await_ordered(self, what: str) -> None:
        if self.confirmed == len(self.sent):
            return
        self.events.flush(_FLUSH_S)
        self._wait(lambda: self.confirmed == len(self.sent), f"{what} in {self.prefix}.ordered")

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if self.alive is not None:
                self.alive()
            if time.monotonic() > deadline:
                raise LockstepError(
                    f"waited {self.timeout_s:.0f} s for {what}; is `faultstream processor` "
                    f"running for prefix {self.prefix}?"
                )
            for message in self.consumer.consume(1000, _POLL_S):
                self._take(message)

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise LockstepError(f"consuming {message.topic()}: {error.str()}")
            return
        logical = self.topics[message.topic()]
        try:
            if logical == ORDERED:
                # One frame is a frame of the inputs of one ingest batch.
                for raw in unpack_frame(message.value()):
                    self._confirm(self.codec.decode_input(raw).event_id)
                return
            record = self.codec.decode(message.value())
        except FaultstreamError as exc:
            raise LockstepError(
                f"{message.topic()} [{message.partition()}] offset {message.offset()}: {exc}"
            ) from None
        key = derived_id(record)  # type: ignore[arg-type]
        if key not in self._handed:  # a repeat after a processor restart is dropped
            self.arrived[key] = record  # type: ignore[assignment]

    def _confirm(self, event_id: str) -> None:
        if self.confirmed < len(self.sent) and self.sent[self.confirmed] == event_id:
            self.confirmed += 1
            return
        if event_id in self._sent_ids and self.sent.index(event_id) < self.confirmed:
            return  # forwarded twice (the processor's ingest restarted)
        expected = self.sent[self.confirmed] if self.confirmed < len(self.sent) else "nothing"
        raise LockstepError(
            f"{self.prefix}.ordered holds {event_id} where {expected} was due: something "
            "else writes to this prefix (another fleet, or a processor's wall clock); "
            "use a fresh --prefix"
        )
