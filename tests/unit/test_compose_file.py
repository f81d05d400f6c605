"""docker-compose.yml runs the same broker as `faultstream broker` (Kafka in KRaft mode) and
the whole stack around it. Parsed only: no Docker engine runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, Any]:
    return _compose()["services"]


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


# --- the whole stack (parsed only: no Docker engine runs where these tests run) ----------

PYTHON_SERVICES = ("topics", "processor", "projector", "dashboard", "demo")


def _internal_bootstrap(services: dict[str, Any]) -> str:
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    internal = next(item for item in listeners.split(",") if item.startswith("INTERNAL://"))
    return internal.removeprefix("INTERNAL://")


def test_compose_runs_processor_projector_dashboard_and_demo_beside_kafka() -> None:
    services = _services()

    assert {"kafka", "topics", "processor", "projector", "dashboard", "demo"} <= set(services)
    assert "faultstream processor" in services["processor"]["command"]
    assert "faultstream projector" in services["projector"]["command"]
    assert "faultstream dashboard" in services["dashboard"]["command"]
    assert "faultstream demo" in services["demo"]["command"]


def test_compose_python_services_run_the_mounted_repository_on_python_slim() -> None:
    services = _services()

    for name in (*PYTHON_SERVICES, "install"):
        service = services[name]
        assert service["image"] == "python:3.11-slim", name
        assert any(volume.split(":")[:2] == [".", "/src"] for volume in service["volumes"]), name
    assert "pip install" in services["install"]["command"]
    for name in PYTHON_SERVICES:
        assert "/opt/venv/bin/faultstream" in services[name]["command"], name
        assert "venv:/opt/venv" in services[name]["volumes"], name


def test_compose_every_python_service_is_wired_to_the_broker_inside_the_network() -> None:
    services = _services()
    bootstrap = _internal_bootstrap(services)

    for name in PYTHON_SERVICES:
        env = services[name]["environment"]
        assert env["FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS"] == bootstrap, name
        assert env["FAULTSTREAM_KAFKA__TOPIC_PREFIX"] == "faultstream", name
    assert f"--bootstrap-servers {bootstrap}" in services["demo"]["command"]
    assert "--prefix faultstream" in services["demo"]["command"]


def test_compose_services_start_after_the_topics_exist() -> None:
    services = _services()

    assert services["topics"]["depends_on"]["install"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("processor", "projector"):
        condition = services[name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully", name
    assert services["demo"]["depends_on"]["processor"]["condition"] == "service_healthy"
    assert "healthcheck" in services["processor"]


def test_compose_dashboard_reads_the_projectors_read_models_from_a_shared_volume() -> None:
    services = _services()
    projector, dashboard = services["projector"], services["dashboard"]

    assert "--read-models /data/read-models" in projector["command"]
    assert "--read-models /data/read-models" in dashboard["command"]
    assert "--db /data/faultstream.duckdb" in projector["command"]
    assert "history:/data" in projector["volumes"]
    assert "history:/data" in dashboard["volumes"]
    assert "history" in _compose()["volumes"]
    assert "8080:8080" in dashboard["ports"]
    assert "--port 8080" in dashboard["command"]


def test_compose_demo_stack_orders_events_and_leaves_the_clock_to_the_fleet() -> None:
    services = _services()

    for name in PYTHON_SERVICES:
        assert services[name]["environment"]["FAULTSTREAM_KAFKA__PARTITIONS"] == "1", name
    tick = services["processor"]["environment"]["FAULTSTREAM_PROCESSOR__TICK_INTERVAL_S"]
    assert float(tick) >= 1e6


def _flag(command: str, name: str) -> str | None:
    words = command.split()
    return words[words.index(name) + 1] if name in words else None


def test_compose_servers_name_their_listen_address() -> None:
    """Servers listen on 127.0.0.1 unless told: what the host reaches through `ports:`
    must say 0.0.0.0 inside its container; the processor's web server stays private."""
    services = _services()

    assert _flag(services["projector"]["command"], "--host") == "0.0.0.0"
    assert "8765:8765" in services["projector"]["ports"]
    assert _flag(services["dashboard"]["command"], "--host") == "0.0.0.0"
    assert _flag(services["processor"]["command"], "--host") == "127.0.0.1"
    assert "ports" not in services["processor"]


def test_compose_dashboard_starts_once_the_projector_has_published() -> None:
    services = _services()

    assert services["dashboard"]["depends_on"]["projector"]["condition"] == "service_healthy"
    check = " ".join(services["projector"]["healthcheck"]["test"])
    assert "127.0.0.1:8765/api/circuit-breakers" in check
