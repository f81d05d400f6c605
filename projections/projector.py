"""The Kafka → DuckDB projector: the one process that writes the history file.

It reads `<prefix>.decisions` (frames of inputs, processors/decisions.py, in the order the
processor's core saw them; the `seq` column is `decisions.seq(offset, index in frame)`),
`.circuits`, `.commands` and `.dlq` with a plain confluent-kafka consumer, and lands them
through `HistoryWriter` in batches.

Exactly once into DuckDB: the next offset of every partition is stored in the table
`projector_offsets` in the same transaction as the rows it covers. On start the projector
assigns every partition itself and seeks to the stored offsets; Kafka's group offsets are
never used. A projector killed at any moment restarts from the last committed batch, so no
row is lost or doubled. Repeated ids (a processor re-sending after its own restart) are
dropped by the writer's anti-join on (id, ts). Records are decoded without the pydantic
models (`Codec.decode_trusted`): the processor validated them before writing them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from faultstream.events.admin import CIRCUITS, COMMANDS, DECISIONS, DLQ, create_topics, topic_names
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import (
    DeadLetter,
)
from faultstream.processors.decisions import seq as decision_seq
from faultstream.processors.decisions import unpack as unpack_frame

from .health import HealthSnapshots
from .read_models import ReadModelPublisher
from .tables import HistoryWriter

log = logging.getLogger(__name__)

OFFSETS_DDL = """
CREATE TABLE IF NOT EXISTS projector_offsets (
    topic VARCHAR, partition INTEGER, next_offset BIGINT, PRIMARY KEY (topic, partition))
