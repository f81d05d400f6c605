"""`faultstream circuits`: listing from Kafka and from a history, and operators' records
on the control topic (real broker; the --db case needs none)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from histories import History
from producers import ordered_producer

from faultstream.cli import main
from faultstream.events.admin import create_topics
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.models import CircuitStateChanged, Operator
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.tables import HistoryWriter

HANG_GUARD_S = 60  # only stops a broken test from hanging; never a performance bound
TOKEN = "op-s3cret-token"
NOW = time.time_ns() // 1_000_000


def transition(kind: str, cid: str, to_state: str, ts: int) -> CircuitStateChanged:
    return CircuitStateChanged(
        event_id=f"{kind}:{cid}:{to_state}:{ts}",
        ts=ts,
        circuit_kind=kind,
        circuit_id=cid,
        from_state="CLOSED",
        to_state=to_state,
        reason=f"went {to_state}",
        consecutive_failures=5,
        trips=1,
        reset_timeout_s=60.0,
        health=18.0,
        caused_by="e42",
    )


@pytest.fixture
def kafka_env(kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Topics with a few circuits on them; the CLI's settings point at them."""
    create_topics(kafka_settings.kafka)
    monkeypatch.setenv(
        "FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS", kafka_settings.kafka.bootstrap_servers
    )
    monkeypatch.setenv("FAULTSTREAM_KAFKA__TOPIC_PREFIX", kafka_settings.kafka.topic_prefix)
    monkeypatch.delenv("FAULTSTREAM_OPERATOR_TOKEN", raising=False)
    monkeypatch.delenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", raising=False)
    producer = ordered_producer(kafka_settings.kafka.bootstrap_servers)
    codec = Codec()
    for record in (
        transition("worker", "w1", "OPEN", NOW - 60_000),
        transition("worker", "w1", "HALF_OPEN", NOW - 1_000),
        transition("worker", "w2", "OPEN", NOW - 2_000),
        transition("task_type", "bert", "FORCED_OPEN", NOW - 3_000),
        transition("hardware_class", "cuda", "CLOSED", NOW - 4_000),
    ):
        producer.produce(kafka_settings.kafka.topic("circuits"), codec.encode(record), record.key)
    assert producer.flush(HANG_GUARD_S) == 0
    return kafka_settings


def control_records(settings: Settings, wanted: int) -> list[Operator]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.kafka.topic("control")])
    codec = Codec()
    got: list[Operator] = []
    deadline = time.monotonic() + (HANG_GUARD_S if wanted else 3)
    try:
        while (len(got) < wanted or not wanted) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                got.append(codec.decode(message.value()))  # type: ignore[arg-type]
    finally:
        consumer.close()
    return got


# --- reading ------------------------------------------------------------------------------


