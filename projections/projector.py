"""The Kafka → DuckDB projector: the one process that writes the history file.

It reads `<prefix>.ordered` (frames of inputs, events/frames.py, in the order the
processor's core saw them; the `seq` column is `frames.seq(offset, index in frame)`),
`.circuits`, `.commands`, `.figures`, `.alerts` and `.dlq` with a plain confluent-kafka
consumer, and lands them through `HistoryWriter` in batches.

Exactly once into DuckDB: the next offset of every partition is stored in the table
`projector_offsets` in the same transaction as the rows it covers. On start the projector
assigns every partition itself and seeks to the stored offsets; Kafka's group offsets are
never used. A projector killed at any moment restarts from the last committed batch, so no
row is lost or doubled. Repeated ids (a processor re-sending after its own restart) are
dropped by the writer's anti-join on (id, ts). Records are decoded without the pydantic
models: the processor validated them before writing them. Decisions batches are decoded
straight into Arrow columns (columns.py); the other topics' records one by one
(`Codec.decode_trusted`).

Lag, for /readyz and /metrics: the records on the broker that have not landed (high
watermarks of the last fetch responses minus the landed offsets), and while there are any,
the age of the newest landed frame (0 when everything has landed).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import duckdb
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from faultstream.events.admin import (
    ALERTS,
    CIRCUITS,
    COMMANDS,
    DLQ,
    FIGURES,
    ORDERED,
    create_topics,
    topic_names,
)
from faultstream.events.codec import Codec
from faultstream.events.config import KafkaSettings, Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.kafka_clients import librdkafka_config
from faultstream.events.models import DeadLetter

from . import metrics
from .columns import FramesDecoder
from .health import HealthSnapshots
from .read_models import ReadModelPublisher
from .tables import Batch, HistoryWriter

log = logging.getLogger(__name__)

OFFSETS_DDL = """
CREATE TABLE IF NOT EXISTS projector_offsets (
    topic VARCHAR, partition INTEGER, next_offset BIGINT, PRIMARY KEY (topic, partition))
