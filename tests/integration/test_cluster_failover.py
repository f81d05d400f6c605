"""Failover drill on a 3-node cluster of the project's own (`faultstream.cluster`).

A fleet emits through the SDK's transport at a steady rate while the processor and the
projector run; the broker that leads the `.ordered` partition (and two of the six events
partitions) is SIGKILLed, the fleet goes on, and the node is restarted later. Nothing the
fleet sent may be lost or land twice in DuckDB, and the commands on the topic must be
those FleetCore derives from the decision order. The time from the kill to the first
command for an event sent after it is printed (BENCHMARKS.md, "Broker failover").
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource
from test_broker_and_topics import free_run_of_ports
from test_processor import (
    FAULTSTREAM,
    derived_id,
    processor,
    published,
    read_topic,
    replay,
    wait_until,
)
from test_projector import published_rows

from faultstream import cluster
from faultstream.events.admin import create_topics, end_offsets
from faultstream.events.codec import Codec
from faultstream.events.config import BrokerSettings, Settings, load_settings
from faultstream.events.models import RecoveryCommand, WorkerEvent, derived_to_json
from faultstream.events.transport import KafkaTransport

pytestmark = pytest.mark.kafka

NODES = 3
WORKERS = [f"gpu-{i:02d}" for i in range(12)]
PACE_S = 0.1  # a step of the whole fleet: 120 events/s
STEADY_S = 4.0  # the fleet runs this long before the kill, and again after the restart
DOWN_S = 15.0  # the killed node stays down this long (past Kafka's 9 s session timeout)
WAIT_S = 120.0  # bounds on waiting for states, never assertions on speed


class Fleet:
    """Workers running 0.6-s tasks (a third of them failing: a command each) and
    heartbeating in between, all through one SDK transport (acks=all, idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self.transport = KafkaTransport(settings)
        self.sent: list[WorkerEvent] = []
        self.sent_at: dict[str, float] = {}  # event_id -> wall clock of the send
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Fleet:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop emitting; how many events are neither delivered nor spooled."""
        self._stop.set()
        self._thread.join()
        return self.transport.flush(60)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.transport.close(10)

    def _emit(self, worker: str, kind: str, **fields: object) -> None:
        now = time.time()
        event = WorkerEvent(
            event_id=f"{worker}-{len(self.sent)}",
            kind=kind,
            ts=int(now * 1000),
            worker_id=worker,
            hardware_class="cuda",
            **fields,
        )
        self.sent_at[event.event_id] = now
        self.sent.append(event)
        self.transport.send(event)

    def _run(self) -> None:
        step = 0
        while not self._stop.is_set():
            cycle, phase = divmod(step, 6)
            for n, worker in enumerate(WORKERS):
                task = {"task_id": f"{worker}-task-{cycle}", "task_type": "bert"}
                if phase == 0:
                    self._emit(worker, "TASK_STARTED", **task)
                elif phase == 5 and (cycle + n) % 3 == 0:
                    self._emit(worker, "FAILURE", failure_type="TIMEOUT", **task)
                elif phase == 5:
                    self._emit(worker, "SUCCESS", **task)
                else:
                    self._emit(worker, "HEARTBEAT")
            step += 1
            self._stop.wait(PACE_S)


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[tuple[BrokerSettings, str]]:
    base = free_run_of_ports(2 * NODES)  # client and controller ports
    own = BrokerSettings(port=base, controller_port=base + 1, state_dir=str(tmp_path / "cluster"))
    try:
        status, started = cluster.start(own, NODES)
        assert started == [1, 2, 3]
        yield own, status.bootstrap
    finally:
        cluster.stop(own)
        assert not cluster.status(own).running  # type: ignore[union-attr]


def _partitions(bootstrap: str, topic: str) -> dict:
    """Partition -> its metadata (leader, replicas, in-sync replicas), once every partition
    has a leader (a topic created a moment ago may not be known to every broker yet)."""
    # log_level 0: a node down is the point here, not news for stderr.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + WAIT_S
    while True:
        topics = admin.list_topics(topic, timeout=10).topics
        known = topics.get(topic)
        led = known is not None and known.error is None and bool(known.partitions)
        if led and all(meta.leader >= 0 for meta in known.partitions.values()):
            return dict(known.partitions)
        assert time.monotonic() < deadline, f"no leaders for {topic}"
        time.sleep(0.2)


def _topic_setting(bootstrap: str, topic: str, key: str) -> str:
    """A topic's setting, asked again while a broker does not know the new topic yet."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + WAIT_S
    while True:
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        try:
            return admin.describe_configs([resource])[resource].result()[key].value
        except KafkaException as exc:
            unknown = exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            if not unknown or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> the node that leads it now."""
    return {p: meta.leader for p, meta in _partitions(bootstrap, topic).items()}


def _commands_with_times(settings: Settings) -> list[tuple[float, RecoveryCommand]]:
    """Every command on the topic with its record's timestamp (when the processor sent it)."""
    codec = Codec(topic_prefix=settings.kafka.topic_prefix)
    topic = settings.kafka.topic("commands")
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "drill-timing"}
    )
    found: list[tuple[float, RecoveryCommand]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: high for p, (_, high) in end_offsets(consumer, topic, list(partitions)).items()}
        left = {p for p, high in ends.items() if high}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in left])
        deadline = time.monotonic() + WAIT_S
        while left and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                if message.error() is not None or message.offset() >= ends[message.partition()]:
                    continue
                found.append((message.timestamp()[1] / 1000, codec.decode(message.value())))
                if message.offset() + 1 >= ends[message.partition()]:
                    left.discard(message.partition())
    finally:
        consumer.close()
    return found


