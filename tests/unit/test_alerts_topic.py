"""Alerts from the core to the history: the `<prefix>.alerts` topic, where the decide stage
routes them (keyed by alert_id), their Avro round trip, and their landing in the `alerts`
table through the writer the projector and the embedded pipeline share; the firing ones
read back from a DuckDB file and from read models; alerts in `replay --diff`.

The projector reading the topic on a real broker is in tests/integration/test_alerts_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from histories import History as Inputs

from faultstream.events.admin import ALERTS, LOGICAL_TOPICS, topic_specs
from faultstream.events.codec import Codec
from faultstream.events.config import KafkaSettings, Settings, load_settings
from faultstream.events.models import (
    Alert,
    CircuitFigures,
    CircuitStateChanged,
    DerivedRecord,
    RecoveryCommand,
)
from faultstream.processors.core import FleetCore
from faultstream.processors.offline.diff import diff_derived
from faultstream.processors.offline.replay import replay_diff
from faultstream.processors.offline.sources import DuckDBSource
from faultstream.processors.stream import metrics
from faultstream.processors.stream.app import Topics
from faultstream.processors.stream.decide import destination
from faultstream.projections.alerts import all_alerts, firing_alerts
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.queries import History
from faultstream.projections.read_models import ReadModelPublisher
from faultstream.projections.tables import HistoryWriter


def capacity_outage() -> Inputs:
    """Two of three cuda workers' circuits open (capacity below 50%, fleet health below
    70%), the fleet's health recovers as time passes, and both stay open past 900 s."""
    h = Inputs()
    for worker in ("w1", "w2", "w3"):
        h.heartbeat(worker, ts=1_000)
    t = 2_000
    for worker in ("w1", "w2"):
        for _ in range(5):
            h.failure(worker, ts=t, failure_type="WORKER_CRASH")
            t += 10
    h.tick(10_000)
    h.tick(1_000_000)
    return h


def published(records: list) -> list[Alert]:
    core = FleetCore(load_settings().core)
    return [out for record in records for out in core.process(record) if isinstance(out, Alert)]


def alert(alert_id: str, ts: int, state: str = "FIRING") -> Alert:
    return Alert(alert_id=alert_id, ts=ts, rule="clock_skew", subject_kind="worker",
                 subject_id="w1", severity="warning", state=state,
                 message="w1's clock is 3 min ahead", caused_by=f"e{ts}")  # fmt: skip


def test_the_alerts_topic_is_created_with_the_retention_of_commands() -> None:
    assert ALERTS in LOGICAL_TOPICS
    kafka = KafkaSettings(topic_prefix="fs", retention_days=3)
    specs = {s.logical: s for s in topic_specs(kafka)}
    spec = specs[ALERTS]
    assert (spec.name, spec.partitions) == ("fs.alerts", kafka.partitions)
    # Deleted past the retention, never compacted: a RESOLVED must not erase its FIRING.
    assert spec.config == specs["commands"].config
    assert spec.config["cleanup.policy"] == "delete"
    assert spec.config["retention.ms"] == str(3 * 86_400_000)
    assert Topics.of(Settings(kafka=kafka)).alerts == "fs.alerts"


def test_the_decide_stage_routes_each_derived_record_to_its_topic_and_key() -> None:
    topics = Topics.of(Settings(kafka=KafkaSettings(topic_prefix="fs")))
    outputs = capacity_outage().run()
    routed = {type(o): destination(o, topics) for o in outputs}
    assert set(routed) == {CircuitStateChanged, RecoveryCommand, CircuitFigures, Alert}
    for output in outputs:
        topic, key = destination(output, topics)  # type: ignore[misc]
        if isinstance(output, Alert):
            # By alert_id: its FIRING and RESOLVED share a partition, in that order.
            assert (topic, key) == ("fs.alerts", output.alert_id)
        else:
            assert topic != "fs.alerts"
    assert destination(object(), topics) is None


def test_sent_alerts_are_counted_under_their_type() -> None:
    before = metrics.RECORDS_OUT.labels("alert")._value.get()
    metrics.count_outputs([alert("a", 1), alert("a", 2, "RESOLVED")])
    assert metrics.RECORDS_OUT.labels("alert")._value.get() - before == 2


def test_an_alert_round_trips_through_avro_with_schema_id_8() -> None:
    codec = Codec()
    for each in (alert("a", 1), alert("a", 2, "RESOLVED")):
        data = codec.encode(each)
        assert data[:5] == b"\x00\x00\x00\x00\x08"
        assert codec.decode(data) == each
        assert codec.decode_trusted(data) == ("alert", each.model_dump(mode="json"))


