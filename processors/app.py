"""The Faust app that runs the pure core on Kafka.

Two stages, because CIRCUITS.md's rules cross keys (a failure touches worker, hardware
class and task type circuits; the fleet guard and target choice look across workers):

1. `ingest` (processors/ingest.py: an aiokafka consumer run as an app task, group
   `<prefix>-processor-ingest`, parallel over the 6 partitions of `<prefix>.events` plus
   `<prefix>.control`; with `naive=True` a Faust agent, one event per frame): decode and
   validate each record (the only full validation);
   bad ones become DeadLetters on `<prefix>.dlq`; the good ones of a poll are packed, byte
   for byte, into ONE framed record (processors/decisions.py) on `<prefix>.decisions`
   (1 partition, key "fleet"): Kafka's per-message cost is paid per batch, not per event.
2. `decide` (the one consumer of `<prefix>.decisions`): unpacks each frame, decodes its
   records without re-validating them (processors/decode.py), and runs one FleetCore over
   them in (decisions offset, index in frame) order, sending its outputs to
   `<prefix>.circuits` / `.commands`.

That order of `<prefix>.decisions` *is* the history: replaying it through FleetCore gives
the processor's outputs exactly. Restarts restore a snapshot (processors/state.py: the
offset after the last fully applied frame) and re-process from it, whatever Faust
committed; outputs are at-least-once with deterministic ids, and consumers dedupe by id
(ARCHITECTURE.md: idempotence, not exactly_once).
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

from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import CircuitStateChanged, RecoveryCommand
from faultstream.processors.core import FleetCore

from . import decisions
from .clock import install_clock
from .decode import InputDecoder
from .ingest import Ingest
from .state import SnapshotStore

log = logging.getLogger("faultstream.processor")

# A snapshot pickles the whole core on the event loop (~0.5 ms per 1,000 events of history
# here, as the core keeps every task and event id): too often and it stalls the loop past
# the latency target; too rarely and a restart re-reads more of `.decisions`.
# (settings.processor.snapshot_every_s, 10 s by default, sets the time-based rhythm.)
SNAPSHOT_EVERY_RECORDS = 500_000
STATS_EVERY_S = 10.0
CATCH_UP_FRAMES = 100  # per poll when re-reading `.decisions` after a restore


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


class BatchStats:
    """Time counters, logged every STATS_EVERY_S: where each agent's time goes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.batches = self.messages = self.records = 0
        self.busy_s = 0.0
        self._since = time.monotonic()

    def add(self, messages: int, records: int, busy_s: float) -> None:
        self.batches += 1
        self.messages += messages
        self.records += records
        self.busy_s += busy_s
        elapsed = time.monotonic() - self._since
        if elapsed >= STATS_EVERY_S:
            log.info(
                "%s: %d records (%d messages, %d batches) in %.1f s = %.0f/s, busy %.0f%%",
                self.name,
                self.records,
                self.messages,
                self.batches,
                elapsed,
                self.records / elapsed,
                100 * self.busy_s / elapsed,
            )
            self.batches = self.messages = self.records = 0
            self.busy_s = 0.0
            self._since = time.monotonic()


