"""Fault drills on the real broker: a restart after a backlog, and a worker with a bad clock.

A fleet emits at real-time pace into the six event partitions while the processor is
stopped; when it comes back it must decide exactly as a processor that never stopped
would: as FleetCore over every input in the broker's order (merged by append time, ties by
partition then offset). Before the merge, one partition's backlog ran ahead of the others
and every worker on them was declared lost, its tasks migrated off a healthy machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from test_processor import (
    FAULTSTREAM,
    derived_id,
    free_port,
    published,
    read_topic,
    wait_until,
)

from faultstream.events.admin import create_topics, end_offsets
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.decode import InputDecoder, stamped
from faultstream.events.models import (
    CircuitFigures,
    CircuitStateChanged,
    DerivedRecord,
    InputRecord,
    RecoveryCommand,
    WorkerEvent,
    derived_to_json,
)
from faultstream.processors.core import FleetCore

pytestmark = pytest.mark.kafka

HEARTBEAT_TIMEOUT_S = 2
WORKERS = [f"gpu-{i:02d}" for i in range(12)]
DEAD = "gpu-05"  # stops for good while the processor is down
PACE_S = 0.2
YEAR_2100_MS = 4_102_444_800_000


class Fleet:
    """Workers heartbeating every PACE_S and running 1.2-s tasks, keyed like the SDK."""

    def __init__(self, settings: Settings) -> None:
        self.codec = Codec(topic_prefix=settings.kafka.topic_prefix)
        self.topic = settings.kafka.topic("events")
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "partitioner": "murmur2_random",
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )
        self.dead: set[str] = set()
        self.bad_clock: set[str] = set()
        self.sent: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._step = 0

    def __enter__(self) -> Fleet:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        assert self.producer.flush(30) == 0

    def _emit(self, worker: str, kind: str, **fields: object) -> None:
        ts = YEAR_2100_MS if worker in self.bad_clock else int(time.time() * 1000)
        event = WorkerEvent(
            event_id=f"{worker}-{len(self.sent)}",
            kind=kind,
            ts=ts,
            worker_id=worker,
            hardware_class="cuda",
            **fields,
        )
        self.producer.produce(self.topic, self.codec.encode(event), key=worker.encode())
        self.sent.append(event.event_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            cycle, phase = divmod(self._step, 6)
            for worker in WORKERS:
                if worker in self.dead:
                    continue
                task = {"task_id": f"{worker}-task-{cycle}", "task_type": "bert"}
                if phase == 0:
                    self._emit(worker, "TASK_STARTED", **task)
                elif phase == 5:
                    self._emit(worker, "SUCCESS", **task)
                else:
                    self._emit(worker, "HEARTBEAT")
            self.producer.poll(0)
            self._step += 1
            self._stop.wait(PACE_S)


@contextmanager
def processor(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen]:
    env = dict(
        os.environ,
        FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        FAULTSTREAM_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        FAULTSTREAM_PROCESSOR__DATA_DIR=settings.processor.data_dir,
        FAULTSTREAM_PROCESSOR__TICK_INTERVAL_S="0.5",
        FAULTSTREAM_RECOVERY__HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
    )
    with (tmp_path / "processor.log").open("ab") as log:
        command = [FAULTSTREAM, "processor", "--web-port", str(free_port())]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()


def broker_order(settings: Settings) -> list[InputRecord]:
    """Every input on the events and control topics, each with its broker append time, in
    the one order CIRCUITS.md defines: by append time, then partition, then offset."""
    decoder = InputDecoder(topic_prefix=settings.kafka.topic_prefix)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "drill-reader"}
    )
    keyed = []
    try:
        for rank, logical in enumerate(("events", "control")):
            topic = settings.kafka.topic(logical)
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            ends = {
                p: high for p, (_, high) in end_offsets(consumer, topic, list(partitions)).items()
            }
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends if ends[p]])
            left = {p for p in ends if ends[p]}
            while left:
                for message in consumer.consume(10_000, timeout=0.5):
                    if message.error() is not None:
                        continue
                    p, offset = message.partition(), message.offset()
                    if offset < ends[p]:
                        at = message.timestamp()[1]
                        record = stamped(decoder.validated(message.value()), at)
                        keyed.append(((at, rank, p, offset), record))
                    if offset + 1 >= ends[p]:
                        left.discard(p)
            consumer.unassign()
    finally:
        consumer.close()
    return [record for _, record in sorted(keyed, key=lambda pair: pair[0])]


def first_copies(records: list[InputRecord]) -> list[InputRecord]:
    """The records without repeats (an input forwarded again after a restart)."""
    seen: set[str] = set()
    return [r for r in records if not (r.event_id in seen or seen.add(r.event_id))]


def decisions(records: list[DerivedRecord]) -> list[DerivedRecord]:
    """The transitions and commands among derived records (not the published figures)."""
    return [r for r in records if isinstance(r, CircuitStateChanged | RecoveryCommand)]


def replay(inputs: list[InputRecord]) -> list[DerivedRecord]:
    core = FleetCore(FleetCore().settings.merged(
        {"recovery": {"heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S}}
    ))  # fmt: skip
    return [out for record in inputs for out in core.process(record)]


def test_a_restart_after_a_backlog_decides_as_an_uninterrupted_processor(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    with Fleet(kafka_settings) as fleet:
        with processor(kafka_settings, tmp_path):
            wait_until(lambda: read_topic(kafka_settings, "ordered"), "the processor to run")
            time.sleep(2)
        # The processor is down: the fleet goes on, and one worker dies for good.
        fleet.dead.add(DEAD)
        time.sleep(8)
        backlog = list(fleet.sent)
        with processor(kafka_settings, tmp_path):
            wanted = set(backlog)
            wait_until(
                lambda: wanted <= {r.event_id for r in read_topic(kafka_settings, "ordered")},
                "the backlog in the decision order",
            )
            wait_until(
                lambda: any(isinstance(r, RecoveryCommand) for r in published(kafka_settings)),
                "the dead worker's migration",
            )
            time.sleep(1)
        # Stopped while the fleet still runs: no silence after the run to judge.
    history = first_copies(read_topic(kafka_settings, "ordered"))
    order = broker_order(kafka_settings)
    # The processor read the partitions in the broker's order, backlog and all: its clock
    # never jumped ahead of a partition. (Records stamped in the same millisecond may
    # take either order: a caught-up partition does not hold the merge.)
    times = [r.received_at for r in history]
    assert times == sorted(times)
    assert {r.event_id for r in history} == {r.event_id for r in order[: len(history)]}
    out = published(kafka_settings)
    unique = {derived_id(r): derived_to_json(r) for r in out}
    assert sorted(unique.values()) == sorted(derived_to_json(r) for r in replay(history))
    # One migration only: the dead worker's task. No healthy worker lost, none opened.
    moves = [r for r in out if isinstance(r, RecoveryCommand)]
    assert {(m.worker_id, m.strategy) for m in moves} == {(DEAD, "DIFFERENT_WORKER")}
    opened = [r for r in out if isinstance(r, CircuitStateChanged) and r.circuit_id != DEAD]
    assert not opened


def test_a_worker_clock_in_the_year_2100_moves_nobody(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    with Fleet(kafka_settings) as fleet, processor(kafka_settings, tmp_path):
        wait_until(lambda: read_topic(kafka_settings, "ordered"), "the processor to run")
        fleet.bad_clock.add("gpu-03")  # from now on it says the year is 2100
        time.sleep(HEARTBEAT_TIMEOUT_S * 3)
        sent = set(fleet.sent)
        wait_until(
            lambda: sent <= {r.event_id for r in read_topic(kafka_settings, "ordered")},
            "every event in the decision order",
        )
        time.sleep(1)
        out = published(kafka_settings)
    history = first_copies(read_topic(kafka_settings, "ordered"))
    assert any(r.ts == YEAR_2100_MS for r in history)
    # Nobody lost, nothing opened, no task moved: the broker's clock ran the decisions.
    # (The core still publishes its figures at each TICK: counts, all CLOSED and live.)
    assert decisions(out) == [] == decisions(replay(history))
    figures = [r for r in out if isinstance(r, CircuitFigures)]
    assert all(f.state == "CLOSED" and f.live is not False for f in figures)
