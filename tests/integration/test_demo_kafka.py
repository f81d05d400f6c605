"""The end-to-end test: the demo's scenario through the real broker, `faultstream processor`
and `faultstream projector` (started and stopped by the demo) tells the same story as the
embedded run of the same seed — as both DuckDB histories show it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from confluent_kafka import Producer

from faultstream.cli.demo import incident_reports, run_demo
from faultstream.demo_kafka import (
    Service,
    free_port,
    prepare_topics,
    run_kafka_demo,
    service_env,
)
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.models import Tick, WorkerEvent
from faultstream.processors.simulator.kafka import LockstepBridge, LockstepError

SEED = 7
WORKERS = 12
DURATION_MS = 15 * 60_000


def _openings(db: Path) -> dict[str, int]:
    """circuit `kind:id` → how many times it went OPEN."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT circuit_kind || ':' || circuit_id, count(*) FROM circuit_transitions "
            "WHERE to_state = 'OPEN' GROUP BY 1"
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def _strategies(db: Path, incidents: list) -> dict[str, set[str]]:
    return {report.name: set(report.strategies) for report in incident_reports(db, incidents)}


@pytest.mark.kafka
def test_scenario_through_kafka_opens_the_same_circuits_with_the_same_strategies_as_embedded(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    embedded_db, kafka_db = tmp_path / "embedded.duckdb", tmp_path / "kafka.duckdb"
    embedded = run_demo(
        kafka_settings, embedded_db, seed=SEED, workers=WORKERS, duration_ms=DURATION_MS
    )

    through_kafka = run_kafka_demo(
        kafka_settings,
        kafka_db,
        prefix=kafka_settings.kafka.topic_prefix,
        read_models_dir=tmp_path / "read-models",
        seed=SEED,
        workers=WORKERS,
        duration_ms=DURATION_MS,
    )

    assert through_kafka.started == ["processor", "projector"]
    embedded_openings = _openings(embedded_db)
    assert embedded_openings, "the scenario should open circuits at all"
    assert _openings(kafka_db) == embedded_openings
    embedded_strategies = _strategies(embedded_db, embedded.simulator.incidents)
    assert all(embedded_strategies.values()), "every incident should draw recovery commands"
    assert _strategies(kafka_db, through_kafka.simulator.incidents) == embedded_strategies


@pytest.mark.kafka
def test_record_the_fleet_did_not_send_stops_the_lockstep_with_an_error_naming_it(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings.model_copy(
        update={"kafka": kafka_settings.kafka.model_copy(update={"partitions": 1})}
    )
    prepare_topics(settings)
    codec = Codec(topic_prefix=settings.kafka.topic_prefix)
    intruder = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    intruder.produce(
        settings.kafka.topic("control"), codec.encode(Tick(event_id="wall-clock-tick", ts=1))
    )
    intruder.flush(10)
    processor = Service(
        "processor",
        ["processor", "--web-port", str(free_port())],
        service_env(settings, tmp_path),
        tmp_path,
    )
    try:
        bridge = LockstepBridge(
            settings, spool_path=tmp_path / "spool.jsonl", alive=processor.check
        )
        try:
            bridge.send(
                WorkerEvent(
                    event_id="fleet-1",
                    kind="HEARTBEAT",
                    ts=10,
                    worker_id="w1",
                    hardware_class="cpu",
                )
            )
            # Wherever the intruder lands among the fleet's records, the wait names it.
            with pytest.raises(LockstepError, match="ordered holds wall-clock-tick where"):
                bridge.send_control(Tick(event_id="fleet-tick-1", ts=20))
                bridge.finish()
        finally:
            bridge.close()
    finally:
        processor.stop()