class Decider:
    """Feeds `<prefix>.decisions` records through one FleetCore and sends its outputs."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        decoder: InputDecoder,
        topics: Topics,
        table: Any,
    ) -> None:
        self.app = app
        self.settings = settings
        self.decoder = decoder
        self.codec = decoder.codec
        self.topics = topics
        self.store = SnapshotStore(table)
        self.core: FleetCore | None = None
        self.next_offset = 0
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        self.applied = 0  # records, for BatchStats

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
            await self._decide_frame(event.value)
            self.next_offset = offset + 1
        await self._maybe_snapshot()

    def _restore(self) -> None:
        snapshot = self.store.load()
        if snapshot is None:
            self.core, self.next_offset = FleetCore(self.settings.core), 0
        else:
            try:
                self.core = FleetCore.restore(snapshot.data)
                self.next_offset = snapshot.offset
            except ValueError as exc:
                # Written by another version (an upgrade): decisions is the history, so
                # rebuild the state from its start (as far as its retention reaches).
                log.warning("decider: %s; rebuilding from the start of decisions", exc)
                self.core, self.next_offset = FleetCore(self.settings.core), 0
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
                batches = await consumer.getmany(tp, timeout_ms=1000, max_records=CATCH_UP_FRAMES)
                for message in batches.get(tp, []):
                    if message.offset >= until:
                        break
                    await self._decide_frame(message.value)
                    self.next_offset = message.offset + 1
        finally:
            await consumer.stop()
        self.next_offset = until

    async def _decide_frame(self, frame: bytes) -> None:
        """Apply every record of one frame; all or nothing as far as snapshots go."""
        assert self.core is not None
        process = self.core.process
        # Stage 1 validated these; a failure here would be a codec bug, not bad input.
        trusted = self.decoder.trusted
        records = decisions.unpack(frame)
        outputs = [output for raw in records for output in process(trusted(raw))]
        self._since_snapshot += len(records)
        self.applied += len(records)
        if not outputs:
            return
        send, encode, topics = self.app.producer.send, self.codec.encode, self.topics
        for output in outputs:
            if isinstance(output, CircuitStateChanged):
                topic, key = topics.circuits, output.key
            elif isinstance(output, RecoveryCommand):
                topic, key = topics.commands, output.task_id
            else:
                continue
            await send(topic, key.encode(), encode(output), None, None, None)

    async def _maybe_snapshot(self) -> None:
        if not self._since_snapshot:
            return
        due = time.monotonic() - self._snapshot_at >= self.settings.processor.snapshot_every_s
        if not due and self._since_snapshot < SNAPSHOT_EVERY_RECORDS:
            return
        assert self.core is not None
        # Only outputs already on the broker may be covered by a snapshot.
        await self.app.producer.flush()
        started = time.perf_counter()
        data = self.core.snapshot()
        self.store.save(self.next_offset, data)
        # The changelog write is buffered: flush so the log line below means "durable".
        await self.app.producer.flush()
        log.info(
            "decider snapshot at decisions offset %d: %d bytes in %.0f ms",
            self.next_offset,
            len(data),
            (time.perf_counter() - started) * 1000,
        )
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()


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
    decoder = InputDecoder(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
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
    decider = Decider(app, settings, decoder, topics, table)
    ingest = Ingest(app, settings, decoder, topics)
    app.faultstream_decider = decider  # type: ignore[attr-defined]

    decisions_topic = app.topic(
        topics.decisions, partitions=1, key_serializer="raw", value_serializer="raw"
    )

    @app.on_partitions_revoked.connect
    async def _on_revoked(*_args: Any, **_kwargs: Any) -> None:
        decider.forget()

    ingest_stats, decide_stats = BatchStats("ingest"), BatchStats("decide")

    async def run_ingest(events: Sequence[Any]) -> None:
        started = time.perf_counter()
        await ingest.on_faust_events(events)
        ingest_stats.add(len(events), len(events), time.perf_counter() - started)

    async def run_decide(events: Sequence[Any]) -> None:
        started, applied = time.perf_counter(), decider.applied
        await decider.on_batch(events)
        decide_stats.add(len(events), decider.applied - applied, time.perf_counter() - started)

    if naive:
        input_topics = app.topic(topics.events, topics.control, value_serializer="raw")

        @app.agent(input_topics, name="ingest", concurrency=1)
        async def ingest_naive(stream: faust.StreamT) -> None:
            async for event in stream.events():
                await run_ingest([event])

    else:

        @app.task
        async def ingest_batches() -> None:
            await ingest.run(ingest_stats)

    # One frame at a time: a frame is already a batch, and `take_events` would hold a
    # lone frame for its whole `within` window, straight onto the latency.
    @app.agent(decisions_topic, name="decide", concurrency=1)
    async def decide(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await run_decide([event])

    install_clock(app, topics.control, decoder.codec, settings.processor.tick_interval_s)
    return app
