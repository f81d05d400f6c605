"""Poison records on the real broker: no input, of any size or content, crash-loops the
processor or holds up the records behind it.

A 1,000,000-byte garbage record once crash-looped the processor (its dead letter carried
the whole value, over the producer's request limit), and so did a valid CHECKPOINT with
1,040,000 bytes of state (its frame, likewise). Here such records, and a seeded fuzz of
sizes and bytes, go in ahead of an ordinary FAILURE: each one must end on `.ordered` or
as a bounded dead letter, and the FAILURE must still get its recovery command.
"""

from __future__ import annotations

import hashlib
import random
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from producers import ordered_producer
from test_processor import processor, wait_until

from faultstream.events import frames as framing
from faultstream.events.admin import (
    MAX_MESSAGE_BYTES,
    MAX_RECORD_BYTES,
    create_topics,
    end_offsets,
)
from faultstream.events.codec import DEFAULT_SCHEMA_IDS, HEADER, Codec
from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import (
    DEAD_LETTER_RAW_BYTES,
    MAX_CHECKPOINT_BYTES,
    DeadLetter,
    RecoveryCommand,
    WorkerEvent,
)

pytestmark = pytest.mark.kafka

KEY = b"gpu-poison"  # one key: every record on one partition, in the order written
SEED = 20_240_607
FUZZ_COUNT = 40


def _event(event_id: str, kind: str, **fields: object) -> WorkerEvent:
    return WorkerEvent(
        event_id=event_id,
        kind=kind,
        ts=int(time.time() * 1000),
        worker_id="gpu-poison",
        hardware_class="cuda",
        **fields,
    )


def fuzz(rng: random.Random, codec: Codec) -> list[bytes]:
    """Values of many sizes (empty to past the processor's limit) and shapes: random
    bytes, random bodies behind our schemas' headers, valid records with bytes mutated."""
    templates = [
        codec.encode(_event("tpl-hb", "HEARTBEAT")),
        codec.encode(
            _event("tpl-f", "FAILURE", task_id="tpl", task_type="fuzz", attributes={"a": "b"})
        ),
        codec.encode(_event("tpl-cp", "CHECKPOINT", task_id="tpl", checkpoint_seq=3,
                            checkpoint_state=rng.randbytes(300))),
    ]  # fmt: skip
    headers = [HEADER.pack(0, DEFAULT_SCHEMA_IDS[n]) for n in ("worker_event", "control_record")]
    sizes = [0, 1, 4, 5, 6, 64, 65_535, 65_536, 65_537, 1_048_576, MAX_RECORD_BYTES + 1]
    sizes += [int(2 ** rng.uniform(0, 21)) for _ in range(FUZZ_COUNT - len(sizes))]
    values: list[bytes] = []
    for size in sizes:
        shape = rng.randrange(3)
        if shape == 0 or size < 5:
            values.append(rng.randbytes(size))
        elif shape == 1:
            values.append(rng.choice(headers) + rng.randbytes(size - 5))
        else:
            value = bytearray(rng.choice(templates))
            for _ in range(rng.randint(1, 3)):
                value[rng.randrange(len(value))] = rng.randrange(256)
            values.append(bytes(value))
    return values


def raw_records(settings: Settings, name: str) -> list[tuple[int, bytes]]:
    """(offset, value) of every record now on `<prefix>.<name>`, partition by partition."""
    topic = settings.kafka.topic(name)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": "test-raw-reader",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        last = {
            p: high - 1
            for p, (_low, high) in end_offsets(consumer, topic, list(partitions)).items()
            if high > 0
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in last])
        records: list[tuple[int, bytes]] = []
        remaining = set(last)
        while remaining:
            for message in consumer.consume(100, timeout=0.2):
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset()
                if partition in remaining and offset <= last[partition]:
                    records.append((offset, message.value() or b""))
                if offset >= last[partition]:
                    remaining.discard(partition)
        return records
    finally:
        consumer.close()


def forwarded(settings: Settings) -> set[bytes]:
    """Every input record the processor forwarded to `.ordered`."""
    return {raw for _, frame in raw_records(settings, "ordered") for raw in framing.unpack(frame)}


def dead_letters(settings: Settings, codec: Codec) -> list[DeadLetter]:
    return [codec.decode(value) for _, value in raw_records(settings, "dlq")]  # type: ignore[misc]


def commands_caused_by(settings: Settings, codec: Codec, event_id: str) -> list[RecoveryCommand]:
    return [
        command
        for _, value in raw_records(settings, "commands")
        if (command := codec.decode(value)).caused_by == event_id  # type: ignore[attr-defined]
    ]


def acceptable(codec: Codec, value: bytes) -> bool:
    """Whether the processor must forward `value`: the codec (the reference decoder, not the
    processor's own fast one) reads it as a valid input, within the size limit."""
    try:
        codec.decode_input(value)
    except FaultstreamError:
        return False
    return len(value) <= MAX_RECORD_BYTES


