"""Topic creation on the shared broker, and the lifecycle of a second, local broker and of
a local 3-node cluster."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from faultstream import broker
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
    "ordered": (1, "delete"),
    "figures": (6, "compact,delete"),
    "alerts": (6, "delete"),
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
        pid = int((tmp_path / "broker" / "broker.pid").read_text())

        assert main(["broker", "start", *flags]) == 0
        assert "already running" in capsys.readouterr().out

        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix="lifecycle")
        assert len(create_topics(kafka)) == len(EXPECTED)
        assert _roundtrip_one_record(bootstrap, topic_names(kafka)["events"]) == b"hello"
    finally:
        assert main(["broker", "stop", *flags]) == 0

    assert "broker stopped" in capsys.readouterr().out
    assert not _exists(pid)  # `stop` returned after the JVM had exited, not before
    assert main(["broker", "status", *flags]) == 1
    assert "not running" in capsys.readouterr().out
    assert not (tmp_path / "broker" / "broker.pid").exists()
    assert (tmp_path / "broker" / "broker.log").stat().st_size > 0


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_broker_whose_main_thread_has_exited_counts_as_alive_until_every_thread_has() -> None:
    # The JVM's main thread may be a zombie while its other threads still shut down (and
    # hold the ports): `stop` waited for the main thread only, and returned too early.
    code = (
        "import ctypes, threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    # The argument makes its command line look like a broker's.
    proc = subprocess.Popen([sys.executable, "-c", code, "kafka.Kafka"])
    try:
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 30
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the main thread did not exit"
            time.sleep(0.05)
        assert broker.is_alive(proc.pid)
        broker.terminate([proc.pid], grace_s=10.0)
        assert not broker.is_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def free_run_of_ports(count: int) -> int:
    """A port p with p .. p+count-1 all free."""
    for _ in range(50):
        base = random.randrange(20_000, 60_000, 2)
        if all(_is_free(port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no run of free ports found")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _settled_partitions(bootstrap: str, topic: str) -> dict:
    """The topic's partitions once every broker knows them (just created, some may not)."""
    admins = [AdminClient({"bootstrap.servers": address}) for address in bootstrap.split(",")]
    deadline = time.monotonic() + 60  # a bound on waiting, not an assertion on speed
    while True:
        found = [admin.list_topics(topic, timeout=10).topics.get(topic) for admin in admins]
        if all(meta is not None and meta.error is None and meta.partitions for meta in found):
            return dict(found[0].partitions)  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"{topic} not known to every broker"
        time.sleep(0.2)


def _node_pids(out: str) -> dict[int, int]:
    return {
        int(n): int(pid) for n, pid in re.findall(r"node (\d): running at \S+ \(pid (\d+)\)", out)
    }


def test_a_three_node_cluster_lists_each_node_restarts_one_and_stops_every_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = free_run_of_ports(6)
    flags = ["--port", str(base), "--controller-port", str(base + 1)]
    flags += ["--state-dir", str(tmp_path / "cluster")]
    addresses = [f"127.0.0.1:{base + step}" for step in (0, 2, 4)]
    try:
        assert main(["broker", "start", "--nodes", "3", *flags]) == 0
        assert "started node 1, 2, 3" in capsys.readouterr().out

        assert main(["broker", "status", *flags]) == 0
        out = capsys.readouterr().out
        assert f"3 of 3 nodes running; bootstrap servers {','.join(addresses)}" in out
        pids = _node_pids(out)
        assert sorted(pids) == [1, 2, 3]
        for node, address in enumerate(addresses, start=1):
            assert f"node {node}: running at {address} (pid {pids[node]})" in out

        kafka = KafkaSettings(bootstrap_servers=",".join(addresses), topic_prefix="cluster")
        create_topics(kafka)
        # Three copies of each topic, two in sync for a write.
        events = _settled_partitions(kafka.bootstrap_servers, kafka.topic("events"))
        assert {len(partition.replicas) for partition in events.values()} == {3}
        configs = _topic_configs(kafka.bootstrap_servers, [kafka.topic("events")])
        assert configs[kafka.topic("events")]["min.insync.replicas"] == "2"

        assert main(["broker", "stop", "--node", "2", "--kill", *flags]) == 0
        assert f"node 2 killed (was pid {pids[2]}" in capsys.readouterr().out
        assert not _exists(pids[2])
        assert main(["broker", "status", *flags]) == 1
        assert f"node 2: not running ({addresses[1]})" in capsys.readouterr().out

        assert main(["broker", "start", "--node", "2", *flags]) == 0
        assert "started node 2" in capsys.readouterr().out
        assert main(["broker", "status", *flags]) == 0
        pids = _node_pids(capsys.readouterr().out)
        assert sorted(pids) == [1, 2, 3]
    finally:
        assert main(["broker", "stop", *flags]) == 0
    out = capsys.readouterr().out
    assert all(f"node {node} stopped (was pid {pids[node]}" in out for node in pids)
    assert not any(_exists(pid) for pid in pids.values())  # every JVM has exited
    assert main(["broker", "status", *flags]) == 1
    assert "0 of 3 nodes running" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["start", "--nodes", "3", "--port", "19092", "--controller-port", "19094"], "overlap"),
        (["stop", "--node", "2"], "holds no cluster"),
        (
            ["start", "--nodes", "3", "--sasl-ssl"],
            "--sasl-ssl: a SASL_SSL listener is for a single",
        ),
    ],
)
def test_broker_refuses_a_cluster_it_cannot_run_in_one_line(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ["--state-dir", str(tmp_path / "nothing")]

    assert main(["broker", *argv, *state]) == 2

    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1
