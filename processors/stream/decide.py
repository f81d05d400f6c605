"""Stage 2 of the processor: one FleetCore over `<prefix>.ordered`, in offset order.

Frames reach the decider two ways, and it applies each offset exactly once, in order:
- from Kafka, through the Faust agent on `.ordered` (frames of every instance's ingest;
  also the catch-up after a restore);
- straight from this instance's ingest, as soon as the broker has acknowledged the frame
  at its offset (`offer`). That saves the consumer round trip on the latency path (in
  A/B runs, frame -> command p50 8 -> 5 ms, and p99 end to end 51-60 -> 35-49 ms). The
  same frame arriving later through Kafka is skipped by its offset.

A frame is applied only once it is on the broker, so `.ordered` stays the history: a
restart that replays it from a snapshot's offset reproduces the outputs exactly. Frames of
another instance's ingest come only through Kafka; a local frame after such a gap waits
until the agent has filled it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from faultstream.events.admin import MAX_MESSAGE_BYTES
from faultstream.events.config import Settings
from faultstream.events.decode import InputDecoder
from faultstream.events.exceptions import DecodeError
from faultstream.events.kafka_clients import aiokafka_kwargs
from faultstream.events.models import (
    Alert,
    CircuitFigures,
    CircuitStateChanged,
    DeadLetter,
    RecoveryCommand,
)
from faultstream.processors.core import FleetCore
from faultstream.processors.stream import metrics

from .snapshots import CAN_FORK, ForkedSnapshot, SnapshotStore, remove_stale_parts
from .stats import BatchStats

log = logging.getLogger("faultstream.processor")

# A snapshot stops the decider (for a fork where it can, else for the whole pickle): too
# often and that adds up; too rarely and a restart re-reads more of `.ordered`.
# settings.processor.snapshot_every_s (10 s by default) sets the time-based rhythm.
SNAPSHOT_EVERY_RECORDS = 500_000
# However often those ask, snapshots take at most this share of the decider's time (the
# pickle grows with the fleet, and with plain ids with the 10,000 each worker remembers).
SNAPSHOT_MAX_SHARE = 0.02
CATCH_UP_FRAMES = 100  # per poll when re-reading `.ordered` after a restore
# Local frames held while waiting for a gap (another instance's frames) to arrive through
# Kafka. Past this, drop them: the agent delivers them too, only later.
MAX_HELD_FRAMES = 1_000


class DecideStage:
    """Feeds `<prefix>.ordered` records through one FleetCore and sends its outputs."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        decoder: InputDecoder,
        topics: Any,
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
        self.stats = BatchStats("decide")
        # Decision latency from the inputs' broker time, unless that is a simulated clock
        # (the CreateTime demo): then from the frame's, which is this machine's.
        self._latency_from_inputs = settings.kafka.input_timestamps == "LogAppendTime"
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        self._snapshot_pause_s = 0.0  # how long the last one stopped the decider
        self._forked: ForkedSnapshot | None = None  # a snapshot a child is writing
        self._flush_s = 0.0  # the part of the last pause spent flushing outputs
        # Deliveries of outputs sent and not yet acknowledged (oldest first), and those a
        # forked snapshot covers: it is saved only once they are all on the broker.
        self._unacked: deque[asyncio.Future[Any]] = deque()
        self._covered: list[asyncio.Future[Any]] = []
        self._confirming: asyncio.Future[None] | None = None  # its "durable" log line
        # One frame at a time, whichever way it came: outputs keep the history's order.
        self._lock = asyncio.Lock()
        # Acknowledged local frames not yet applied: offset -> (frame, timestamp ms).
        self._held: dict[int, tuple[bytes, int]] = {}
        self._draining: asyncio.Task[None] | None = None

    def forget(self) -> None:
        """The partition moved: the table, not memory, is the truth from now on."""
        self.core = None
        self._held.clear()
        if self._forked is not None:
            self._forked.abandon()
            self._forked = None
        self._covered = []

    async def on_batch(self, events: Sequence[Any]) -> None:
        """Frames from the Faust agent, in offset order."""
        async with self._lock:
            first = events[0].message.offset
            # A gap means this memory missed frames: the snapshot is the truth.
            if self.core is None or first > self.next_offset:
                self._restore()
            if first > self.next_offset:
                await self._catch_up(first)
            for event in events:
                message = event.message
                if message.offset < self.next_offset:
                    continue  # applied already: offered locally, or in the snapshot
                # Faust's timestamps are in seconds.
                await self._decide_frame(
                    event.value, message.timestamp * 1000, "through Kafka", offset=message.offset
                )
                self.next_offset = message.offset + 1
            await self._apply_held()
            await self._maybe_snapshot()  # here: a Faust table is written from an event only

    def offer(self, offset: int, frame: bytes, timestamp_ms: int) -> None:
        """This instance's ingest wrote `frame`, acknowledged at `offset`: apply it now.

        Ignored until the agent has delivered a first batch (the decider restores then),
        and when another instance owns `.ordered` (forget() left no core)."""
        if self.core is None or offset < self.next_offset:
            return
        if len(self._held) >= MAX_HELD_FRAMES:
            return
        self._held[offset] = (frame, timestamp_ms)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain_held())

    async def _drain_held(self) -> None:
        # No snapshot from here: a Faust table is written from the agent's event only.
        try:
            async with self._lock:
                await self._apply_held()
        except Exception as exc:  # as the agent would: stop, and restart from a snapshot
            log.exception("decider: applying a local frame failed")
            await self.app.crash(exc)

    async def _apply_held(self) -> None:
        held = self._held
        while self.core is not None and (entry := held.pop(self.next_offset, None)):
            await self._decide_frame(*entry, "from ingest", offset=self.next_offset)
            self.next_offset += 1
        for offset in [offset for offset in held if offset < self.next_offset]:
            del held[offset]

    def _restore(self) -> None:
        if removed := remove_stale_parts(self.settings.processor.data_dir):
            log.info("decider: removed %d unfinished snapshot file(s) of a killed run", removed)
        snapshot = self.store.load()
        if snapshot is None:
            self.core, self.next_offset = FleetCore(self.settings.core), 0
        else:
            try:
                self.core = FleetCore.restore(snapshot.data)
                self.next_offset = snapshot.offset
            except ValueError as exc:
                # Written by another version (an upgrade): `.ordered` is the history, so
                # rebuild the state from its start (as far as its retention reaches).
                log.warning("decider: %s; rebuilding from the start of .ordered", exc)
                self.core, self.next_offset = FleetCore(self.settings.core), 0
        log.info("decider restored at `.ordered` offset %d", self.next_offset)

    async def _catch_up(self, until: int) -> None:
        """Re-read .ordered [next_offset, until): Faust committed past the snapshot."""
        tp = TopicPartition(self.topics.ordered, 0)
        consumer = AIOKafkaConsumer(
            **aiokafka_kwargs(self.settings.kafka),
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,  # a frame as large as the topic takes
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            earliest = (await consumer.beginning_offsets([tp]))[tp]
            start = max(self.next_offset, earliest)
            consumer.seek(tp, start)
            log.info("decider catching up on `.ordered` offset %d..%d", start, until - 1)
            while self.next_offset < until:
                batches = await consumer.getmany(tp, timeout_ms=1000, max_records=CATCH_UP_FRAMES)
                for message in batches.get(tp, []):
                    if message.offset >= until:
                        break
                    await self._decide_frame(
                        message.value, message.timestamp, "caught up", offset=message.offset
                    )
                    self.next_offset = message.offset + 1
        finally:
            await consumer.stop()
        self.next_offset = until

    async def _decide_frame(
        self, frame: bytes, created_ms: float, path: str, *, offset: int
    ) -> None:
        """Apply every record of one frame; all or nothing as far as snapshots go."""
        assert self.core is not None
        started = time.perf_counter()
        process = self.core.process
        try:
            # Stage 1 validated these: all of them decode, unless another writer's frame.
            records = self.decoder.trusted_frame(frame)
        except DecodeError as exc:
            await self._reject_frame(offset, frame, str(exc))
            return
        outputs = [output for record in records for output in process(record)]
        self._since_snapshot += len(records)
        send, encode, topics = self.app.producer.send, self.codec.encode, self.topics
        unacked = self._unacked
        for output in outputs:
            routed = destination(output, topics)
            if routed is None:
                continue
            topic, key = routed
            unacked.append(await send(topic, key.encode(), encode(output), None, None, None))
        while unacked and unacked[0].done():
            unacked.popleft()
        metrics.count_outputs(outputs)
        if records:  # in merge order: the first is the oldest input of the frame
            at_ms = (self._latency_from_inputs and records[0].received_at) or created_ms
            metrics.DECISION_LATENCY.observe(max(0.0, time.time() - at_ms / 1000))
        self.stats.counts[f"frames {path}"] += 1
        self.stats.add(len(records), time.perf_counter() - started, created_ms)

    async def _reject_frame(self, offset: int, frame: bytes, reason: str) -> None:
        # Stopping here would crash-loop on this offset. Skipped whole, as the projector
        # skips it, the frame is missing from both histories alike; its letter says why.
        log.error("decider: skipping the frame at `.ordered` offset %d: %s", offset, reason)
        metrics.DEAD_LETTERS.inc()
        topic = self.topics.ordered
        letter = DeadLetter.of_record(
            event_id=f"dlq:{topic}:0:{offset}",
            ts=int(time.time() * 1000),
            source_topic=topic,
            source_partition=0,
            source_offset=offset,
            value=frame,
            reason=f"decider: {reason}",
        )
        dlq = self.topics.dlq
        await self.app.producer.send(dlq, None, self.codec.encode(letter), None, None, None)

    async def _maybe_snapshot(self) -> None:
        if self._forked is not None:
            self._finish_forked()
            return
        since_s = time.monotonic() - self._snapshot_at
        every_s = self.settings.processor.snapshot_every_s
        if not snapshot_due(since_s, self._since_snapshot, every_s, self._snapshot_pause_s):
            return
        assert self.core is not None
        started = time.perf_counter()
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        if CAN_FORK:  # the decider stops for the fork; the child pickles
            # Only outputs on the broker may be covered by a snapshot: the ones still in
            # flight are awaited before it is saved, not here.
            self._covered = [delivery for delivery in self._unacked if not delivery.done()]
            directory = self.settings.processor.data_dir
            self._forked = ForkedSnapshot(self.core, self.next_offset, directory)
            self._flush_s = 0.0
            self._snapshot_pause_s = time.perf_counter() - started
            return
        await self.app.producer.flush()  # only outputs on the broker may be covered
        self._flush_s = time.perf_counter() - started
        data = self.core.snapshot()
        self.store.save(self.next_offset, data)
        self._saved(self.next_offset, len(data), time.perf_counter() - started)

    def _finish_forked(self) -> None:
        forked = self._forked
        assert forked is not None
        try:
            written = forked.result()
        except OSError as exc:
            log.warning("decider: %s; the next snapshot is taken as usual", exc)
            self._forked = None
            return
        if written is None or not all(d.done() for d in self._covered):
            return  # the child is still writing, or outputs it covers are in flight
        self._forked = None
        if any(d.cancelled() or d.exception() is not None for d in self._covered):
            log.warning("decider: an output the snapshot covers was not delivered; dropped")
            return
        started = time.perf_counter()
        self.store.save_packed(forked.offset, written[1])
        # The pause: the fork before, and this save.
        self._saved(
            forked.offset, written[0], self._snapshot_pause_s + time.perf_counter() - started
        )

    def _saved(self, offset: int, size: int, pause_s: float) -> None:
        self._snapshot_pause_s = pause_s
        metrics.SNAPSHOT_SECONDS.observe(pause_s)
        metrics.SNAPSHOT_BYTES.set(size)
        self.stats.snapshot(size, pause_s)
        # The changelog write is buffered: the log line waits until the broker has it (it
        # means "durable"), in a task of its own, so the decider does not wait.
        fields = {"offset": offset, "bytes": size, "pause_ms": round(pause_s * 1000, 1),
                  "flush_ms": round(self._flush_s * 1000, 1)}  # fmt: skip
        self._confirming = asyncio.ensure_future(self._log_durable(fields))

    async def _log_durable(self, fields: dict[str, Any]) -> None:
        await self.app.producer.flush()
        log.info(
            "decider snapshot at `.ordered` offset %d: %d bytes, the decider paused %.0f ms",
            fields["offset"], fields["bytes"], fields["pause_ms"], extra={"fields": fields},
        )  # fmt: skip


def snapshot_due(since_s: float, since_records: int, every_s: float, last_pause_s: float) -> bool:
    """Is a snapshot due, `since_s` seconds and `since_records` records after the last
    one, which paused the decider for `last_pause_s`?"""
    if not since_records or since_s * SNAPSHOT_MAX_SHARE < last_pause_s:
        return False
    return since_s >= every_s or since_records >= SNAPSHOT_EVERY_RECORDS


def destination(output: Any, topics: Any) -> tuple[str, str] | None:
    """The topic and key of a derived record (`topics`: app.Topics); None for an output
    that is not published."""
    if isinstance(output, CircuitStateChanged):
        return topics.circuits, output.key
    if isinstance(output, RecoveryCommand):
        return topics.commands, output.task_id
    if isinstance(output, CircuitFigures):
        return topics.figures, output.key
    if isinstance(output, Alert):
        return topics.alerts, output.alert_id
    return None