"""
_NEVER = 1 << 62  # the writer must never flush by itself: only with the offsets
_SCHEMAS_ON = {
    DECISIONS: ("worker_event", "control_record"),
    CIRCUITS: ("circuit_state_changed",),
    COMMANDS: ("recovery_command",),
    DLQ: ("dead_letter",),
}


@dataclass(frozen=True)
class ProjectorOptions:
    batch_rows: int = 20_000
    flush_interval_s: float = 0.5
    publish_interval_s: float = 2.0
    poll_timeout_s: float = 0.1


class Projector:
    """Consumes the processor's topics into the history file and publishes read models."""

    def __init__(self, settings: Settings, options: ProjectorOptions | None = None) -> None:
        self.settings = settings
        self.options = options or ProjectorOptions()
        names = topic_names(settings.kafka)
        self.topics = {
            names[DECISIONS]: DECISIONS,
            names[CIRCUITS]: CIRCUITS,
            names[COMMANDS]: COMMANDS,
            names[DLQ]: DLQ,
        }
        self.codec = Codec(
            settings.kafka.schema_registry_url, topic_prefix=settings.kafka.topic_prefix
        )
        self.writer = HistoryWriter(
            settings.storage.duckdb_path,
            batch_size=_NEVER,
            attribution=settings.core.circuits.attribution,
        )
        self.writer.con.execute(OFFSETS_DDL)
        self.health = HealthSnapshots(
            self.writer.con,
            round(settings.storage.health_interval_s * 1000),
            settings.core.circuits.attribution,
        )
        self.publisher = ReadModelPublisher(self.writer.con, settings.storage.read_models_dir)
        self.consumer: Consumer | None = None
        self._offsets: dict[tuple[str, int], int] = {}
        self._circuits_topic = names[CIRCUITS]
        self._circuits_partitions: list[int] = []
        self._circuits_newest_ts: dict[int, int] = {}  # per partition, since this start
        self._pending_rows = 0
        self._published_rows = 0
        self.rows_landed = 0
        self._stop = threading.Event()

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
        self.consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": f"{kafka.topic_prefix}.projector",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "queued.max.messages.kbytes": 256 * 1024,
            }
        )
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
            if self.topics[topic] == CIRCUITS:
                self._circuits_partitions = sorted(info.partitions)
        self.consumer.assign(assignment)
        log.info("projector assigned %d partitions (%d stored offsets)", len(assignment),
                 len(stored))  # fmt: skip

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Consume until `stop()`; then land what is buffered and publish."""
        if self.consumer is None:
            self.start()
        opts = self.options
        last_flush = last_publish = time.monotonic()
        try:
            while not self._stop.is_set():
                self.poll_once()
                now = time.monotonic()
                due = now - last_flush >= opts.flush_interval_s
                if self._pending_rows >= opts.batch_rows or (self._pending_rows and due):
                    self.flush()
                    last_flush = now
                elif due:
                    last_flush = now
                if now - last_publish >= opts.publish_interval_s:
                    self.publish()
                    last_publish = now
            self.flush()
            self.publish()
        finally:
            self.close()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        self.writer.con.close()

    # --- consuming ------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Read up to one batch of messages into the writer's buffers; returns how many."""
        assert self.consumer is not None
        messages = self.consumer.consume(self.options.batch_rows, self.options.poll_timeout_s)
        inputs: list[dict[str, Any]] = []
        seqs: list[int] = []
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
            try:
                value = message.value()
                if value is None:
                    raise FaultstreamError("empty message value")
                # Trusted: the processor validated these records before it wrote them.
                # A decisions record is a frame of them (processors/decisions.py).
                records = unpack_frame(value) if logical == DECISIONS else (value,)
                decoded = [decode(record) for record in records]
                for name, _ in decoded:
                    if name not in _SCHEMAS_ON[logical]:
                        raise FaultstreamError(f"a {name} on the {logical} topic")
            except FaultstreamError as exc:
                letters.append(_dead_letter(message, str(exc)))
                continue
            if logical == DECISIONS:
                for index, (_, fields) in enumerate(decoded):
                    inputs.append(fields)
                    # The input order (offset, index in frame), unique while a frame
                    # holds at most decisions.MAX_RECORDS records.
                    seqs.append(decision_seq(offset, index))
                continue
            name, fields = decoded[0]
            if logical == DLQ:
                letters.append(fields)
            else:
                derived.append(fields)
                if logical == CIRCUITS:
                    newest = self._circuits_newest_ts
                    partition = message.partition()
                    newest[partition] = max(newest.get(partition, fields["ts"]), fields["ts"])
        if inputs:
            self.writer.append_inputs(inputs, seqs)
        if derived:
            self.writer.append_derived(derived)
        if letters:
            self.writer.append_dead_letters(letters)
        self._pending_rows += len(messages)
        return len(messages)

    # --- landing --------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit buffered rows, the offsets that cover them and the health snapshots of
        the boundaries they complete in one transaction."""
        if not self._pending_rows:
            return
        offsets = dict(self._offsets)
        ends: dict[int, bool] = {}  # circuits partition -> at its end offset (asked once)

        def caught_up(boundary: int, settled: bool) -> bool:
            return self._circuits_caught_up(boundary, settled, offsets, ends)

        def before_commit(con: duckdb.DuckDBPyConnection) -> None:
            _store_offsets(con, offsets)
            self.health.record(con, caught_up)

        self.writer.flush(before_commit=before_commit)
        self.rows_landed += self._pending_rows
        self._pending_rows = 0

    def _circuits_caught_up(
        self,
        boundary: int,
        settled: bool,
        offsets: dict[tuple[str, int], int],
        ends: dict[int, bool],
    ) -> bool:
        """Whether every transition with ts <= boundary has landed, as far as we can tell.

        A circuits partition has caught up once it delivered an output newer than the
        boundary. A partition with nothing newer counts only at its end offset and once the
        inputs have `settled` (passed the boundary by a whole interval): the processor
        writes its outputs after the inputs reach `.decisions`, so an end offset seen right
        after the inputs may not hold them yet; an interval of event time gives it room.
        """
        for partition in self._circuits_partitions:
            if self._circuits_newest_ts.get(partition, boundary) > boundary:
                continue
            if not settled:
                return False
            if partition not in ends:
                ends[partition] = self._at_end(partition, offsets)
            if not ends[partition]:
                return False
        return True

    def _at_end(self, partition: int, offsets: dict[tuple[str, int], int]) -> bool:
        assert self.consumer is not None
        topic = self._circuits_topic
        # The high watermark of the last fetch response: asking the broker instead queues
        # behind the consumer's own long-polling fetch (~0.5 s a call).
        low, high = self.consumer.get_watermark_offsets(
            TopicPartition(topic, partition), cached=True
        )
        if high < 0:  # no fetch response for this partition yet: not known to be at its end
            return False
        return offsets.get((topic, partition), max(low, 0)) >= high

    def publish(self) -> None:
        if self.rows_landed != self._published_rows or not self.publisher.manifest.version:
            self.publisher.publish()
            self._published_rows = self.rows_landed


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
    return DeadLetter(
        event_id=f"projector:{topic}:{partition}:{offset}",
        ts=max(0, message.timestamp()[1]),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        raw=message.value() or b"",
        reason=f"projector could not decode: {reason}",
    )
