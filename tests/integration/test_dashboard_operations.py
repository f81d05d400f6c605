"""Dashboard operations against the real broker: refused without the operator token,
written to `<prefix>.control` with it, carrying the actor."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from streamlit.testing.v1 import AppTest

import faultstream.dashboard
from faultstream.cli.demo import run_demo
from faultstream.dashboard.data import DB_ENV, READ_MODELS_ENV
from faultstream.dashboard.operations import OperationRefusedError, check_operator
from faultstream.events.admin import create_topics
from faultstream.events.codec import Codec
from faultstream.events.config import Settings, load_settings
from faultstream.events.models import ConfigChanged, Operator

pytestmark = pytest.mark.kafka

APP = str(Path(faultstream.dashboard.__file__).parent / "app.py")
# Only stops a broken test from hanging; never a performance bound. A fresh clone compiles
# the tuner's numba kernel on the first tuning run (about 2 minutes).
HANG_GUARD_S = 300
TOKEN = "let-me-in"


@pytest.fixture
def dashboard_env(
    kafka_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A small demo history, and the app's settings pointing at this test's topics."""
    create_topics(kafka_settings.kafka)
    db = tmp_path / "demo.duckdb"
    run_demo(load_settings(), db, workers=20, duration_ms=5 * 60_000)
    monkeypatch.setenv(DB_ENV, str(db))
    monkeypatch.delenv(READ_MODELS_ENV, raising=False)
    monkeypatch.setenv(
        "FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS", kafka_settings.kafka.bootstrap_servers
    )
    monkeypatch.setenv("FAULTSTREAM_KAFKA__TOPIC_PREFIX", kafka_settings.kafka.topic_prefix)
    return kafka_settings


def control_records(settings: Settings) -> list:
    """Everything on the control topic so far, decoded."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    codec = Codec(settings.kafka.schema_registry_url, topic_prefix=settings.kafka.topic_prefix)
    topic = settings.kafka.topic("control")
    partitions = len(consumer.list_topics(topic, timeout=HANG_GUARD_S).topics[topic].partitions)
    records, finished = [], set()
    try:
        consumer.subscribe([topic])
        while len(finished) < partitions:
            msg = consumer.poll(HANG_GUARD_S)
            assert msg is not None, f"no end of {topic} in sight"
            if msg.error():
                finished.add(msg.partition())
                continue
            records.append(codec.decode(msg.value()))
    finally:
        consumer.close()
    return records


def operations_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=HANG_GUARD_S)
    at.run()
    at.switch_page("screens/operate.py").run()
    assert not at.exception, at.exception
    return at


def send(at: AppTest, circuit_id: str, actor: str, token: str, action: str = "RESET") -> None:
    at.text_input[0].set_value(circuit_id)
    at.radio[0].set_value(action)
    at.text_input[1].set_value(actor)
    at.text_input[2].set_value(token)
    at.button[0].click().run()
    assert not at.exception, at.exception


def test_force_open_without_a_configured_token_writes_nothing(
    dashboard_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", raising=False)
    at = operations_page()
    at.text_input[0].set_value("cuda")  # the actor and token inputs are disabled
    at.radio[0].set_value("FORCE_OPEN")
    at.button[0].click().run()
    assert any("no operator token is configured" in e.value for e in at.error)
    assert control_records(dashboard_env) == []


def test_force_open_with_a_wrong_token_writes_nothing(
    dashboard_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", TOKEN)
    at = operations_page()
    send(at, "cuda", "mallory", "guess", action="FORCE_OPEN")
    assert any("operator token: missing or wrong" in e.value for e in at.error)
    assert control_records(dashboard_env) == []


def test_force_open_with_the_token_writes_an_operator_record_with_its_actor(
    dashboard_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", TOKEN)
    at = operations_page()
    at.selectbox[0].set_value("hardware_class")
    send(at, "cuda", "alice", TOKEN, action="FORCE_OPEN")
    assert at.success, [e.value for e in at.error]
    (record,) = control_records(dashboard_env)
    assert isinstance(record, Operator)
    assert (record.action, record.circuit_kind, record.circuit_id) == (
        "FORCE_OPEN",
        "hardware_class",
        "cuda",
    )
    assert record.actor == "dashboard:alice"


def test_applying_a_tuning_candidate_writes_config_changed_with_its_actor(
    dashboard_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", TOKEN)
    at = AppTest.from_file(APP, default_timeout=HANG_GUARD_S)
    at.run()
    at.switch_page("screens/tuning.py").run()
    at.text_area[0].set_value("worker.failure_threshold=3,8")
    at.button[0].click().run()
    at.selectbox[0].set_value("worker.failure_threshold=8")
    at.text_input[0].set_value("bob")
    at.text_input[1].set_value(TOKEN)
    at.button[1].click().run()
    assert not at.exception, at.exception
    (record,) = control_records(dashboard_env)
    assert isinstance(record, ConfigChanged)
    assert record.config == {"circuits": {"worker": {"failure_threshold": 8}}}
    assert record.actor == "dashboard:bob"


def test_an_action_without_an_actor_is_refused() -> None:
    with pytest.raises(OperationRefusedError, match="actor"):
        check_operator(TOKEN, TOKEN, "  ")