def test_the_embedded_pipeline_lands_every_alert_the_core_publishes(tmp_path: Path) -> None:
    records = capacity_outage().records
    expected = published(records)
    states = {(a.rule, str(a.state)) for a in expected}
    assert {("class_capacity_below", "FIRING"), ("fleet_health_below", "RESOLVED")} <= states
    path = tmp_path / "h.duckdb"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(path))
    pipeline.ingest_many(records)
    pipeline.close()
    with History.from_db(path) as history:
        landed = all_alerts(history)
        firing = firing_alerts(history)
    assert sorted(landed, key=lambda r: (r["ts"], r["alert_id"], r["state"])) == landed
    assert sorted(map(tuple, (r.values() for r in landed))) == sorted(
        tuple(a.model_dump(mode="json").values()) for a in expected
    )
    # Firing: a FIRING row and no RESOLVED one; newest first.
    resolved = {a.alert_id for a in expected if a.state == "RESOLVED"}
    still = [a for a in reversed(expected) if a.alert_id not in resolved]
    assert [r["alert_id"] for r in firing] == [a.alert_id for a in still]
    assert "fleet_health_below" not in {r["rule"] for r in firing}


def test_a_repeated_alert_lands_once_beside_the_resolved_record_of_its_id(
    tmp_path: Path,
) -> None:
    """A processor re-sending after its restart repeats records; an alert's FIRING and
    RESOLVED share the alert_id, even the ts, and still are two records."""
    codec = Codec()
    fired, resolved = alert("a", 5), alert("a", 5, "RESOLVED")
    with HistoryWriter(tmp_path / "h.duckdb") as writer:
        writer.append_derived([fired])
        writer.flush()
        # The repeat comes as the projector decodes it, beside a record new to the table.
        writer.append_derived([codec.decode_trusted(codec.encode(fired))[1], resolved, fired])
        writer.flush()
        rows = writer.con.execute("SELECT alert_id, state FROM alerts ORDER BY state").fetchall()
    assert rows == [("a", "FIRING"), ("a", "RESOLVED")]


def test_read_models_serve_the_firing_alerts(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path / "h.duckdb")
    writer.append_derived([alert("a", 1), alert("b", 2), alert("a", 3, "RESOLVED")])
    writer.flush()
    with ReadModelPublisher(writer.con, tmp_path / "rm") as publisher:
        publisher.publish()
    writer.close()
    with History.from_read_models(tmp_path / "rm") as history:
        assert [r["alert_id"] for r in firing_alerts(history)] == ["b"]
        assert [(r["alert_id"], r["state"]) for r in all_alerts(history)] == [
            ("a", "FIRING"), ("b", "FIRING"), ("a", "RESOLVED")]  # fmt: skip


def test_a_history_older_than_alerts_has_none(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    HistoryWriter(path).close()
    con = duckdb.connect(str(path))
    con.execute("DROP TABLE alerts")
    con.close()
    with History.from_db(path) as history:
        assert all_alerts(history) == firing_alerts(history) == []


def test_alerts_are_decisions_in_the_diff(tmp_path: Path) -> None:
    """The same settings change nothing, alerts included (read back from the history);
    a lower fleet_health_below removes that rule's alerts."""
    records = capacity_outage().records
    path = tmp_path / "h.duckdb"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(path))
    pipeline.ingest_many(records)
    pipeline.close()
    actual = list(DuckDBSource(str(path)).derived() or [])
    assert [a for a in actual if isinstance(a, Alert)] == published(records)

    core = load_settings().core
    same = replay_diff(DuckDBSource(str(path)), str(tmp_path / "same.txt"), core, engine="core")
    assert same.changes == []

    calmer = core.merged({"alerts": {"fleet_health_below": 10}})
    report = replay_diff(DuckDBSource(str(path)), str(tmp_path / "d.txt"), calmer, engine="core")
    gone = {(c.kind, c.key) for c in report.changes}
    assert gone == {
        ("removed", ("alert", "fleet:fleet", "fleet_health_below FIRING")),
        ("removed", ("alert", "fleet:fleet", "fleet_health_below RESOLVED")),
    }
    assert "removed alert fleet:fleet fleet_health_below FIRING at" in (
        (tmp_path / "d.txt").read_text()
    )


@pytest.mark.parametrize("state", ["FIRING", "RESOLVED"])
def test_an_alert_moved_in_time_is_one_change(state: str) -> None:
    actual: list[DerivedRecord] = [alert("a", 1_000, state)]
    other: list[DerivedRecord] = [alert("b", 2_000, state)]  # its id is of its own input
    (change,) = diff_derived(actual, other).changes
    assert (change.kind, change.actual_ts, change.other_ts) == ("moved", 1_000, 2_000)
    assert change.describe().startswith(f"moved   alert worker:w1 clock_skew {state} at")


def test_the_alerts_cli_prints_the_alerts_of_a_history_oldest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from faultstream.cli import main

    path = tmp_path / "h.duckdb"
    with HistoryWriter(path) as writer:
        writer.append_derived([alert("b", 7), alert("a", 3), alert("a", 9, "RESOLVED")])
    assert main(["alerts", "--db", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        '{"type":"alert",' + a.model_dump_json()[1:]
        for a in (alert("a", 3), alert("b", 7), alert("a", 9, "RESOLVED"))
    ]
    # A history is printed, never posted: the webhook reads the topic.
    assert main(["alerts", "--db", str(path), "--webhook", "http://127.0.0.1:9/x"]) == 2
    assert "--webhook reads the alerts topic" in capsys.readouterr().err
