"""`tune --apply` and `replay --from-kafka` against the real broker."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from histories import History

from faultstream.cli import main
from faultstream.events import frames as framing
from faultstream.events.admin import create_topics
from faultstream.events.codec import Codec
from faultstream.events.config import CoreSettings, Settings
from faultstream.events.models import (
    CircuitFigures,
    CircuitStateChanged,
    ConfigChanged,
    derived_to_json,
)
from faultstream.processors.offline.replay import replay
from faultstream.processors.offline.sources import KafkaSource

pytestmark = pytest.mark.kafka

HANG_GUARD_S = 60  # only stops a broken test from hanging; never a performance bound


def flaky_history() -> list:
    """w1 crashes every 3 s; w2 keeps succeeding."""
    h = History()
    for i in range(12):
        h.failure("w1", 1_000 + 3_000 * i, "WORKER_CRASH")
        h.success("w2", 1_500 + 3_000 * i)
    h.tick(60_000)
    return h.records


@pytest.fixture
def kafka_env(kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The CLI's settings come from the environment: point them at this test's topics."""
    create_topics(kafka_settings.kafka)
    monkeypatch.setenv(
        "FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS", kafka_settings.kafka.bootstrap_servers
    )
    monkeypatch.setenv("FAULTSTREAM_KAFKA__TOPIC_PREFIX", kafka_settings.kafka.topic_prefix)
    return kafka_settings


def produce_derived(producer: Producer, codec: Codec, kafka, derived) -> None:
    """As the processor writes them: circuits (compacted) and figures keyed by kind:id,
    commands by task."""
    for record in derived:
        if isinstance(record, CircuitStateChanged):
            producer.produce(kafka.topic("circuits"), codec.encode(record), record.key)
        elif isinstance(record, CircuitFigures):
            producer.produce(kafka.topic("figures"), codec.encode(record), record.key)
        else:
            producer.produce(kafka.topic("commands"), codec.encode(record), record.task_id)


def consume_one(settings: Settings, logical: str) -> bytes:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.kafka.topic(logical)])
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                return message.value()
    finally:
        consumer.close()
    raise AssertionError(f"nothing arrived on {settings.kafka.topic(logical)}")


def test_apply_writes_the_winner_as_config_changed_by_tune_on_the_control_topic(
    kafka_env: Settings, tmp_path
) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in flaky_history()))
    code = main(
        [
            "tune",
            "--input",
            str(path),
            "--grid",
            "worker.failure_threshold=2,50",
            "--min-events",
            "1",
            "--processes",
            "1",
            "--apply",
        ]
    )
    assert code == 0
    codec = Codec(topic_prefix=kafka_env.kafka.topic_prefix)
    record = codec.decode(consume_one(kafka_env, "control"))
    assert isinstance(record, ConfigChanged)
    assert record.actor == "tune"
    assert record.config == {"circuits": {"worker": {"failure_threshold": 2}}}
    # Replaying a history that holds the record adopts the winner from there on.
    adopted = CoreSettings().merged(record.config)
    assert adopted.circuits.worker.failure_threshold == 2


def produce_frames(producer: Producer, codec: Codec, kafka, records: list) -> None:
    """The records as the processor writes them: framed decisions, 7 to a frame."""
    raws = [codec.encode(record) for record in records]
    for start in range(0, len(raws), 7):
        producer.produce(kafka.topic("ordered"), framing.pack(raws[start : start + 7]), b"fleet")


def test_replay_from_kafka_decisions_equals_replay_of_the_same_records(
    kafka_env: Settings,
) -> None:
    records = flaky_history()
    kafka = kafka_env.kafka
    codec = Codec(topic_prefix=kafka.topic_prefix)
    derived = list(replay(records, CoreSettings()))
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "acks": "all"})
    produce_frames(producer, codec, kafka, records)
    produce_derived(producer, codec, kafka, derived)
    assert producer.flush(HANG_GUARD_S) == 0

    source = KafkaSource(kafka)
    from_kafka = [r.model_dump() for r in source.inputs()]
    assert from_kafka == [r.model_dump() for r in records]
    # What happened, for --diff: the decisions (the figures are not read back).
    happened = sorted(derived_to_json(r) for r in source.derived())
    decided = [r for r in derived if not isinstance(r, CircuitFigures)]
    assert happened == sorted(derived_to_json(r) for r in decided)


def test_replay_command_diff_from_kafka_shows_what_other_settings_change(
    kafka_env: Settings, tmp_path, capsys
) -> None:
    records = flaky_history()
    kafka = kafka_env.kafka
    codec = Codec(topic_prefix=kafka.topic_prefix)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "acks": "all"})
    produce_frames(producer, codec, kafka, records)
    produce_derived(producer, codec, kafka, replay(records, CoreSettings()))
    assert producer.flush(HANG_GUARD_S) == 0
    config = tmp_path / "eager.toml"
    config.write_text("[circuits.worker]\nfailure_threshold = 2\n")
    assert main(["replay", "--from-kafka", "--config", str(config), "--diff"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("moved") and "worker:w1 OPEN" in line for line in out), out
    assert out[-1].startswith("summary: ")
