"""The worker SDK against real brokers: what arrives, where, and that nothing is lost."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, Message
from fastavro import parse_schema, schemaless_reader

from faultstream import broker
from faultstream.events.admin import create_topics
from faultstream.events.config import BrokerSettings, KafkaSettings, Settings
from faultstream.events.emitter import Emitter, KafkaTransport
from faultstream.events.spool import Spool

pytestmark = pytest.mark.kafka

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "worker_event.avsc"
HANG_GUARD_S = 120  # only stops a broken test from hanging; never a performance bound


def _consume(bootstrap: str, topic: str, count: int) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages.append(msg)
        # Anything beyond `count` would be a duplicate: give it a moment to show up.
        end = time.monotonic() + 2
        while time.monotonic() < end:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages.append(msg)
    finally:
        consumer.close()
    return messages


def _plain_avro(value: bytes) -> dict:
    assert value[0] == 0 and int.from_bytes(value[1:5], "big") == 1
    schema = parse_schema(json.loads(SCHEMA_FILE.read_text()))
    return schemaless_reader(io.BytesIO(value[5:]), schema)


def _event_ids(messages: list[Message]) -> Counter[str]:
    return Counter(_plain_avro(msg.value())["event_id"] for msg in messages)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_event_kind_arrives_keyed_by_worker_and_decodes_with_the_plain_avsc(
    kafka_settings: Settings,
) -> None:
    create_topics(kafka_settings.kafka)
    with Emitter(kafka_settings, worker_id="gpu-07", hardware_class="cuda") as emitter:
        sent = {
            emitter.heartbeat(): ("HEARTBEAT", {}),
            emitter.task_started("t1", "bert", attributes={"batch_size": "32"}): (
                "TASK_STARTED",
                {"attributes": {"batch_size": "32"}},
            ),
            emitter.checkpoint("t1", 4, b"\x00state"): (
                "CHECKPOINT",
                {"checkpoint_seq": 4, "checkpoint_state": b"\x00state"},
            ),
            emitter.success("t1", "bert", attempt=1): ("SUCCESS", {"attempt": 1}),
            emitter.failure("t2", "bert", failure_type="TIMEOUT", message="timed out"): (
                "FAILURE",
                {"failure_type": "TIMEOUT", "message": "timed out"},
            ),
        }
        assert emitter.flush(30) == 0
    messages = _consume(kafka_settings.kafka.bootstrap_servers, emitter.transport.topic, 5)
    assert len(messages) == 5
    for msg in messages:
        assert msg.key() == b"gpu-07"
        record = _plain_avro(msg.value())
        kind, fields = sent[record["event_id"]]
        assert record["kind"] == kind and record["worker_id"] == "gpu-07"
        assert record["hardware_class"] == "cuda"
        for name, value in fields.items():
            assert record[name] == value


def test_a_workers_events_land_on_the_partition_faust_expects(kafka_settings: Settings) -> None:
    create_topics(kafka_settings.kafka)
    workers = [f"worker-{n}" for n in range(12)]
    with Emitter(kafka_settings, worker_id="w", hardware_class="cpu") as emitter:
        for worker in workers:
            probe = Emitter(worker_id=worker, hardware_class="cpu", transport=emitter.transport)
            probe.heartbeat()
        assert emitter.flush(30) == 0
    messages = _consume(kafka_settings.kafka.bootstrap_servers, emitter.transport.topic, 12)
    assert len(messages) == 12
    partitions = list(range(kafka_settings.kafka.partitions))
    for msg in messages:
        assert msg.partition() == DefaultPartitioner()(msg.key(), partitions, partitions)


def test_events_emitted_while_the_broker_is_down_arrive_exactly_once_after_it_returns(
    tmp_path: Path, topic_prefix: str
) -> None:
    # A broker of our own, so this test may stop it; a small heap beside the shared one.
    own = BrokerSettings(
        port=_free_port(),
        controller_port=_free_port(),
        state_dir=str(tmp_path / "broker"),
        heap="256m",
    )
    status, _ = broker.start(own)
    try:
        kafka = KafkaSettings(bootstrap_servers=status.bootstrap, topic_prefix=topic_prefix)
        create_topics(kafka)
        settings = Settings(kafka=kafka, emitter={"spool_path": str(tmp_path / "spool.jsonl")})
        emitter = Emitter(settings, worker_id="w1", hardware_class="cuda", message_timeout_ms=3000)
        before = [emitter.heartbeat() for _ in range(50)]
        assert emitter.flush(30) == 0

        broker.stop(own)
        during = [emitter.failure(f"t{n}", "bert", message="boom") for n in range(50)]
        # Undeliverable after message.timeout.ms: moved to the spool, not raised, not lost.
        assert emitter.flush(30) == 0
        assert {e.event_id for e in Spool(tmp_path / "spool.jsonl").read()} == set(during)

        broker.start(own)
        assert emitter.resend_spool(timeout=60) == 0
        after = [emitter.heartbeat() for _ in range(50)]
        emitter.close(60)
        assert Spool(tmp_path / "spool.jsonl").read() == []

        counts = _event_ids(_consume(status.bootstrap, kafka.topic("events"), 150))
        assert set(counts) == set(before + during + after)
        assert set(counts.values()) == {1}
    finally:
        broker.stop(own)


SPOOLING_WORKER = """
import sys
from faultstream.events.config import Settings
from faultstream.events.emitter import Emitter

