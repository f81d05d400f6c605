"""`faultstream alerts` on the real broker: alerts produced onto `<prefix>.alerts` (keyed by
alert_id, as the processor writes them) are posted to a local webhook that fails before it
accepts. None is lost, each offset is committed only after the receiver accepted its
alert (the receiver looks at the group's committed offsets while each request is open),
and a CLI killed while retrying delivers the alert again when it starts anew. The
projector lands the same topic in the history's `alerts` table.

The CLI runs as a subprocess, as an operator runs it; the tests wait for states, never
for durations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
from confluent_kafka import Consumer, TopicPartition
from producers import ordered_producer

from faultstream.events.admin import create_topics
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.models import Alert

pytestmark = pytest.mark.kafka
FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
WAIT_S = 120  # a generous bound: the tests wait for states, never for durations
GROUP = "alerts-to-webhook"


def alert(n: int, state: str = "FIRING") -> Alert:
    return Alert(
        alert_id=f"alert-{n}", ts=1_000 * n + (1 if state == "RESOLVED" else 0),
        rule="open_longer_than_s", subject_kind="worker", subject_id=f"w{n}",
        severity="warning", state=state, message=f"worker w{n} open for 901 s",
        caused_by=f"tick-{n}",
    )  # fmt: skip


def key_of(body: bytes) -> tuple[str, str]:
    fields = json.loads(body)
    return fields["alert_id"], fields["state"]


def produce(settings: Settings, alerts: list[Alert]) -> dict[tuple[str, str], tuple[int, int]]:
    """Produce the alerts keyed by alert_id; returns (partition, offset) of each."""
    create_topics(settings.kafka)
    topic = settings.kafka.topic("alerts")
    producer = ordered_producer(settings.kafka.bootstrap_servers)
    placed: dict[tuple[str, str], tuple[int, int]] = {}
    codec = Codec()

    def placed_at(err, msg) -> None:  # librdkafka's delivery callback
        assert err is None, err
        record = codec.decode(msg.value())
        placed[(record.alert_id, str(record.state))] = (msg.partition(), msg.offset())

    for each in alerts:
        producer.produce(topic, codec.encode(each), each.alert_id.encode(), on_delivery=placed_at)
    assert producer.flush(30) == 0
    return placed


class CommitWatcher:
    """The group's committed offsets, asked without joining the group."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.kafka.topic("alerts")
        self.lock = threading.Lock()
        self.consumer = Consumer(
            {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": GROUP}
        )

    def committed(self, partition: int) -> int:
        with self.lock:
            (tp,) = self.consumer.committed([TopicPartition(self.topic, partition)], timeout=30)
        return tp.offset  # negative: nothing committed yet

    def close(self) -> None:
        self.consumer.close()


class Receiver:
    """A local webhook: each POST gets the next scripted status (200 once spent). While a
    request is open it notes the group's committed offset of that alert's partition."""

    def __init__(self, script: list[int], placed, watcher: CommitWatcher) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.script = list(script)
        self.attempts: list[bytes] = []
        self.accepted: list[bytes] = []
        self.committed_while_open: list[tuple[tuple[str, str], int, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                key = key_of(body)
                partition, offset = placed[key]
                receiver.committed_while_open.append((key, offset, watcher.committed(partition)))
                status = receiver.script.pop(0) if receiver.script else 200
                receiver.attempts.append(body)
                if status == 200:
                    receiver.accepted.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0KEN-never-logged"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def watcher(kafka_settings: Settings) -> Iterator[CommitWatcher]:
    watching = CommitWatcher(kafka_settings)
    yield watching
    watching.close()


@pytest.fixture
def start_cli(
    kafka_settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `faultstream alerts --webhook URL` on this test's topics; whatever is still
    running at the end is killed."""
    started: list[subprocess.Popen] = []

    def start(url: str, *extra: str) -> subprocess.Popen:
        kafka = kafka_settings.kafka
        args = [FAULTSTREAM, "alerts", "--webhook", url, "--group-id", GROUP,
                "--from-beginning", "--bootstrap-servers", kafka.bootstrap_servers,
                "--prefix", kafka.topic_prefix, *extra]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTSTREAM_")}
        with (tmp_path / "alerts.log").open("ab") as log:
            proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=log)  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, f"the CLI exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_every_alert_reaches_a_failing_webhook_and_is_committed_only_once_accepted(
    kafka_settings: Settings, watcher: CommitWatcher, start_cli, tmp_path: Path
) -> None:
    sent = [alert(1), alert(2), alert(3), alert(1, "RESOLVED"), alert(3, "RESOLVED")]
    placed = produce(kafka_settings, sent)
    receiver = Receiver([500, 503, 429, 200, 500, 404, 200], placed, watcher)
    try:
        cli = start_cli(receiver.url)
        out, _ = cli.communicate(timeout=WAIT_S)
        assert cli.returncode == 0, (tmp_path / "alerts.log").read_text()
    finally:
        receiver.close()

    # None lost, none twice; within an alert (one partition), FIRING before RESOLVED.
    delivered = [key_of(body) for body in receiver.accepted]
    assert sorted(delivered) == sorted((a.alert_id, str(a.state)) for a in sent)
    for n in (1, 3):
        assert delivered.index((f"alert-{n}", "FIRING")) < delivered.index(
            (f"alert-{n}", "RESOLVED")
        )
    bodies = {key_of(body): body for body in receiver.accepted}
    assert all(bodies[(a.alert_id, str(a.state))] == a.model_dump_json().encode() for a in sent)
    # Retries happened, and while any attempt was open its offset was not committed yet.
    assert len(receiver.attempts) == len(sent) + 5
    assert all(committed <= offset for _, offset, committed in receiver.committed_while_open)
    # Everything is committed now, and printed after it was accepted.
    for key, (partition, offset) in placed.items():
        assert watcher.committed(partition) > offset, key
    printed = [json.loads(line) for line in out.decode().splitlines()]
    assert [(p["alert_id"], p["state"]) for p in printed] == delivered
    assert all(p["type"] == "alert" for p in printed)
    log = (tmp_path / "alerts.log").read_text()
    assert "HTTP 404 Not Found" in log and "HTTP 500" in log
    assert "T0KEN" not in log  # the URL's path may hold a secret: only scheme://host/


def test_a_cli_killed_while_retrying_delivers_that_alert_again_when_restarted(
    kafka_settings: Settings, watcher: CommitWatcher, start_cli, tmp_path: Path
) -> None:
    # One alert's FIRING and RESOLVED: one key, so one partition, in this order.
    first, second = alert(5), alert(5, "RESOLVED")
    placed = produce(kafka_settings, [first, second])
    (partition,) = {p for p, _ in placed.values()}
    receiver = Receiver([200, *[500] * 10_000], placed, watcher)
    try:
        cli = start_cli(receiver.url, "--follow")
        wait_for(lambda: len(receiver.attempts) >= 3, cli, "retries of the second alert")
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=WAIT_S)
        # The accepted alert is committed; the one being retried is not.
        assert watcher.committed(partition) == placed[("alert-5", "RESOLVED")][1]

        receiver.script.clear()  # the receiver is fixed
        # The killed member keeps its partitions until its session times out: the new one
        # waits for them (without --idle-timeout, a drain gives up after 30 s idle).
        again = start_cli(receiver.url, "--idle-timeout", str(WAIT_S))
        out, _ = again.communicate(timeout=WAIT_S)
        assert again.returncode == 0, (tmp_path / "alerts.log").read_text()
    finally:
        receiver.close()
    assert receiver.accepted == [a.model_dump_json().encode() for a in (first, second)]
    assert [json.loads(line)["state"] for line in out.decode().splitlines()] == ["RESOLVED"]
    assert watcher.committed(partition) == placed[("alert-5", "RESOLVED")][1] + 1


def test_the_projector_lands_the_alerts_topic_in_the_alerts_table(
    kafka_settings: Settings,
) -> None:
    from faultstream.projections.alerts import firing_alerts
    from faultstream.projections.projector import Projector
    from faultstream.projections.queries import History

    sent = [alert(1), alert(2), alert(1, "RESOLVED")]
    produce(kafka_settings, sent)
    projector = Projector(kafka_settings)
    projector.start()
    try:
        deadline = time.monotonic() + WAIT_S
        landed = 0
        while landed < len(sent):
            assert time.monotonic() < deadline, "gave up waiting for the alerts to land"
            landed += projector.poll_once()
        projector.flush()
        projector.publish()
    finally:
        projector.close()
    con = duckdb.connect(kafka_settings.storage.duckdb_path, read_only=True)
    try:
        rows = con.execute(
            "SELECT alert_id, ts, rule, subject_kind, subject_id, severity, state, message, "
            "caused_by FROM alerts ORDER BY ts"
        ).fetchall()
    finally:
        con.close()
    assert rows == sorted((tuple(a.model_dump(mode="json").values()) for a in sent),
                          key=lambda row: row[1])  # fmt: skip
    with History.from_read_models(kafka_settings.storage.read_models_dir) as history:
        assert [row["alert_id"] for row in firing_alerts(history)] == ["alert-2"]