"""
_NEVER = 1 << 62  # the writer must never flush by itself: only with the offsets
_SCHEMAS_ON = {
    ORDERED: ("worker_event", "control_record"),
    CIRCUITS: ("circuit_state_changed",),
    COMMANDS: ("recovery_command",),
    FIGURES: ("circuit_figures",),
    ALERTS: ("alert",),
    DLQ: ("dead_letter",),
}


@dataclass(frozen=True)
class ProjectorOptions:
    batch_rows: int = 20_000  # a transaction holds at least this many, when they are there
    flush_interval_s: float = 0.5
    publish_interval_s: float = 2.0
    poll_timeout_s: float = 0.1
    # While a batch lands, the next one grows (bigger transactions cost less a row) up to
    # this many rows; then consuming waits for the landing.
    max_batch_rows: int = 200_000
    lag_every_s: float = 1.0  # how often the lag is measured
    ready_max_lag_s: float = 30.0  # /readyz says 503 past this lag


class Projector:
    """Consumes the processor's topics into the history file and publishes read models."""

    def __init__(self, settings: Settings, options: ProjectorOptions | None = None) -> None:
        self.settings = settings
        self.options = options or ProjectorOptions()
        names = topic_names(settings.kafka)
        self.topics = {
            names[ORDERED]: ORDERED,
            names[CIRCUITS]: CIRCUITS,
            names[COMMANDS]: COMMANDS,
            names[FIGURES]: FIGURES,
            names[ALERTS]: ALERTS,
            names[DLQ]: DLQ,
        }
        self.codec = Codec(
            settings.kafka.schema_registry_url, topic_prefix=settings.kafka.topic_prefix
        )
        self.writer = open_history_writer(
            settings.storage.duckdb_path,
            batch_size=_NEVER,
        )
        try:
            # One writer per read-models folder, whatever DuckDB file it comes from.
            self.publisher = ReadModelPublisher(self.writer.con, settings.storage.read_models_dir)
        except BaseException:
            self.writer.con.close()
            raise
        self.writer.con.execute(OFFSETS_DDL)
        self.health = HealthSnapshots(
            self.writer.con,
            round(settings.storage.health_interval_s * 1000),
        )
        self.frames = FramesDecoder(self.codec)
        self.consumer: Consumer | None = None
        self._offsets: dict[tuple[str, int], int] = {}
        # The outputs a health snapshot waits for: transitions and the core's figures.
        self._outputs_partitions: list[tuple[str, int]] = []
        self._outputs_newest_ts: dict[tuple[str, int], int] = {}  # since this start
        self._pending_rows = 0
        self._published_rows = 0
        self.rows_landed = 0
        self.batches_landed = 0
        self._stop = threading.Event()
        # The one thread that uses the DuckDB connection once consuming started: batches
        # land (and read models publish) there, in order, while the next batch is consumed.
        self._landing = ThreadPoolExecutor(1, thread_name_prefix="projector-landing")
        self._in_flight: list[Future[None]] = []  # submitted, not yet settled, in order
        self._last_land = self._last_publish = time.monotonic()
        # Lag (module docstring): measured on the consuming thread, read by the API's.
        self._assigned: list[TopicPartition] = []
        self._landed_offsets: dict[tuple[str, int], int] = {}
        self._newest_frame_ms = -1  # Kafka timestamp of the newest frame polled
        self.newest_landed_ms = -1  # ... and landed
        self.lag_records: int | None = None  # None until first measured
        self.lag_ms = 0.0
        self._started_at = self._lag_at = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        rows = self.writer.con.execute(
            "SELECT topic, partition, next_offset FROM projector_offsets"
        ).fetchall()
        return {(topic, partition): offset for topic, partition, offset in rows}

    def start(self) -> None:
        """Create the topics if needed, publish the read models once (so readers and the
        API have something to open), then assign every partition at its stored offset."""
        kafka = self.settings.kafka
        create_topics(kafka)
        self.publisher.publish()
        self.consumer = Consumer(consumer_config(kafka))
        stored = self.stored_offsets()
        self._offsets = dict(stored)
        assignment = []
        metadata = self.consumer.list_topics(timeout=10)
        for topic in self.topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise FaultstreamError(f"topic {topic} is not available on the broker")
            for partition in sorted(info.partitions):
                offset = stored.get((topic, partition), OFFSET_BEGINNING)
                assignment.append(TopicPartition(topic, partition, offset))
            if self.topics[topic] in (CIRCUITS, FIGURES):
                self._outputs_partitions += [(topic, p) for p in sorted(info.partitions)]
        self.consumer.assign(assignment)
        self._assigned = [TopicPartition(tp.topic, tp.partition) for tp in assignment]
        self._landed_offsets = dict(stored)
        log.info("projector assigned %d partitions (%d stored offsets)", len(assignment),
                 len(stored))  # fmt: skip

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Consume until `stop()`; then land what is buffered and publish."""
        if self.consumer is None:
            self.start()
        try:
            while not self._stop.is_set():
                self.step()
            self.flush()
            self.publish()
        finally:
            self.close()

    def step(self) -> int:
        """Poll once; start landing the buffered rows when a batch is full, the flush
        interval passed or the topics are drained; publish when due. Returns the number of
        rows polled."""
        opts = self.options
        polled = self.poll_once()
        now = time.monotonic()
        due = now - self._last_land >= opts.flush_interval_s
        pending = self._pending_rows
        if pending and (pending >= opts.batch_rows or due or not polled):
            if self._start_landing(wait=pending >= opts.max_batch_rows):
                self._last_land = now
        elif due:
            self._last_land = now
        if now - self._last_publish >= opts.publish_interval_s:
            self._in_flight.append(self._landing.submit(self._publish))
            self._last_publish = now
        if now - self._lag_at >= opts.lag_every_s:
            self._measure_lag(now)
        return polled

    def close(self) -> None:
        try:
            self._settle(block=True)
        finally:
            self._landing.shutdown()
            if self.consumer is not None:
                self.consumer.close()
                self.consumer = None
            self.writer.con.close()
            self.publisher.close()

    # --- consuming ------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Read up to `batch_rows` messages into the writer's buffers; returns the number of
        rows they gave (inputs, derived records and dead letters)."""
        assert self.consumer is not None
        messages = self.consumer.consume(self.options.batch_rows, self.options.poll_timeout_s)
        frames: list[Message] = []
        values: list[bytes] = []  # of the frames
        frame_offsets: list[int] = []
        derived: list[dict[str, Any]] = []
        letters: list[Any] = []
        offsets = self._offsets
        topics = self.topics
        decode = self.codec.decode_trusted
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error.str())
                continue
            topic, offset = message.topic(), message.offset()
            offsets[(topic, message.partition())] = offset + 1
            logical = topics[topic]
            value = message.value()
            if value is None:
                letters.append(_dead_letter(message, "empty message value"))
            elif logical == ORDERED:  # decoded together, in columns, below
                frames.append(message)
                values.append(value)
                frame_offsets.append(offset)
                continue
            # Trusted: the processor validated these records before it wrote them.
            try:
                name, fields = decode(value)
                if name not in _SCHEMAS_ON[logical]:
                    raise FaultstreamError(f"a {name} on the {logical} topic")
            except FaultstreamError as exc:
                letters.append(_dead_letter(message, str(exc)))
                continue
            if logical == DLQ:
                letters.append(fields)
            else:
                derived.append(fields)
                if logical in (CIRCUITS, FIGURES):
                    newest = self._outputs_newest_ts
                    key = (message.topic(), message.partition())
                    newest[key] = max(newest.get(key, fields["ts"]), fields["ts"])
        if frames:  # one partition, in offset order: the last is the newest
            self._newest_frame_ms = max(self._newest_frame_ms, frames[-1].timestamp()[1])
        rows = self._decode_frames(frames, values, frame_offsets, letters) if frames else 0
        if derived:
            self.writer.append_derived(derived)
        if letters:
            self.writer.append_dead_letters(letters)
        rows += len(derived) + len(letters)
        self._pending_rows += rows
        return rows

    def _decode_frames(
        self, frames: list[Message], values: list[bytes], offsets: list[int], letters: list[Any]
    ) -> int:
        """Decisions messages (frames of inputs) into the writer, a batch at a time; the
        `seq` of an input is `frames.seq(offset, index in frame)`. Returns the number of
        inputs buffered."""
        decoded = self.frames.decode(values, offsets)
        for index, reason in sorted(decoded.rejected.items()):
            letters.append(_dead_letter(frames[index], reason))
        self.writer.append_event_table(decoded.events)
        if decoded.records:
            self.writer.append_inputs(decoded.records, decoded.record_seqs)
        return decoded.events.num_rows + len(decoded.records)

    # --- landing --------------------------------------------------------------------------

    def flush(self) -> None:
        """Land every buffered row and wait until it has landed."""
        self._start_landing(wait=True)
        self._settle(block=True)

    def _start_landing(self, *, wait: bool) -> bool:
        """Hand the buffered rows to the landing thread, as one transaction with the
        offsets that cover them; False (nothing done) while a landing is still under way,
        unless `wait`."""
        if not self._settle(block=wait) or not self._pending_rows:
            return False
        offsets = dict(self._offsets)
        newest = dict(self._outputs_newest_ts)
        # Asked now, on the consuming thread: the consumer is not the landing thread's.
        ends = {tp: self._at_end(tp, offsets) for tp in self._outputs_partitions}
        batch = self.writer.take_batch()
        rows, self._pending_rows = self._pending_rows, 0
        land = partial(self._land, frame_ms=self._newest_frame_ms)
        self._in_flight.append(self._landing.submit(land, batch, rows, offsets, newest, ends))
        return True

    def _settle(self, *, block: bool) -> bool:
        """Whether the landing thread is idle (waiting for it if `block`); re-raises the
        failure of a finished task."""
        in_flight = self._in_flight
        while in_flight:
            if not block and not in_flight[0].done():
                return False
            in_flight.pop(0).result()
        return True

    def _land(
        self,
        batch: Batch,
        rows: int,
        offsets: dict[tuple[str, int], int],
        newest: dict[tuple[str, int], int],
        ends: dict[tuple[str, int], bool],
        frame_ms: int = -1,
    ) -> None:
        """On the landing thread: rows, the offsets that cover them and the health
        snapshots of the boundaries they complete, in one transaction."""

        def caught_up(boundary: int, settled: bool) -> bool:
            return _outputs_caught_up(boundary, settled, newest, ends)

        def before_commit(con: duckdb.DuckDBPyConnection) -> None:
            _store_offsets(con, offsets)
            self.health.record(con, caught_up)

        self.writer.write_batch(batch, before_commit=before_commit)
        self.rows_landed += rows
        self.batches_landed += 1
        self._landed_offsets = offsets
        self.newest_landed_ms = max(self.newest_landed_ms, frame_ms)
        metrics.PROJECTOR_ROWS.inc(rows)
        metrics.PROJECTOR_BATCHES.inc()

    def _measure_lag(self, now: float) -> None:
        """Records not landed yet, from the high watermarks of the last fetch responses
        (no request to the broker), and the lag in time they make (module docstring)."""
        assert self.consumer is not None
        landed = self._landed_offsets
        behind = known = 0
        for tp in self._assigned:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:  # known once a fetch answered for the partition
                known += 1
                behind += max(0, high - landed.get((tp.topic, tp.partition), max(low, 0)))
        if self._assigned and not known:
            return  # no fetch has answered yet: not measured
        if not behind:
            lag_ms = 0.0
        elif self.newest_landed_ms >= 0:
            lag_ms = max(0.0, time.time() * 1000 - self.newest_landed_ms)
        else:  # nothing landed since the start: at least that old
            lag_ms = (now - self._started_at) * 1000
        self.lag_records, self.lag_ms, self._lag_at = behind, lag_ms, now
        metrics.PROJECTOR_LAG_RECORDS.set(behind)
        metrics.PROJECTOR_LAG_SECONDS.set(lag_ms / 1000)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """For /readyz: whether the read side is current enough, and the figures."""
        limit_s = self.options.ready_max_lag_s
        measured_s = time.monotonic() - self._lag_at
        figures: dict[str, Any] = {
            "lag_records": self.lag_records,
            "lag_ms": round(self.lag_ms),
            "rows_landed": self.rows_landed,
        }
        if self.lag_records is None:
            return False, {**figures, "reason": "projector starting: lag not measured yet"}
        if measured_s > max(limit_s, 10 * self.options.lag_every_s):
            reason = f"projector stalled: lag last measured {measured_s:.0f} s ago"
            return False, {**figures, "reason": reason}
        if self.lag_ms > limit_s * 1000:
            reason = (
                f"projector behind: {self.lag_records} records not landed, the newest landed "
                f"{self.lag_ms / 1000:.0f} s old (ready below {limit_s:g} s)"
            )
            return False, {**figures, "reason": reason}
        return True, figures

    def _at_end(self, key: tuple[str, int], offsets: dict[tuple[str, int], int]) -> bool:
        assert self.consumer is not None
        topic, partition = key
        # The high watermark of the last fetch response: asking the broker instead queues
        # behind the consumer's own long-polling fetch (~0.5 s a call).
        low, high = self.consumer.get_watermark_offsets(
            TopicPartition(topic, partition), cached=True
        )
        if high < 0:  # no fetch response for this partition yet: not known to be at its end
            return False
        return offsets.get((topic, partition), max(low, 0)) >= high

    def publish(self) -> None:
        """Publish the read models now (after any landing under way)."""
        self._settle(block=True)
        self._publish()

    def _publish(self) -> None:
        if self.rows_landed != self._published_rows or not self.publisher.manifest.version:
            self.publisher.publish()
            self._published_rows = self.rows_landed


