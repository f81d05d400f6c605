"""Topic creation on the shared broker, and the lifecycle of a second, local broker."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from faultstream.cli import main
from faultstream.events.admin import create_topics, describe_topics, topic_names
from faultstream.events.config import KafkaSettings, Settings

pytestmark = pytest.mark.kafka

EXPECTED = {
    # logical name: (partitions, cleanup.policy)
    "events": (6, "delete"),
    "control": (6, "delete"),
    "circuits": (6, "compact"),
    "commands": (6, "delete"),
    "dlq": (6, "delete"),
    "decisions": (1, "delete"),
}


def _topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    futures = admin.describe_configs(resources)
    return {
        resource.name: {key: entry.value for key, entry in future.result().items()}
        for resource, future in futures.items()
    }


def test_topics_create_makes_every_contract_topic_with_its_partitions_and_policy(
    kafka_settings: Settings,
) -> None:
    kafka = kafka_settings.kafka
    names = topic_names(kafka)
    assert names == {logical: f"{kafka.topic_prefix}.{logical}" for logical in EXPECTED}

    created = create_topics(kafka)

    assert sorted(created) == sorted(names.values())
    partitions = describe_topics(kafka)
    configs = _topic_configs(kafka.bootstrap_servers, list(names.values()))
    for logical, (count, policy) in EXPECTED.items():
        name = names[logical]
        assert partitions[name] == count, name
        assert configs[name]["cleanup.policy"] == policy, name
    retention_ms = str(round(kafka.retention_days * 86_400_000))
    assert configs[names["events"]]["retention.ms"] == retention_ms


def test_topics_create_twice_reports_every_topic_as_already_existing(
    kafka_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    kafka = kafka_settings.kafka
    argv = ["topics", "create", "--bootstrap-servers", kafka.bootstrap_servers]
    argv += ["--prefix", kafka.topic_prefix]

    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(argv) == 0
    second = capsys.readouterr().out.splitlines()

    assert len(first) == len(second) == len(EXPECTED)
    assert all(": created (" in line for line in first)
    assert all(": already exists (" in line for line in second)
    assert create_topics(kafka) == []


def test_topics_create_without_a_broker_fails_with_one_clear_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    free = _free_port()
    argv = ["topics", "create", "--bootstrap-servers", f"127.0.0.1:{free}"]

    assert main(argv) == 2

    err = capsys.readouterr().err.strip()
    assert err.startswith("faultstream topics: no Kafka broker answers at 127.0.0.1:")
    assert len(err.splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _roundtrip_one_record(bootstrap: str, topic: str) -> bytes | None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"worker-1", value=b"hello")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 60  # a bound on waiting, not an assertion on speed
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                return message.value()
        return None
    finally:
        consumer.close()


def test_second_broker_starts_serves_a_record_and_stops(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A small heap: this broker runs beside the shared one on a small machine.
    monkeypatch.setenv("FAULTSTREAM_BROKER__HEAP", "256m")
    port, controller_port = _free_port(), _free_port()
    flags = ["--port", str(port), "--controller-port", str(controller_port)]
    flags += ["--state-dir", str(tmp_path / "broker")]
    bootstrap = f"127.0.0.1:{port}"
    try:
        assert main(["broker", "start", *flags]) == 0
        assert f"broker started at {bootstrap}" in capsys.readouterr().out

        assert main(["broker", "status", *flags]) == 0
        assert f"broker running at {bootstrap}" in capsys.readouterr().out

        assert main(["broker", "start", *flags]) == 0
        assert "already running" in capsys.readouterr().out

        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix="lifecycle")
        assert len(create_topics(kafka)) == len(EXPECTED)
        assert _roundtrip_one_record(bootstrap, topic_names(kafka)["events"]) == b"hello"
    finally:
        assert main(["broker", "stop", *flags]) == 0

    assert "broker stopped" in capsys.readouterr().out
    assert main(["broker", "status", *flags]) == 1
    assert "not running" in capsys.readouterr().out
    assert not (tmp_path / "broker" / "broker.pid").exists()
    assert (tmp_path / "broker" / "broker.log").stat().st_size > 0