def test_poison_records_never_crash_loop_the_processor(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    codec = Codec(topic_prefix=kafka_settings.kafka.topic_prefix)
    rng = random.Random(SEED)
    garbage = b"\x01" + rng.randbytes(999_999)  # magic byte 1: never a record
    checkpoint = codec.encode(
        _event("big-cp", "CHECKPOINT", task_id="big", checkpoint_seq=1,
               checkpoint_state=rng.randbytes(1_040_000))
    )  # fmt: skip
    largest = codec.encode(
        _event("max-cp", "CHECKPOINT", task_id="big", checkpoint_seq=2,
               checkpoint_state=rng.randbytes(MAX_CHECKPOINT_BYTES),
               attributes={"model": "m" * 4096})
    )  # fmt: skip
    too_large = codec.encode(  # valid, but past what the processor forwards
        _event("huge", "HEARTBEAT", attributes={"blob": "x" * MAX_RECORD_BYTES})
    )
    failure = _event(
        "after-poison", "FAILURE", task_id="after", task_type="bert", failure_type="TIMEOUT"
    )
    values = [garbage, checkpoint, largest, too_large, *fuzz(rng, codec), codec.encode(failure)]

    producer = ordered_producer(
        kafka_settings.kafka.bootstrap_servers, **{"message.max.bytes": MAX_MESSAGE_BYTES}
    )
    offsets: dict[int, bytes] = {}
    topic = kafka_settings.kafka.topic("events")
    for value in values:
        producer.produce(
            topic,
            value,
            key=KEY,
            on_delivery=lambda err, msg: err or offsets.__setitem__(msg.offset(), msg.value()),
        )
        producer.flush()  # one at a time: every one of them must be accepted
    assert [offsets[offset] for offset in sorted(offsets)] == values, "the broker refused some"

    with processor(kafka_settings, tmp_path) as proc:
        wait_until(
            lambda: commands_caused_by(kafka_settings, codec, failure.event_id),
            "the recovery command of the FAILURE behind the poison records",
        )
        bad = {offset for offset, value in offsets.items() if not acceptable(codec, value)}
        wait_until(
            lambda: len({d.source_offset for d in dead_letters(kafka_settings, codec)}) >= len(bad),
            "every dead letter",
        )
        assert proc.poll() is None, "the processor stopped"

    good = {value for value in offsets.values() if acceptable(codec, value)}
    assert {checkpoint, largest, codec.encode(failure)} <= good
    assert good == forwarded(kafka_settings) & set(offsets.values())

    letters = {d.source_offset: d for d in dead_letters(kafka_settings, codec)}
    assert set(letters) == bad
    for offset, letter in letters.items():
        value = offsets[offset]
        assert letter.source_topic == topic and letter.reason
        assert letter.raw == value[:DEAD_LETTER_RAW_BYTES]
        assert letter.raw_size == len(value)
        assert letter.raw_sha256 == hashlib.sha256(value).hexdigest()
    by_value = {offsets[offset]: letter for offset, letter in letters.items()}
    assert len(by_value[garbage].raw) == DEAD_LETTER_RAW_BYTES
    assert by_value[garbage].raw_size == 1_000_000
    assert str(MAX_RECORD_BYTES) in by_value[too_large].reason


def _max_message_bytes(admin: AdminClient, names: list[str]) -> dict[str, int]:
    """Each topic's limit, once the broker knows the topics (just after their creation it
    may answer UNKNOWN_TOPIC_OR_PART for a moment)."""
    deadline = time.monotonic() + 30
    while True:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
        try:
            return {
                resource.name: int(future.result()["max.message.bytes"].value)
                for resource, future in admin.describe_configs(resources).items()
            }
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_topics_create_raises_the_message_limit_of_topics_made_before_it(kafka_settings):
    kafka = kafka_settings.kafka
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    events, dlq = kafka.topic("events"), kafka.topic("dlq")
    higher = MAX_MESSAGE_BYTES * 2
    futures = admin.create_topics(
        [
            NewTopic(events, num_partitions=1, replication_factor=1),  # Kafka's default
            NewTopic(dlq, 1, 1, config={"max.message.bytes": str(higher)}),
        ]
    )
    for future in futures.values():
        future.result()
    assert _max_message_bytes(admin, [events])[events] < MAX_MESSAGE_BYTES

    create_topics(kafka)

    names = [kafka.topic(name) for name in ("events", "control", "ordered", "dlq")]
    limits = _max_message_bytes(admin, names)
    assert limits[events] == MAX_MESSAGE_BYTES
    assert limits[dlq] == higher  # never lowered
    assert all(limits[name] >= MAX_MESSAGE_BYTES for name in names)


def test_a_frame_the_decider_cannot_read_is_dead_lettered_whole_and_skipped(
    kafka_settings, tmp_path
):
    create_topics(kafka_settings.kafka)
    codec = Codec(topic_prefix=kafka_settings.kafka.topic_prefix)
    inside = _event("inside-bad-frame", "FAILURE", task_id="in", task_type="bert")
    # Not written by ingest: a foreign version byte, and a frame with one undecodable record.
    frames = [b"\x07not a frame", framing.pack([codec.encode(inside), b"\x00\x00\x00\x00\x01"])]
    producer = ordered_producer(kafka_settings.kafka.bootstrap_servers)
    ordered_topic = kafka_settings.kafka.topic("ordered")
    for frame in frames:
        producer.produce(ordered_topic, frame, key=b"fleet", partition=0)
    producer.flush()
    failure = _event("after-bad-frames", "FAILURE", task_id="after", task_type="bert")
    producer.produce(kafka_settings.kafka.topic("events"), codec.encode(failure), key=KEY)
    producer.flush()

    with processor(kafka_settings, tmp_path) as proc:
        wait_until(
            lambda: commands_caused_by(kafka_settings, codec, failure.event_id),
            "the recovery command of the FAILURE behind the bad frames",
        )
        assert proc.poll() is None, "the processor stopped"

    letters = [d for d in dead_letters(kafka_settings, codec) if d.source_topic == ordered_topic]
    assert sorted(d.source_offset for d in letters) == [0, 1]
    assert all(d.reason.startswith("decider: ") for d in letters)
    assert sorted(d.raw for d in letters) == sorted(frames)
    assert "record 1 of 2" in next(d.reason for d in letters if d.source_offset == 1)
    # All or nothing: the valid record of the rejected frame never reached the core.
    assert not commands_caused_by(kafka_settings, codec, inside.event_id)
