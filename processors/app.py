"""The Faust app that runs the pure core on Kafka.

Two stages, because CIRCUITS.md's rules cross keys (a failure touches worker, hardware
class and task type circuits; the fleet guard and target choice look across workers):

1. `ingest` (parallel over the 6 partitions of `<prefix>.events`, plus `<prefix>.control`):
   decode and validate each record; bad ones become DeadLetters on `<prefix>.dlq`, good
   ones are forwarded byte for byte to `<prefix>.decisions` (1 partition, key "fleet").
2. `decide` (the one consumer of `<prefix>.decisions`): one FleetCore sees every record in
   that partition's order and sends its outputs to `<prefix>.circuits` / `.commands`.

The order of `<prefix>.decisions` *is* the history: replaying it through FleetCore gives
the processor's outputs exactly. Restarts restore a snapshot (processors/state.py) and
re-process from its offset, whatever Faust committed; outputs are at-least-once with
deterministic ids, and consumers dedupe by id (ARCHITECTURE.md: idempotence, not
exactly_once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import CircuitStateChanged, DeadLetter, RecoveryCommand
from faultstream.processors.core import FleetCore

from .clock import install_clock
from .state import SnapshotStore

log = logging.getLogger("faultstream.processor")

DECISIONS_KEY = b"fleet"
BATCH_MAX = 2000
# Small enough for the 50 ms latency target, large enough to amortise Faust's overhead.
BATCH_WITHIN_S = 0.005
SNAPSHOT_EVERY_RECORDS = 50_000
SNAPSHOT_EVERY_S = 2.0


@dataclass(frozen=True)
class Topics:
    events: str
    control: str
    decisions: str
    circuits: str
    commands: str
    dlq: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        kafka = settings.kafka
        return cls(*(kafka.topic(name) for name in cls.__dataclass_fields__))


def store_url(settings: Settings) -> str:
    """RocksDB when asked for (or "auto" and rocksdict is installed), memory otherwise."""
    choice = settings.processor.store
    if choice not in ("auto", "rocksdb", "memory"):
        raise FaultstreamError(f"processor.store: {choice!r} is not auto, rocksdb or memory")
    if choice == "memory":
        return "memory://"
    try:
        import rocksdict  # noqa: F401
    except ImportError:
        if choice == "rocksdb":
            raise FaultstreamError(
                "processor.store: rocksdb needs `pip install rocksdict`"
            ) from None
        return "memory://"
    return "rocksdb://"


class Decider:
    """Feeds `<prefix>.decisions` records through one FleetCore and sends its outputs."""

    def __init__(
        self, app: faust.App, settings: Settings, codec: Codec, topics: Topics, table: Any
    ) -> None:
        self.app = app
        self.settings = settings
        self.codec = codec
        self.topics = topics
        self.store = SnapshotStore(table)
        self.core: FleetCore | None = None
        self.next_offset = 0
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()

    def forget(self) -> None:
        """The partition moved: the table, not memory, is the truth from now on."""
        self.core = None

    async def on_batch(self, events: Sequence[Any]) -> None:
        first = events[0].message.offset
        if self.core is None or first != self.next_offset:
            self._restore()
        if first > self.next_offset:
            await self._catch_up(first)
        for event in events:
            offset = event.message.offset
            if offset < self.next_offset:
                continue  # already covered by the restored snapshot
            await self._decide(event.value)
            self.next_offset = offset + 1
            self._since_snapshot += 1
        await self._maybe_snapshot()

    def _restore(self) -> None:
        snapshot = self.store.load()
        if snapshot is None:
            self.core, self.next_offset = FleetCore(self.settings.core), 0
        else:
            self.core = FleetCore.restore(snapshot.data)
            self.next_offset = snapshot.offset
        log.info("decider restored at decisions offset %d", self.next_offset)

    async def _catch_up(self, until: int) -> None:
        """Re-read decisions [next_offset, until): Faust committed past the snapshot."""
        tp = TopicPartition(self.topics.decisions, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            earliest = (await consumer.beginning_offsets([tp]))[tp]
            start = max(self.next_offset, earliest)
            consumer.seek(tp, start)
            log.info("decider catching up on decisions offsets %d..%d", start, until - 1)
            while self.next_offset < until:
                batches = await consumer.getmany(tp, timeout_ms=1000, max_records=BATCH_MAX)
                for message in batches.get(tp, []):
                    if message.offset >= until:
                        break
                    await self._decide(message.value)
                    self.next_offset = message.offset + 1
                    self._since_snapshot += 1
        finally:
            await consumer.stop()
        self.next_offset = until

    async def _decide(self, raw: bytes) -> None:
        assert self.core is not None
        # Stage 1 validated it; a failure here would be a codec bug, not bad input.
        record = self.codec.decode_input(raw)
        send = self.app.producer.send
        for output in self.core.process(record):
            if isinstance(output, CircuitStateChanged):
                await send(
                    self.topics.circuits,
                    output.key.encode(),
                    self.codec.encode(output),
                    None,
                    None,
                    None,
                )
            elif isinstance(output, RecoveryCommand):
                await send(
                    self.topics.commands,
                    output.task_id.encode(),
                    self.codec.encode(output),
                    None,
                    None,
                    None,
                )

    async def _maybe_snapshot(self) -> None:
        if not self._since_snapshot:
            return
        due = time.monotonic() - self._snapshot_at >= SNAPSHOT_EVERY_S
        if not due and self._since_snapshot < SNAPSHOT_EVERY_RECORDS:
            return
        assert self.core is not None
        # Only outputs already on the broker may be covered by a snapshot.
        await self.app.producer.flush()
        self.store.save(self.next_offset, self.core.snapshot())
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()


class Ingest:
    """Validates raw input records; forwards good ones, dead-letters bad ones."""

    def __init__(self, app: faust.App, codec: Codec, topics: Topics) -> None:
        self.app = app
        self.codec = codec
        self.topics = topics

    async def on_batch(self, events: Sequence[Any]) -> None:
        send = self.app.producer.send
        for event in events:
            raw = event.value or b""  # a null value is bad input too
            try:
                self.codec.decode_input(raw)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, FaultstreamError) else repr(exc)
                letter = self.dead_letter(event.message, raw, reason)
                await send(self.topics.dlq, None, self.codec.encode(letter), None, None, None)
                continue
            # No flush per batch: Faust flushes the producer before every offset commit,
            # so a committed input offset never passes an unsent forward.
            await send(self.topics.decisions, DECISIONS_KEY, raw, 0, None, None)

    @staticmethod
    def dead_letter(message: Any, raw: bytes, reason: str) -> DeadLetter:
        topic, partition, offset = message.topic, message.partition, message.offset
        return DeadLetter(
            event_id=f"dlq:{topic}:{partition}:{offset}",
            ts=int(time.time() * 1000),
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            raw=raw,
            reason=reason,
        )


def create_app(
    settings: Settings,
    *,
    instance_id: str = "0",
    web_port: int | None = None,
    naive: bool = False,
) -> faust.App:
    """The processor app. `naive=True` handles one event at a time (the bench baseline)."""
    kafka = settings.kafka
    topics = Topics.of(settings)
    codec = Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
    brokers = [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")]
    app_id = f"{kafka.topic_prefix}-processor"
    datadir = Path(settings.processor.data_dir) / app_id / instance_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=brokers,
        store=store_url(settings),
        # Per app (the RocksDB offsets belong to that app's changelog) and per instance.
        datadir=str(datadir),
        # Faust's own topics (table changelog, leader) are single-partition like decisions.
        topic_partitions=1,
        topic_replication_factor=kafka.replication_factor,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger_ms=1,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        # A SIGKILLed instance holds its partitions until its session expires; keep that
        # short so a restart (or the other instance) takes over within seconds.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_rebalance_timeout=20.0,
        web_port=web_port or settings.processor.web_port,
        web_host="127.0.0.1",
    )
    table = app.Table(
        "decider-state",
        partitions=1,
        # Every key to the one changelog partition, whichever event is current.
        use_partitioner=True,
        key_type=str,
    )
    decider = Decider(app, settings, codec, topics, table)
    ingest = Ingest(app, codec, topics)
    app.faultstream_decider = decider  # type: ignore[attr-defined]

    input_topics = app.topic(topics.events, topics.control, value_serializer="raw")
    decisions_topic = app.topic(
        topics.decisions, partitions=1, key_serializer="raw", value_serializer="raw"
    )

    @app.on_partitions_revoked.connect
    async def _on_revoked(*_args: Any, **_kwargs: Any) -> None:
        decider.forget()

    if naive:

        @app.agent(input_topics, name="ingest", concurrency=1)
        async def ingest_naive(stream: faust.StreamT) -> None:
            async for event in stream.events():
                await ingest.on_batch([event])

        @app.agent(decisions_topic, name="decide", concurrency=1)
        async def decide_naive(stream: faust.StreamT) -> None:
            async for event in stream.events():
                await decider.on_batch([event])

    else:

        @app.agent(input_topics, name="ingest", concurrency=1)
        async def ingest_batches(stream: faust.StreamT) -> None:
            async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                await ingest.on_batch(events)

        @app.agent(decisions_topic, name="decide", concurrency=1)
        async def decide_batches(stream: faust.StreamT) -> None:
            async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                # take_events fills its buffer in another task; the RocksDB store picks
                # its partition from the current event, so name one in this task.
                stream._set_current_event(events[-1])
                await decider.on_batch(events)

    install_clock(app, topics.control, codec, settings.processor.tick_interval_s)
    return app