settings = Settings(
    kafka={"bootstrap_servers": sys.argv[1], "topic_prefix": sys.argv[2]},
    emitter={"spool_path": sys.argv[3]},
)
emitter = Emitter(settings, worker_id="w9", hardware_class="cpu", message_timeout_ms=1000)
for n in range(5):
    print(emitter.failure(f"t{n}", "bert", message="CUDA error"))
emitter.close(timeout=5)
"""


def test_spool_survives_the_process_and_the_next_emitter_delivers_it(
    kafka_settings: Settings,
) -> None:
    create_topics(kafka_settings.kafka)
    spool_path = kafka_settings.emitter.spool_path
    unreachable = f"127.0.0.1:{_free_port()}"
    done = subprocess.run(
        [sys.executable, "-c", SPOOLING_WORKER, unreachable, kafka_settings.kafka.topic_prefix,
         spool_path],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    emitted = done.stdout.split()
    assert len(emitted) == 5
    assert [e.event_id for e in Spool(spool_path).read()] == emitted

    with Emitter(kafka_settings, worker_id="w1", hardware_class="cpu") as emitter:
        assert emitter.flush(30) == 0
    assert Spool(spool_path).read() == []
    topic = kafka_settings.kafka.topic("events")
    counts = _event_ids(_consume(kafka_settings.kafka.bootstrap_servers, topic, 5))
    assert counts == Counter(emitted)


def test_a_spool_kept_through_three_starts_without_a_broker_arrives_exactly_once_after(
    kafka_settings: Settings,
) -> None:
    create_topics(kafka_settings.kafka)
    spool_path = kafka_settings.emitter.spool_path
    away = kafka_settings.model_copy(
        update={
            "kafka": kafka_settings.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{_free_port()}"}
            ),
            "emitter": kafka_settings.emitter.model_copy(update={"close_timeout_s": 0.5}),
        }
    )
    emitter = Emitter(away, worker_id="w1", hardware_class="cuda")
    emitted = [emitter.failure(f"t{n}", "bert", message="boom") for n in range(20)]
    emitter.close()
    for _ in range(2):  # two more starts: each re-sends the spool, which fails again
        Emitter(away, worker_id="w1", hardware_class="cuda").close()
    assert Counter(e.event_id for e in Spool(spool_path).read()) == Counter(emitted)

    with Emitter(kafka_settings, worker_id="w1", hardware_class="cuda") as emitter:
        assert emitter.flush(HANG_GUARD_S) == 0
    assert Spool(spool_path).read() == []
    topic = kafka_settings.kafka.topic("events")
    counts = _event_ids(_consume(kafka_settings.kafka.bootstrap_servers, topic, 20))
    assert counts == Counter(emitted)


def test_close_right_after_a_burst_drains_the_sender_queue_and_everything_arrives_once(
    kafka_settings: Settings,
) -> None:
    create_topics(kafka_settings.kafka)
    emitter = Emitter(kafka_settings, worker_id="w1", hardware_class="cuda")
    emitted = [emitter.failure(f"t{n}", "bert", message="oom") for n in range(2000)]
    emitter.close(60)  # no flush first: close itself must empty the queue
    assert emitter.transport.pending == 0
    assert Spool(kafka_settings.emitter.spool_path).read() == []
    topic = kafka_settings.kafka.topic("events")
    counts = _event_ids(_consume(kafka_settings.kafka.bootstrap_servers, topic, 2000))
    assert counts == Counter(emitted)


def test_a_workers_events_keep_their_order_when_the_caller_helps_drain_a_full_queue(
    kafka_settings: Settings,
) -> None:
    create_topics(kafka_settings.kafka)
    # A tiny queue bound, so the caller drains it itself again and again.
    transport = KafkaTransport(kafka_settings, max_queued=8)
    with Emitter(worker_id="w1", hardware_class="cuda", transport=transport) as emitter:
        emitted = [emitter.heartbeat() for _ in range(3000)]
        assert emitter.flush(60) == 0
    topic = kafka_settings.kafka.topic("events")
    messages = _consume(kafka_settings.kafka.bootstrap_servers, topic, 3000)
    assert [_plain_avro(msg.value())["event_id"] for msg in messages] == emitted


def test_unreachable_broker_the_sender_spools_every_event_and_a_send_after_close_too(
    kafka_settings: Settings,
) -> None:
    spool_path = kafka_settings.emitter.spool_path
    unreachable = kafka_settings.model_copy(
        update={
            "kafka": kafka_settings.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{_free_port()}"}
            )
        }
    )
    emitter = Emitter(unreachable, worker_id="w1", hardware_class="cuda", message_timeout_ms=1000)
    emitted = [emitter.failure(f"t{n}", "bert", message="boom") for n in range(500)]
    emitter.close(timeout=10)  # returns: an outage never blocks the worker for long
    late = emitter.heartbeat()  # after close: straight to the spool, not lost
    spooled = Counter(e.event_id for e in Spool(spool_path).read())
    assert spooled == Counter([*emitted, late])
