"""Stage 1 of the processor: validate raw input records, frame the good ones onto
`<prefix>.ordered`, dead-letter the bad ones.

Records are forwarded in one order across the input partitions: merged by the broker's
append time (processors/stream/merge.py), each carrying that time into its frame, where the
decider reads it as the record's `received_at` (CIRCUITS.md "Decision time").

The batched path (`IngestStage.run`) reads `<prefix>.events` and `.control` with its own
aiokafka consumer (group `<app id>-ingest`) and `getmany`, inside the Faust app: Faust's
per-message stream machinery costs ~100 µs per event here (profiled: task creation and
`wait_first` per event), ten times the validation itself, and the input is the only
high-volume topic. Several instances share the input partitions through that group.

At least once: input offsets are committed only after the broker acknowledged every frame
and dead letter that covers them (every COMMIT_EVERY_S, on a rebalance, on stop). The
periodic commit waits for those acknowledgements in the background, so the poll loop never
stalls on it (a blocking flush cost up to 50 ms of latency). A record forwarded twice after
a crash is harmless: the core ignores a repeated event_id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from faultstream.events import frames
from faultstream.events.admin import MAX_MESSAGE_BYTES
from faultstream.events.config import Settings
from faultstream.events.decode import InputDecoder
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.kafka_clients import aiokafka_kwargs
from faultstream.events.models import DeadLetter

from . import metrics
from .merge import PartitionMerge
from .stats import BatchStats

log = logging.getLogger("faultstream.processor")

ORDERED_KEY = b"fleet"
# Records per poll, hence at most per frame (frames.MAX_RECORDS caps a frame).
POLL_MAX_RECORDS = 5000
COMMIT_EVERY_S = 1.0
# A partition that runs this far ahead of the merge stops being fetched until it drains.
MERGE_BUFFER_MAX = 50_000
# How often to say which partition holds the merge back, while one does.
WAITING_LOG_EVERY_S = 10.0
assert POLL_MAX_RECORDS <= frames.MAX_RECORDS


class IngestStage:
    """Validates raw input records; forwards good ones in frames, dead-letters bad ones."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        decoder: InputDecoder,
        topics: Any,
        on_frame: Callable[[int, bytes, int], None] | None = None,
        member: str | None = None,
    ) -> None:
        self.app = app
        # Called with (offset, frame, timestamp ms) of each frame the broker acknowledged.
        self.on_frame = on_frame
        self.member = member  # the processor instance: its static membership of the group
        self.settings = settings
        self.decoder = decoder
        self.codec = decoder.codec
        self.topics = topics
        self.stats = BatchStats("ingest")
        self._pending: dict[TopicPartition, int] = {}  # next offsets not yet committed
        self._sent: list[Awaitable[Any]] = []  # deliveries the pending offsets wait for
        self._committing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        # Ties between partitions: events before control, then by partition number.
        self.merge = PartitionMerge(
            received_at=_received_at, order=lambda tp: (tp.topic != topics.events, tp.partition)
        )
        self._paused: set[TopicPartition] = set()

    async def _release(
        self, consumer: AIOKafkaConsumer
    ) -> tuple[list[Any], dict[TopicPartition, Any], list[TopicPartition]]:
        """`PartitionMerge.release` over the assigned partitions. Partitions far ahead of
        the merge pause until it catches up."""
        assigned = consumer.assignment()
        behind: dict[TopicPartition, bool] = {}  # has records not fetched yet
        for tp in assigned:
            highwater = consumer.highwater(tp)
            # Unknown until the first fetch answers: wait for it rather than guess.
            behind[tp] = highwater is None or await consumer.position(tp) < highwater
        released = self.merge.release(assigned, behind.__getitem__)
        full = {tp for tp in assigned if self.merge.buffered(tp) >= MERGE_BUFFER_MAX}
        if full - self._paused:
            consumer.pause(*(full - self._paused))
        if self._paused - full:
            consumer.resume(*(self._paused - full))
        self._paused = full
        return released

    async def forward(self, messages: Sequence[Any]) -> None:
        """Validate `messages` (anything with topic, partition, offset and value) and send
        the good ones as frames to `.ordered`, in order."""
        send = self.app.producer.send
        validated = self.decoder.validated
        good: list[bytes] = []
        received: list[int] = []
        sent = self._sent
        for message in messages:
            raw = message.value or b""  # a null value is bad input too
            try:
                validated(raw)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, FaultstreamError) else repr(exc)
                letter = self.codec.encode(dead_letter(message, raw, reason))
                metrics.DEAD_LETTERS.inc()  # bad records only: not the hot path
                sent.append(await send(self.topics.dlq, None, letter, None, None, None))
                continue
            good.append(raw)
            received.append(message.timestamp)
        for frame in frames.pack_all(good, received) if good else ():
            delivery = await send(self.topics.ordered, ORDERED_KEY, frame, 0, None, None)
            sent.append(delivery)
            if self.on_frame is not None:
                delivery.add_done_callback(partial(self._acknowledged, frame))

    def _acknowledged(self, frame: bytes, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is None:
            metadata = delivery.result()
            self.on_frame(metadata.offset, frame, metadata.timestamp)  # type: ignore[misc]

    async def on_faust_events(self, events: Sequence[Any]) -> None:
        """The naive baseline: a Faust agent hands over events. Faust flushes the producer
        before it commits their offsets."""
        started = time.perf_counter()
        messages = [_Received(event.message) for event in events]
        metrics.RECORDS_IN.labels(messages[0].topic).inc(len(messages))  # one event a call
        await self.forward(messages)
        oldest = messages[0].timestamp
        self.stats.add(len(events), time.perf_counter() - started, oldest)

    async def run(self) -> None:
        """Consume the input topics until cancelled (the batched path)."""
        kafka = self.settings.kafka
        group = f"{kafka.topic_prefix}-processor-ingest"
        consumer = AIOKafkaConsumer(
            **aiokafka_kwargs(kafka),
            group_id=group,
            # Restarted, the instance takes its partitions back at once (KIP-345).
            group_instance_id=None if self.member is None else f"{group}-{self.member}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=POLL_MAX_RECORDS,
            # A record as large as the topics accept must come through whole.
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            # As the Faust consumer: a SIGKILLed instance's partitions move within seconds.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            rebalance_timeout_ms=20_000,
        )
        consumer.subscribe([self.topics.events, self.topics.control], listener=_Listener(self))
        self._consumer = consumer
        await consumer.start()
        log.info("ingest consuming %s and %s", self.topics.events, self.topics.control)
        committed_at = time.monotonic()
        waiting_since: float | None = None
        waiting_logged = 0.0
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=POLL_MAX_RECORDS)
                async with self._lock:
                    for tp, records in batches.items():
                        self.merge.add(tp, records)
                        metrics.RECORDS_IN.labels(tp.topic).inc(len(records))
                    started = time.perf_counter()
                    messages, last, waiting = await self._release(consumer)
                    if messages:
                        await self.forward(messages)
                        for tp, message in last.items():
                            self._pending[tp] = message.offset + 1
                if messages:
                    busy = time.perf_counter() - started
                    self.stats.add(len(messages), busy, min(m.timestamp for m in messages))
                if waiting and not messages:
                    now = time.monotonic()
                    waiting_since = waiting_since or now
                    if now - waiting_since >= WAITING_LOG_EVERY_S and (
                        now - waiting_logged >= WAITING_LOG_EVERY_S
                    ):
                        waiting_logged = now
                        log.warning(
                            "ingest: the order waits for %s, behind and not yet fetched (%.0f s)",
                            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in waiting),
                            now - waiting_since,
                        )
                else:
                    waiting_since = None
                # Once a poll: what the merge holds back, and for how long it has waited.
                held = sum(self.merge.buffered(tp) for tp in consumer.assignment())
                metrics.ORDERING_LAG_RECORDS.set(held)
                waited_s = time.monotonic() - waiting_since if waiting_since else 0.0
                metrics.ORDERING_LAG_SECONDS.set(waited_s)
                due = time.monotonic() - committed_at >= COMMIT_EVERY_S
                if due and (self._committing is None or self._committing.done()):
                    self._committing = asyncio.create_task(self._commit_in_background())
                    committed_at = time.monotonic()
        finally:
            if self._committing is not None:
                self._committing.cancel()
            try:
                await self.commit()
            except Exception as exc:  # stopping anyway: the next owner re-reads
                log.warning("ingest: final commit failed (%r)", exc)
            await consumer.stop()
            self._consumer = None

    def _take(
        self, partitions: Sequence[TopicPartition] | None
    ) -> tuple[dict[TopicPartition, int], list[Awaitable[Any]]]:
        """The offsets to commit and the deliveries they wait for (all sent so far)."""
        chosen = list(self._pending) if partitions is None else partitions
        offsets = {tp: self._pending.pop(tp) for tp in chosen if tp in self._pending}
        sent, self._sent = self._sent, []
        return offsets, sent

    async def _commit_in_background(self) -> None:
        async with self._lock:  # a cut between batches; then wait outside the lock
            offsets, sent = self._take(None)
        await self._commit(offsets, sent)

    async def commit(self, partitions: Sequence[TopicPartition] | None = None) -> None:
        """Wait for every delivery so far, then commit the input offsets they cover."""
        async with self._lock:
            offsets, sent = self._take(partitions)
            await self._commit(offsets, sent)

    async def _commit(self, offsets: dict[TopicPartition, int], sent: list[Awaitable[Any]]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            await asyncio.gather(*sent)  # all of them: later commits no longer wait for these
        except Exception as exc:
            # A frame or dead letter was lost: committing any later offset would skip it.
            # Stop; the restarted processor re-reads from the last commit.
            self._pending.clear()
            log.error("ingest: a send failed (%r); stopping the processor", exc)
            await self.app.crash(exc)
            return
        try:
            owned = consumer.assignment()
            # Offsets of partitions revoked meanwhile are their new owner's business.
            offsets = {tp: offset for tp, offset in offsets.items() if tp in owned}
            if offsets:
                await consumer.commit(offsets)
        except KafkaError as exc:
            # The partitions moved on: their new owner re-forwards from the last commit,
            # and the core ignores the repeats.
            log.warning("ingest: commit failed (%r)", exc)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, ingest: IngestStage) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Held back, not forwarded: not committed either, so their next owner reads them.
        self.ingest.merge.forget(revoked)
        self.ingest._paused -= set(revoked)
        await self.ingest.commit(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("ingest assigned %d input partitions", len(assigned))


def _received_at(message: Any) -> int:
    """A consumed record's broker append time (the input topics use LogAppendTime)."""
    return message.timestamp


class _Received:
    """A Faust message as ingest reads messages: its timestamp in ms, as aiokafka's."""

    __slots__ = ("offset", "partition", "timestamp", "topic", "value")

    def __init__(self, message: Any) -> None:
        self.topic, self.partition, self.offset = message.topic, message.partition, message.offset
        self.value = message.value
        self.timestamp = round(message.timestamp * 1000)  # Faust's are in seconds


def dead_letter(message: Any, raw: bytes, reason: str) -> DeadLetter:
    """The letter for `message` (value `raw`): a bounded prefix of it, its size and hash,
    so the letter fits on the dlq whatever the record's size."""
    topic, partition, offset = message.topic, message.partition, message.offset
    return DeadLetter.of_record(
        event_id=f"dlq:{topic}:{partition}:{offset}",
        ts=int(time.time() * 1000),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        value=raw,
        reason=reason,
    )
