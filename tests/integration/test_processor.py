"""The Faust processor (`faultstream processor`) on the real broker.

The processor's history is the order of `<prefix>.ordered`; every test reads that topic
back, runs it through FleetCore (and `faultstream replay`), and compares with what the
processor published.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from faultstream.events import frames as framing
from faultstream.events.admin import create_topics, end_offsets
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.decode import InputDecoder
from faultstream.events.jsonl import write_records
from faultstream.events.models import (
    Alert,
    CircuitState,
    CircuitStateChanged,
    DeadLetter,
    DerivedRecord,
    InputRecord,
    RecoveryCommand,
    WorkerEvent,
    derived_to_json,
)
from faultstream.processors.core import FleetCore

pytestmark = pytest.mark.kafka

FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
DEADLINE_S = 90.0
CUDA = [f"cuda-{i}" for i in range(5)]
CPU = [f"cpu-{i}" for i in range(3)]


# --- a scripted history -------------------------------------------------------------


def scripted_round(round_no: int, start_ts: int) -> list[WorkerEvent]:
    """One round: a cuda worker crashing until its circuit opens, cuda hardware errors
    that open the hardware-class circuit, OOM with a batch size, timeouts on cpu."""
    events: list[WorkerEvent] = []
    ts = start_ts

    def add(kind: str, worker: str, **fields: object) -> None:
        nonlocal ts
        ts += 10
        hardware = "cuda" if worker.startswith("cuda") else "cpu"
        events.append(
            WorkerEvent(
                event_id=f"r{round_no}-e{len(events)}",
                kind=kind,
                ts=ts,
                worker_id=worker,
                hardware_class=hardware,
                **fields,
            )
        )

    for worker in CUDA + CPU:
        add("HEARTBEAT", worker)
    for n in range(5):
        task = f"r{round_no}-crash-{n}"
        add("TASK_STARTED", "cuda-0", task_id=task, task_type="bert")
        add("FAILURE", "cuda-0", task_id=task, task_type="bert", failure_type="WORKER_CRASH")
    for n, worker in enumerate(CUDA[1:4]):
        task = f"r{round_no}-hw-{n}"
        add("TASK_STARTED", worker, task_id=task, task_type="resnet")
        add("FAILURE", worker, task_id=task, task_type="resnet", failure_type="HARDWARE_ERROR")
    for n, worker in enumerate(CPU):
        task = f"r{round_no}-oom-{n}"
        add("TASK_STARTED", worker, task_id=task, task_type="llama", attributes={"batch_size": "8"})
        add(
            "FAILURE",
            worker,
            task_id=task,
            task_type="llama",
            message="CUDA out of memory",
            attributes={"batch_size": "8", "precision": "fp32"},
        )
        add("FAILURE", worker, task_id=f"{task}-t", task_type="llama", failure_type="TIMEOUT")
        add("SUCCESS", worker, task_id=f"{task}-ok", task_type="llama")
    return events


def scripted_history(rounds: int) -> list[WorkerEvent]:
    start = int(time.time() * 1000)
    history: list[WorkerEvent] = []
    for round_no in range(rounds):
        history += scripted_round(round_no, start + round_no * 1_000)
    return history


# --- Kafka helpers ------------------------------------------------------------------


def produce(settings: Settings, records: list, raw: list[bytes] = ()) -> list[int]:
    """Produce records (keyed by worker) then raw bytes; the offsets of the raw ones."""
    codec = Codec(topic_prefix=settings.kafka.topic_prefix)
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    topic = settings.kafka.topic("events")
    for record in records:
        producer.produce(topic, codec.encode(record), key=record.worker_id.encode())
        producer.poll(0)
    offsets: list[int] = []
    for blob in raw:
        producer.produce(
            topic, blob, key=b"cuda-0", on_delivery=lambda _e, m: offsets.append(m.offset())
        )
    producer.flush()
    return offsets


def read_topic(settings: Settings, name: str) -> list:
    """Every record now on `<prefix>.<name>`, decoded, in partition order."""
    codec = Codec(topic_prefix=settings.kafka.topic_prefix)
    topic = settings.kafka.topic(name)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": "test-reader",
            "enable.auto.commit": False,
        }
    )
    # A frames is a frame of input records, in (offset, index) order, each with
    # the broker time it came in with: the time the processor decided on.
    if name == "ordered":
        decoder = InputDecoder(topic_prefix=settings.kafka.topic_prefix)

        def decode(value: bytes) -> list:
            times, raws = framing.unpack_stamped(value)
            return [decoder.trusted(raw, at) for raw, at in zip(raws, times, strict=True)]
    else:

        def decode(value: bytes) -> list:
            return [codec.decode(value)]

    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        watermarks = end_offsets(consumer, topic, list(partitions))
        last = {p: high - 1 for p, (_low, high) in watermarks.items() if high > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in last])
        records: dict[int, list] = {p: [] for p in last}
        remaining = set(last)
        while remaining:
            for message in consumer.consume(10_000, timeout=0.2):
                if message.error() is not None:
                    continue
                partition = message.partition()
                if partition in remaining and message.offset() <= last[partition]:
                    records[partition].extend(decode(message.value()))
                if message.offset() >= last[partition]:
                    remaining.discard(partition)
        return [record for p in sorted(records) for record in records[p]]
    finally:
        consumer.close()


def derived_id(record: DerivedRecord) -> str:
    if isinstance(record, Alert):  # its FIRING and RESOLVED share the alert_id
        return f"{record.alert_id}/{record.state}"
    return record.command_id if isinstance(record, RecoveryCommand) else record.event_id


def replay(settings: Settings, history: list[InputRecord]) -> list[DerivedRecord]:
    core = FleetCore(settings.core)
    return [output for record in history for output in core.process(record)]


def published(settings: Settings) -> list[DerivedRecord]:
    return (
        read_topic(settings, "circuits")
        + read_topic(settings, "commands")
        + read_topic(settings, "figures")
        + read_topic(settings, "alerts")
    )


RUNNING: list[subprocess.Popen] = []


def wait_until(check: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        for proc in RUNNING:
            if proc.poll() is not None:
                pytest.fail(f"processor exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def wait_for_replayed_ids(settings: Settings, inputs: list) -> tuple[list, list]:
    """Wait until every one of `inputs` is on `<prefix>.ordered` and the distinct
    derived ids on the output topics equal those that FleetCore derives from it; returns
    (expected, published). (Without the first condition, outputs that match a decisions
    topic still missing the last inputs would pass before the processor had read them.)"""
    state: dict[str, list] = {}
    wanted = {record.event_id for record in inputs}

    def caught_up() -> bool:
        state["out"] = published(settings)  # outputs first: decisions only grow after
        history = read_topic(settings, "ordered")
        if not wanted <= {record.event_id for record in history}:
            return False
        state["expected"] = replay(settings, history)
        expected_ids = {derived_id(r) for r in state["expected"]}
        return bool(expected_ids) and expected_ids == {derived_id(r) for r in state["out"]}

    wait_until(caught_up, "the published records to match the replay of decisions")
    return state["expected"], state["out"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def processor(settings: Settings, tmp_path: Path, instance: str = "0") -> Iterator:
    env = dict(
        os.environ,
        FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
        FAULTSTREAM_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        FAULTSTREAM_PROCESSOR__DATA_DIR=settings.processor.data_dir,
        FAULTSTREAM_PROCESSOR__TICK_INTERVAL_S=str(settings.processor.tick_interval_s),
        # Snapshots often, so a restart restores one and re-reads only the frames after it.
        FAULTSTREAM_PROCESSOR__SNAPSHOT_EVERY_S="0.5",
    )
    log = (tmp_path / f"processor-{instance}.log").open("ab")
    command = [FAULTSTREAM, "processor", "--instance-id", instance, "--web-port"]
    proc = subprocess.Popen([*command, str(free_port())], env=env, stdout=log, stderr=log)
    RUNNING.append(proc)
    try:
        yield proc
    finally:
        RUNNING.remove(proc)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


def snapshot_offsets(tmp_path: Path) -> list[int]:
    """The `.ordered` offset of the snapshots the processor logged (instance 0)."""
    log = (tmp_path / "processor-0.log").read_text()
    return [int(n) for n in re.findall(r"decider snapshot at `.ordered` offset (\d+)", log)]


def restored_offset(tmp_path: Path) -> int:
    log = (tmp_path / "processor-0.log").read_text()
    return int(re.findall(r"decider restored at `.ordered` offset (\d+)", log)[-1])


def by_key(records: list[DerivedRecord]) -> dict[str, list[DerivedRecord]]:
    groups: dict[str, list[DerivedRecord]] = defaultdict(list)
    for record in records:
        if isinstance(record, RecoveryCommand):
            key = f"task:{record.task_id}"
        elif isinstance(record, Alert):  # keyed by alert_id: FIRING, then RESOLVED
            key = f"alert:{record.alert_id}"
        else:  # transitions and figures: each on its own topic, in order per circuit
            key = f"{type(record).__name__}:{record.key}"
        groups[key].append(record)
    return dict(groups)


# --- the scenarios ------------------------------------------------------------------


def test_processor_outputs_equal_replay_of_the_decisions_order(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    history = scripted_history(rounds=2)
    produce(kafka_settings, history)
    with processor(kafka_settings, tmp_path):
        expected, out = wait_for_replayed_ids(kafka_settings, history)
    assert by_key(out) == by_key(expected)
    openings = {r.key for r in out if isinstance(r, CircuitStateChanged) and r.to_state == "OPEN"}
    assert {"worker:cuda-0", "hardware_class:cuda"} <= openings
    strategies = {r.strategy for r in out if isinstance(r, RecoveryCommand)}
    assert len(strategies) >= 3

    decisions = read_topic(kafka_settings, "ordered")
    history = tmp_path / "decisions.jsonl"
    with history.open("w") as fh:
        write_records(decisions, fh)
    result = subprocess.run(
        [FAULTSTREAM, "replay", "--input", str(history)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    replayed = [line for line in result.stdout.splitlines() if line.strip()]
    assert replayed == [derived_to_json(r) for r in replay(kafka_settings, decisions)]


def test_sigkilled_processor_restarts_without_losing_or_reopening(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    history = scripted_history(rounds=100)
    produce(kafka_settings, history[: len(history) // 2])
    with processor(kafka_settings, tmp_path) as proc:
        wait_until(lambda: len(read_topic(kafka_settings, "commands")) > 50, "the first commands")
        wait_until(lambda: snapshot_offsets(tmp_path), "a snapshot")
        produce(kafka_settings, history[len(history) // 2 :])
        proc.send_signal(signal.SIGKILL)
    with processor(kafka_settings, tmp_path):
        expected, out = wait_for_replayed_ids(kafka_settings, history)
    # The restart resumed from a snapshot, not from the first frames.
    assert 0 < restored_offset(tmp_path) <= max(snapshot_offsets(tmp_path))

    expected_commands = {r.command_id for r in expected if isinstance(r, RecoveryCommand)}
    assert {r.command_id for r in out if isinstance(r, RecoveryCommand)} == expected_commands
    openings = [r for r in out if isinstance(r, CircuitStateChanged) and r.to_state == "OPEN"]
    expected_openings = {
        r.event_id
        for r in expected
        if isinstance(r, CircuitStateChanged) and r.to_state == CircuitState.OPEN
    }
    # A re-sent opening carries the same event_id: no opening under two ids.
    assert {r.event_id for r in openings} == expected_openings
    for event_id in expected_openings:
        copies = {r for r in openings if r.event_id == event_id}
        assert len({json.dumps(r.model_dump(mode="json")) for r in copies}) == 1


def test_two_instances_give_the_same_results_as_one(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    history = scripted_history(rounds=20)
    produce(kafka_settings, history[: len(history) // 4])
    with processor(kafka_settings, tmp_path, "1"), processor(kafka_settings, tmp_path, "2"):
        # Both ingest (the input partitions split), so the decider's own frames, handed
        # over locally, interleave on `.ordered` with the other instance's frames.
        inputs = 2 * kafka_settings.kafka.partitions  # events and control
        wait_until(lambda: both_ingest(tmp_path, inputs), "both to take input partitions")
        produce(kafka_settings, history[len(history) // 4 :])
        expected, out = wait_for_replayed_ids(kafka_settings, history)
    assert {derived_id(r) for r in out} == {derived_id(r) for r in expected}
    # Per circuit and per task, in the order of the replay (a failover may repeat some).
    assert first_seen_by_key(out) == first_seen_by_key(expected)


def both_ingest(tmp_path: Path, inputs: int) -> bool:
    assigned = []
    for instance in ("1", "2"):
        log = (tmp_path / f"processor-{instance}.log").read_text()
        counts = re.findall(r"ingest assigned (\d+) input partitions", log)
        assigned.append(int(counts[-1]) if counts else 0)
    return all(assigned) and sum(assigned) == inputs  # the rebalance is over


def first_seen_by_key(records: list[DerivedRecord]) -> dict[str, list[str]]:
    return {
        key: list(dict.fromkeys(derived_id(record) for record in group))
        for key, group in by_key(records).items()
    }


def test_garbage_bytes_go_to_the_dlq_while_good_events_flow(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    good = scripted_history(rounds=1)
    garbage = [b"not avro at all", b"\x00\x00\x00\x00\x01\xff\xff", b""]
    garbage_offsets = produce(kafka_settings, good, raw=garbage)
    with processor(kafka_settings, tmp_path):
        wait_until(lambda: len(read_topic(kafka_settings, "dlq")) >= len(garbage), "dead letters")
        expected, _ = wait_for_replayed_ids(kafka_settings, good)
    letters: list[DeadLetter] = read_topic(kafka_settings, "dlq")
    assert sorted(letter.source_offset for letter in letters) == sorted(garbage_offsets)
    assert sorted(letter.raw for letter in letters) == sorted(garbage)
    assert all(letter.reason and letter.source_topic.endswith(".events") for letter in letters)
    failures = {e.event_id for e in good if e.kind == "FAILURE"}
    commanded = {r.caused_by for r in expected if isinstance(r, RecoveryCommand)}
    assert failures <= commanded


def crashes(worker: str, count: int, start_ts: int, prefix: str) -> list[WorkerEvent]:
    """`count` WORKER_CRASH failures of one cpu worker, a second apart."""
    return [
        WorkerEvent(
            event_id=f"{prefix}-{n}",
            kind="FAILURE",
            ts=start_ts + n * 1_000,
            worker_id=worker,
            hardware_class="cpu",
            task_id=f"{prefix}-task-{n}",
            task_type="bert",
            failure_type="WORKER_CRASH",
        )
        for n in range(count)
    ]


def test_tune_apply_changes_what_the_processor_does_next(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    now = int(time.time() * 1000)
    # A recorded streak of crashes: a threshold of 2 protects far more than the default 5.
    history = tmp_path / "history.jsonl"
    with history.open("w") as fh:
        write_records(crashes("cpu-old", 12, now - 600_000, "old"), fh)
    env = dict(
        os.environ,
        FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=kafka_settings.kafka.bootstrap_servers,
        FAULTSTREAM_KAFKA__TOPIC_PREFIX=kafka_settings.kafka.topic_prefix,
    )
    with processor(kafka_settings, tmp_path):
        # Two crashes under the default threshold (5): the worker's circuit stays closed.
        produce(kafka_settings, crashes("cpu-a", 2, now, "before"))
        wait_until(
            lambda: (
                len([r for r in published(kafka_settings) if isinstance(r, RecoveryCommand)]) >= 2
            ),
            "the commands for the first two crashes",
        )
        tuned = subprocess.run(
            [FAULTSTREAM, "tune", "--input", str(history), "--apply",
             "--grid", "worker.failure_threshold=2,5", "--min-events", "1"],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert tuned.returncode == 0, tuned.stderr
        assert "applied" in tuned.stdout, tuned.stdout
        control = read_topic(kafka_settings, "control")
        changes = [r for r in control if r.kind == "CONFIG_CHANGED"]
        assert [c.actor for c in changes] == ["tune"]
        assert changes[0].config["circuits"]["worker"]["failure_threshold"] == 2
        wait_until(
            lambda: any(
                r.event_id == changes[0].event_id for r in read_topic(kafka_settings, "ordered")
            ),
            "the decider to take the CONFIG_CHANGED",
        )
        # The same two crashes on another worker now open its circuit.
        produce(kafka_settings, crashes("cpu-b", 2, now + 10_000, "after"))
        wait_until(
            lambda: any(
                isinstance(r, CircuitStateChanged)
                and r.key == "worker:cpu-b"
                and r.to_state == "OPEN"
                for r in published(kafka_settings)
            ),
            "worker:cpu-b to open after two crashes",
        )
    assert not any(
        isinstance(r, CircuitStateChanged) and r.key == "worker:cpu-a"
        for r in published(kafka_settings)
    )