def _fenced_after(state_dir: Path, victim: int, killed_at: float) -> float:
    """Seconds from the kill until the active controller fenced the node (from its log):
    until then the partitions it led have no leader."""
    pattern = re.compile(
        rf"^\[(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{{3}})\] .*Fencing broker {victim} "
    )
    times = []
    for log in state_dir.glob("node-*/broker.log"):
        for line in log.read_text(errors="replace").splitlines():
            match = pattern.match(line)
            if match:
                at = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
                times.append(at + int(match.group(2)) / 1000)
    return min(at for at in times if at >= killed_at - 1) - killed_at


def _start_projector(settings: Settings, tmp_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FAULTSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "FAULTSTREAM_STORAGE__DUCKDB_PATH": settings.storage.duckdb_path,
        "FAULTSTREAM_STORAGE__READ_MODELS_DIR": settings.storage.read_models_dir,
    }
    with (tmp_path / "projector.log").open("ab") as log:
        return subprocess.Popen(
            [FAULTSTREAM, "projector", "--no-api", "--publish-interval", "0.2"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=log,
        )


def test_killing_the_leader_of_events_and_decisions_loses_and_repeats_nothing(
    three_nodes: tuple[BrokerSettings, str], tmp_path: Path
) -> None:
    own, bootstrap = three_nodes
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": "drill"},
        emitter={"spool_path": str(tmp_path / "spool.jsonl")},
        processor={"data_dir": str(tmp_path / "processor"), "tick_interval_s": 1.0},
        storage={
            "duckdb_path": str(tmp_path / "fs.duckdb"),
            "read_models_dir": str(tmp_path / "read-models"),
        },
    )
    kafka = settings.kafka
    create_topics(kafka)
    # Three copies, two in sync for a write: one node may go without a record lost.
    events, decisions = kafka.topic("events"), kafka.topic("ordered")
    for topic in (events, decisions):
        assert {len(p.replicas) for p in _partitions(bootstrap, topic).values()} == {3}
    assert _topic_setting(bootstrap, decisions, "min.insync.replicas") == "2"

    projector = _start_projector(settings, tmp_path)
    try:
        with processor(settings, tmp_path), Fleet(settings) as fleet:
            wait_until(
                lambda: any(isinstance(r, RecoveryCommand) for r in published(settings)),
                "the first commands",
                WAIT_S,
            )
            # Faust's own topics are replicated like ours: the decider's state outlives a node.
            changelog = "drill-processor-decider-state-changelog"
            assert {len(p.replicas) for p in _partitions(bootstrap, changelog).values()} == {3}
            assert _topic_setting(bootstrap, changelog, "min.insync.replicas") == "2"
            time.sleep(STEADY_S)  # a steady state to fail over from

            victim = _leaders(bootstrap, decisions)[0]
            led = [p for p, node in _leaders(bootstrap, events).items() if node == victim]
            assert led, f"node {victim} leads no events partition"
            killed_at = time.time()
            assert cluster.kill(own, victim) is not None
            after_kill = len(fleet.sent)

            time.sleep(DOWN_S)
            _, restarted = cluster.start(own, NODES, node=victim)
            assert restarted == [victim]
            wait_until(
                lambda: victim in _partitions(bootstrap, decisions)[0].isrs,
                f"node {victim} back in sync on {decisions}",
                WAIT_S,
            )
            time.sleep(STEADY_S)
            undelivered = fleet.stop()
            sent = list(fleet.sent)
            sent_at = dict(fleet.sent_at)

            assert undelivered == 0
            assert len(fleet.transport.spool) == 0  # every event acknowledged, none spooled
            expected_ids = _wait_for_outputs(settings, sent)

        # Recovery: the first command for an event sent after the kill.
        timed = _commands_with_times(settings)
        after = [at for at, c in timed if sent_at.get(c.caused_by, 0) > killed_at]
        assert after, "no command for an event sent after the kill"
        recovery_s = min(after) - killed_at
        fenced_s = _fenced_after(Path(own.state_dir), victim, killed_at)
        print(
            f"\nfailover: node {victim} (decisions and events partitions {led}) killed; "
            f"first command for a later event {recovery_s:.2f} s after the kill (the "
            f"controller fenced the node after {fenced_s:.2f} s); "
            f"{len(sent)} events, {len(sent) - after_kill} sent after the kill"
        )

        # Commands on the topic are FleetCore's over the decision order, copies identical.
        history = read_topic(settings, "ordered")
        expected = {
            r.command_id: derived_to_json(r)
            for r in replay(settings, history)
            if isinstance(r, RecoveryCommand)
        }
        on_topic = [c for _, c in timed]
        assert {c.command_id for c in on_topic} == set(expected) == expected_ids
        assert all(derived_to_json(c) == expected[c.command_id] for c in on_topic)

        wait_until(
            lambda: published_rows(settings.storage.read_models_dir, "events") >= len(sent),
            "every event in the projector's history",
            WAIT_S,
        )
    finally:
        projector.send_signal(signal.SIGTERM)
        projector.wait(timeout=WAIT_S)

    con = duckdb.connect(settings.storage.duckdb_path, read_only=True)
    try:
        rows, distinct = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events"
        ).fetchone()
        landed = {row[0] for row in con.execute("SELECT event_id FROM events").fetchall()}
    finally:
        con.close()
    assert landed == {event.event_id for event in sent}  # 0 lost
    assert rows == distinct == len(sent)  # 0 duplicated rows


def _wait_for_outputs(settings: Settings, sent: list[WorkerEvent]) -> set[str]:
    """Wait until the distinct commands published are those FleetCore derives from the
    decision order (every sent event in it); return their ids."""
    state: dict[str, set[str]] = {}
    wanted = {event.event_id for event in sent}

    def caught_up() -> bool:
        out = {derived_id(r) for r in published(settings) if isinstance(r, RecoveryCommand)}
        history = read_topic(settings, "ordered")
        if not wanted <= {r.event_id for r in history}:
            return False
        derived = {
            r.command_id for r in replay(settings, history) if isinstance(r, RecoveryCommand)
        }
        state["ids"] = derived
        return bool(derived) and derived == out

    wait_until(caught_up, "the published commands to match the replay of decisions", WAIT_S)
    return state["ids"]