def open_history_writer(path: str, **options: Any) -> HistoryWriter:
    """The history writer on `path`; a file another process holds (DuckDB allows one
    writing process per file) or cannot open is one FaultstreamError line."""
    try:
        return HistoryWriter(path, **options)
    except duckdb.IOException as exc:
        detail = str(exc).splitlines()[0].removeprefix("IO Error: ")
        if "Could not set lock" in detail:
            pid = re.search(r"\(PID (\d+)\)", detail)
            who = f" (pid {pid.group(1)})" if pid else ""
            raise FaultstreamError(
                f"DuckDB file {path}: in use by another process{who}; only one projector "
                "may write a history file (give this one its own --db)"
            ) from None
        raise FaultstreamError(f"DuckDB file {path}: cannot open ({detail})") from None


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The projector's consumer: partitions assigned by hand, offsets kept in DuckDB."""
    return librdkafka_config(
        kafka,
        {
            "group.id": f"{kafka.topic_prefix}.projector",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
        },
    )


def _outputs_caught_up(
    boundary: int,
    settled: bool,
    newest: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], bool],
) -> bool:
    """Whether every transition and figures record with ts <= boundary has landed, as far
    as we can tell.

    A circuits or figures partition (`newest`: its newest ts since this start) has caught up once it
    delivered an output newer than the boundary. A partition with nothing newer counts only
    at its end offset (`ends`) and once the inputs have `settled` (passed the boundary by a
    whole interval): the processor writes its outputs after the inputs reach `.ordered`,
    so an end offset seen right after the inputs may not hold them yet; an interval of event
    time gives it room.
    """
    for partition, at_end in ends.items():
        if newest.get(partition, boundary) > boundary:
            continue
        if not settled or not at_end:
            return False
    return True


def _store_offsets(con: duckdb.DuckDBPyConnection, offsets: dict[tuple[str, int], int]) -> None:
    if not offsets:
        return
    topics, partitions, next_offsets = zip(*((t, p, o) for (t, p), o in offsets.items()),
                                           strict=True)  # fmt: skip
    batch = pa.table(
        {
            "topic": pa.array(topics, pa.string()),
            "partition": pa.array(partitions, pa.int32()),
            "next_offset": pa.array(next_offsets, pa.int64()),
        }
    )
    con.register("offsets_batch", batch)
    con.execute("INSERT OR REPLACE INTO projector_offsets SELECT * FROM offsets_batch")
    con.unregister("offsets_batch")


def _dead_letter(message: Message, reason: str) -> DeadLetter:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    return DeadLetter.of_record(
        event_id=f"projector:{topic}:{partition}:{offset}",
        ts=max(0, message.timestamp()[1]),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        value=message.value(),
        reason=f"projector could not decode: {reason}",
    )
