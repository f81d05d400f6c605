"""docker-compose.yml runs the same broker as `faultstream broker`: Kafka in KRaft mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def test_compose_broker_is_apache_kafka_in_kraft_mode_on_port_9092() -> None:
    kafka = _services()["kafka"]
    env = {key: str(value) for key, value in kafka["environment"].items()}

    assert kafka["image"].startswith("apache/kafka:3.9")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert not any("ZOOKEEPER" in key for key in env)
    assert "9092:9092" in kafka["ports"]
    assert "127.0.0.1:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_broker_has_single_node_replication_factors() -> None:
    env = _services()["kafka"]["environment"]

    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == 1


def test_compose_topics_service_creates_topics_once_the_broker_is_healthy() -> None:
    services = _services()
    topics = services["topics"]

    assert "faultstream topics create" in topics["command"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in services["kafka"]
    bootstrap = topics["environment"]["FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS"]
    internal = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{bootstrap}" in internal