@pytest.mark.kafka
def test_list_prints_the_live_circuits_as_a_table_filtered_by_kind_and_state(
    kafka_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["circuits", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KIND", "ID", "STATE", "HEALTH", "SINCE", "DUE", "REASON"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["worker", "w1", "HALF_OPEN"],
        ["worker", "w2", "OPEN"],
        ["hardware_class", "cuda", "CLOSED"],
        ["task_type", "bert", "FORCED_OPEN"],
    ]
    assert main(["circuits", "list", "--kind", "worker", "--state", "open", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    body = json.loads(line)
    assert (body["kind"], body["id"], body["state"]) == ("worker", "w2", "OPEN")
    assert body["due_at"] == NOW - 2_000 + 60_000


@pytest.mark.kafka
def test_show_prints_one_circuit_or_says_it_never_changed(
    kafka_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["circuits", "show", "worker", "w2"]) == 0
    out = capsys.readouterr().out
    assert "worker:w2" in out and "OPEN since" in out and "went OPEN" in out and "e42" in out
    assert main(["circuits", "show", "worker", "w9"]) == 0
    assert "CLOSED  (no state change recorded)" in capsys.readouterr().out


def test_list_and_show_read_a_duckdb_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = History()
    for i in range(5):
        h.failure("w1", 1_000 + i, "WORKER_CRASH")
    db = tmp_path / "history.duckdb"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(db))
    pipeline.ingest_many(h.records)
    pipeline.close()
    assert main(["circuits", "list", "--db", str(db), "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["state"] == "OPEN" and json.loads(line)["id"] == "w1"
    assert main(["circuits", "show", "worker", "w1", "--db", str(db)]) == 0
    assert "OPEN since" in capsys.readouterr().out


def test_list_from_a_history_gives_the_health_the_core_counted_since_the_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # w1 opens, half-opens 60 s later (health 40) and passes one probe: the core's figures
    # at the TICK after it say 50, the half-open transition still says 40.
    h = History()
    for i in range(5):
        h.failure("w1", 1_000 + i, "WORKER_CRASH")
    h.success("w1", 70_000)
    h.tick(70_001)
    db = tmp_path / "history.duckdb"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(db))
    pipeline.ingest_many(h.records)
    pipeline.close()
    assert pipeline.core.circuits_view()["workers"]["w1"]["health_percentage"] == 50.0
    assert main(["circuits", "list", "--db", str(db), "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    shown = json.loads(line)
    assert (shown["id"], shown["state"], shown["health"]) == ("w1", "HALF_OPEN", 50.0)


def test_a_missing_history_is_said_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["circuits", "list", "--db", str(tmp_path / "none.duckdb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such DuckDB file" in err


# --- operators ----------------------------------------------------------------------------


@pytest.mark.kafka
def test_reset_and_force_open_write_operator_records_with_the_actor(
    kafka_env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", TOKEN)
    monkeypatch.setenv("FAULTSTREAM_OPERATOR_TOKEN", TOKEN)
    assert main(["circuits", "reset", "worker", "w1", "--actor", "alice"]) == 0
    assert main(["circuits", "force-open", "hardware_class", "cuda", "--actor", "bob"]) == 0
    records = control_records(kafka_env, wanted=2)
    # Control records have no key: across partitions, their order is the consumer's.
    assert sorted((r.action, r.circuit_kind, r.circuit_id, r.actor) for r in records) == [
        ("FORCE_OPEN", "hardware_class", "cuda", "cli:bob"),
        ("RESET", "worker", "w1", "cli:alice"),
    ]
    out = capsys.readouterr().out
    assert "RESET worker:w1 by cli:alice" in out and TOKEN not in out


@pytest.mark.kafka
def test_reset_all_resets_every_circuit_the_view_shows_not_closed(
    kafka_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", TOKEN)
    assert main(["circuits", "reset", "--all", "--actor", "carol", "--token", TOKEN]) == 0
    records = control_records(kafka_env, wanted=3)
    assert sorted((r.circuit_kind.value, r.circuit_id) for r in records) == [
        ("task_type", "bert"),
        ("worker", "w1"),
        ("worker", "w2"),
    ]
    assert {(r.action, r.actor) for r in records} == {("RESET", "cli:carol")}


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("configured", "given", "says"),
    [
        (None, TOKEN, "no operator token is configured"),
        (TOKEN, None, "operator token: missing or wrong"),
        (TOKEN, "wrong-token", "operator token: missing or wrong"),
    ],
)
def test_operations_are_refused_without_the_right_token_in_one_line(
    kafka_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    configured: str | None,
    given: str | None,
    says: str,
) -> None:
    if configured:
        monkeypatch.setenv("FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN", configured)
    token = ["--token", given] if given else []
    assert main(["circuits", "force-open", "worker", "w1", "--actor", "eve", *token]) == 2
    assert main(["circuits", "reset", "--all", "--actor", "eve", *token]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2 and all(says in line for line in lines)
    assert TOKEN not in captured.err + captured.out
    assert control_records(kafka_env, wanted=0) == []


def test_reset_needs_a_circuit_or_all_but_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["circuits", "reset", "--actor", "x"]) == 2
    assert "name the circuit (KIND ID)" in capsys.readouterr().err
    assert main(["circuits", "reset", "worker", "w1", "--all", "--actor", "x"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["circuits", "reset", "gpu", "w1", "--actor", "x"]) == 2
    assert "KIND: 'gpu'" in capsys.readouterr().err
