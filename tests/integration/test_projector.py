"""The projector against the real broker: records produced onto the processor's topics land
in DuckDB exactly once, across a SIGKILL, while readers keep reading the read models.

Records are produced with the Codec straight onto `.ordered` (in frames, as the
processor writes them), `.circuits`, `.commands` and `.dlq`; the processor does not run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from producers import ordered_producer

from faultstream.events import frames as framing
from faultstream.events.admin import create_topics, topic_names
from faultstream.events.codec import Codec
from faultstream.events.config import CoreSettings, Settings, load_settings
from faultstream.events.models import (
    CircuitFigures,
    CircuitStateChanged,
    DeadLetter,
    RecoveryCommand,
    Tick,
    WorkerEvent,
)
from faultstream.processors.core import FleetCore
from faultstream.projections.health import snapshot_row
from faultstream.projections.queries import History
from faultstream.projections.read_models import MANIFEST, Manifest

pytestmark = pytest.mark.kafka
FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
WAIT_S = 120  # a generous bound: the tests wait for states, never for durations
FRAME = 100  # input records per frames


def inputs(first: int, count: int) -> list[Any]:
    records: list[Any] = []
    for n in range(first, first + count):
        worker = f"w{n % 40}"
        if n % 1000 == 999:
            records.append(Tick(event_id=f"tick{n}", ts=n))
        elif n % 7 == 3:
            records.append(WorkerEvent(event_id=f"e{n}", kind="FAILURE", ts=n, worker_id=worker,
                                       hardware_class="cuda", task_id=f"t{n}", task_type="bert",
                                       message="CUDA error: device-side assert"))  # fmt: skip
        elif n % 5 == 0:
            records.append(WorkerEvent(event_id=f"e{n}", kind="CHECKPOINT", ts=n,
                                       worker_id=worker, hardware_class="cuda",
                                       task_id=f"t{n % 100}", checkpoint_seq=n,
                                       checkpoint_state=n.to_bytes(4, "big")))  # fmt: skip
        else:
            records.append(WorkerEvent(event_id=f"e{n}", kind="SUCCESS", ts=n, worker_id=worker,
                                       hardware_class="cpu" if n % 2 else "cuda",
                                       task_id=f"t{n}", task_type="bert"))  # fmt: skip
    return records


def derived(first: int, count: int) -> list[Any]:
    out: list[Any] = []
    for n in range(first, first + count):
        out.append(
            CircuitStateChanged(
                event_id=f"x{n}",
                ts=n,
                circuit_kind="worker",
                circuit_id=f"w{n % 40}",
                from_state="CLOSED" if n % 2 else "OPEN",
                to_state="OPEN" if n % 2 else "CLOSED",
                reason="test",
                consecutive_failures=5 if n % 2 else 0,
                trips=n % 2,
                reset_timeout_s=60.0,
                health=18.0 if n % 2 else 100.0,
                caused_by=f"e{n}",
            )
        )
        out.append(
            RecoveryCommand(
                command_id=f"c{n}",
                ts=n,
                task_id=f"t{n}",
                task_type="bert",
                worker_id="w1",
                strategy="DELAYED_RETRY",
                attempt=1,
                delay_s=2.0,
                reason="test",
                caused_by=f"e{n}",
            )
        )
    return out  # fmt: skip


class Topics:
    def __init__(self, settings: Settings) -> None:
        create_topics(settings.kafka)
        self.names = topic_names(settings.kafka)
        self.codec = Codec(topic_prefix=settings.kafka.topic_prefix)
        self.core = FleetCore()
        self.producer = ordered_producer(settings.kafka.bootstrap_servers, **{
            "linger.ms": 20, "partitioner": "murmur2_random"})  # fmt: skip

    def send(self, topic: str, records: list[Any], key: Callable[[Any], bytes]) -> None:
        name = self.names[topic]
        for record in records:
            self.producer.produce(name, self.codec.encode(record), key(record))
            self.producer.poll(0)
        assert self.producer.flush(30) == 0

    def send_frames(self, records: list[Any]) -> None:
        """Inputs as the processor writes them: FRAME records to a frame."""
        raws = [self.codec.encode(record) for record in records]
        for start in range(0, len(raws), FRAME):
            frame = framing.pack(raws[start : start + FRAME])
            self.producer.produce(self.names["ordered"], frame, b"fleet", partition=0)
            self.producer.poll(0)
        assert self.producer.flush(30) == 0

    def send_batch(self, first: int, count: int, *, repeat_derived: bool = False) -> None:
        batch = inputs(first, count)
        self.send_frames(batch)
        # The figures are the core's own (the read side serves them as they are); the
        # transitions and commands below are stand-ins that exercise landing only.
        figures = [out for r in batch for out in self.core.process(r)
                   if isinstance(out, CircuitFigures)]  # fmt: skip
        self.send("figures", figures, lambda f: f.key.encode())
        changes = derived(first, count // 10)
        if repeat_derived:  # a processor re-sending after its restart: same ids again
            changes += changes[: len(changes) // 2]
        self.send("circuits", [c for c in changes if isinstance(c, CircuitStateChanged)],
                  lambda c: c.key.encode())  # fmt: skip
        self.send("commands", [c for c in changes if isinstance(c, RecoveryCommand)],
                  lambda c: c.task_id.encode())  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_projector(kafka_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    started: list[subprocess.Popen] = []
    env = {
        **os.environ,
        "FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_settings.kafka.bootstrap_servers,
        "FAULTSTREAM_KAFKA__TOPIC_PREFIX": kafka_settings.kafka.topic_prefix,
        "FAULTSTREAM_STORAGE__DUCKDB_PATH": kafka_settings.storage.duckdb_path,
        "FAULTSTREAM_STORAGE__READ_MODELS_DIR": kafka_settings.storage.read_models_dir,
    }

    def start(port: int | None = None, health_interval_s: float = 60.0) -> subprocess.Popen:
        # The log outlives this call (the child writes to it); the test's tmp_path owns it.
        log = open(tmp_path / f"projector{len(started)}.log", "w")  # noqa: SIM115
        api = ["--port", str(port), "--host", "127.0.0.1"] if port else ["--no-api"]
        proc = subprocess.Popen(
            [FAULTSTREAM, "projector", "--publish-interval", "0.2",
             *api],
            env={**env, "FAULTSTREAM_STORAGE__HEALTH_INTERVAL_S": str(health_interval_s)},
            cwd=tmp_path, stderr=log,
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def published_rows(directory: str, table: str) -> int:
    try:
        manifest = Manifest(**json.loads((Path(directory) / MANIFEST).read_text()))
    except FileNotFoundError:
        return 0
    return sum(rows for _, rows in manifest.files.get(table, []))


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, f"projector exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=WAIT_S) == 0


def test_records_land_exactly_once_across_a_sigkill_of_the_projector(
    kafka_settings: Settings, start_projector
) -> None:
    topics = Topics(kafka_settings)
    directory = kafka_settings.storage.read_models_dir
    topics.send_batch(0, 30_000)
    first = start_projector()
    wait_for(lambda: published_rows(directory, "events") > 0, first, "the first rows")
    first.send_signal(signal.SIGKILL)
    first.wait()
    # Whatever the moment of the kill, the rows on disk are exactly those the stored
    # offsets cover: they were committed in one transaction.
    landed, offsets = landed_and_offsets(kafka_settings)
    assert landed["inputs"] == offsets.get(topics.names["ordered"], 0) * FRAME > 0
    assert landed["commands"] == offsets.get(topics.names["commands"], 0)
    topics.send_batch(30_000, 30_000, repeat_derived=True)
    second = start_projector()
    wait_for(lambda: published_rows(directory, "commands") >= 6_000, second, "every command")
    wait_for(lambda: published_rows(directory, "control") >= 60, second, "every tick")
    stop(second)

    con = duckdb.connect(kafka_settings.storage.duckdb_path, read_only=True)
    counts = {
        table: con.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {table}").fetchone()
        for table, key in [("events", "event_id"), ("control", "event_id"),
                           ("circuit_transitions", "event_id"), ("commands", "command_id")]
    }  # fmt: skip
    seqs = con.execute(
        "SELECT count(DISTINCT seq), min(seq), max(seq) FROM "
        "(SELECT seq FROM events UNION ALL SELECT seq FROM control)"
    ).fetchone()
    con.close()
    assert counts == {
        "events": (59_940, 59_940),
        "control": (60, 60),
        "circuit_transitions": (6_000, 6_000),
        "commands": (6_000, 6_000),
    }
    # (`.ordered` offset, index in frame), each exactly once
    assert seqs == (60_000, 0, framing.seq(60_000 // FRAME - 1, FRAME - 1))
    _, offsets = landed_and_offsets(kafka_settings)
    assert offsets[topics.names["ordered"]] == 60_000 // FRAME
    assert offsets[topics.names["commands"]] == 3_000 + 3_000 + 1_500  # with the repeats


def landed_and_offsets(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """Rows in the history and the stored next offsets summed per topic."""
    con = duckdb.connect(settings.storage.duckdb_path, read_only=True)
    try:
        (inputs,) = con.execute(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM control)"
        ).fetchone()
        (commands,) = con.execute("SELECT count(*) FROM commands").fetchone()
        offsets = dict(
            con.execute(
                "SELECT topic, sum(next_offset)::BIGINT FROM projector_offsets GROUP BY topic"
            ).fetchall()
        )
    finally:
        con.close()
    return {"inputs": inputs, "commands": commands}, offsets


def test_history_replays_inputs_in_decisions_order(
    kafka_settings: Settings, start_projector
) -> None:
    topics = Topics(kafka_settings)
    topics.send_batch(0, 3_000)
    proc = start_projector()
    directory = kafka_settings.storage.read_models_dir
    wait_for(lambda: published_rows(directory, "control") >= 3, proc, "every tick")
    stop(proc)
    with History.from_db(kafka_settings.storage.duckdb_path) as history:
        assert list(history.input_records()) == inputs(0, 3_000)


def test_readers_open_the_read_models_while_the_projector_writes(
    kafka_settings: Settings, start_projector
) -> None:
    topics = Topics(kafka_settings)
    directory = kafka_settings.storage.read_models_dir
    proc = start_projector()
    wait_for(lambda: (Path(directory) / MANIFEST).exists(), proc, "the first manifest")
    seen = []
    for batch in range(10):
        topics.send_batch(batch * 2_000, 2_000)
        with History.from_read_models(directory) as history:
            seen.append(history.circuit_breakers()["aggregate"]["total_circuits"])
            history.failure_rates("1h")
            history.current_states()
    wait_for(lambda: published_rows(directory, "commands") >= 2_000, proc, "every command")
    stop(proc)
    assert seen == sorted(seen)  # readers only ever see the history grow


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_api_answers_equal_the_figures_of_the_history_tables(
    kafka_settings: Settings, start_projector
) -> None:
    topics = Topics(kafka_settings)
    topics.send_batch(0, 5_000)
    topics.send("dlq", [DeadLetter(event_id="bad1", ts=1, source_topic="x", source_partition=0,
                                   source_offset=7, raw=b"\x00", reason="not avro")],
                lambda _: b"")  # fmt: skip
    port = free_port()
    proc = start_projector(port)
    directory = kafka_settings.storage.read_models_dir
    wait_for(lambda: published_rows(directory, "dead_letters") >= 1, proc, "the dead letter")
    wait_for(lambda: published_rows(directory, "commands") >= 500, proc, "every command")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(base), proc, "the API")
    _, breakers = get(f"{base}/api/circuit-breakers")
    status, checkpoint = get(f"{base}/api/checkpoints/t5")
    missing = get(f"{base}/api/checkpoints/no-such-task")
    stop(proc)

    with History.from_db(kafka_settings.storage.duckdb_path) as history:
        assert breakers == json.loads(json.dumps(history.circuit_breakers()))
        newest = history.checkpoint("t5")
        (dead,) = history.con.execute("SELECT count(*) FROM dead_letters").fetchone()
    assert breakers["aggregate"]["total_circuits"] == 40 + 2 + 1
    assert status == 200 and checkpoint["checkpoint_seq"] == newest["checkpoint_seq"] == 4_905
    assert missing == (404, {"error": "no checkpoint for task 'no-such-task'"})
    assert dead == 1


def _answers(base: str) -> bool:
    try:
        return get(f"{base}/api/circuit-breakers")[0] == 200
    except OSError:
        return False


HEALTH_INTERVAL_MS = 10_000


def health_history(first_interval: int, intervals: int) -> list[Any]:
    """Six workers reporting every 250 ms; in each interval one worker crashes often enough
    to open its circuit (and w5 every third interval), so circuits open, go half-open and
    close across the boundaries. A TICK closes each interval exactly at its boundary."""
    records: list[Any] = []
    for i in range(first_interval, first_interval + intervals):
        base = i * HEALTH_INTERVAL_MS
        for k in range(1, 40):
            for w in range(6):
                ts = base + k * 250 + w
                fields = dict(worker_id=f"w{w}", hardware_class="cuda" if w % 2 else "cpu",
                              task_id=f"t{i}-{k}-{w}", task_type="bert")  # fmt: skip
                if (w == i % 6 and k < 12) or (w == 5 and i % 3 == 0):
                    records.append(WorkerEvent(event_id=f"f{i}-{k}-{w}", kind="FAILURE", ts=ts,
                                               failure_type="WORKER_CRASH", **fields))  # fmt: skip
                else:
                    records.append(WorkerEvent(event_id=f"s{i}-{k}-{w}", kind="SUCCESS", ts=ts,
                                               **fields))  # fmt: skip
        records.append(Tick(event_id=f"tick{i}", ts=base + HEALTH_INTERVAL_MS))
    return records


def health_core_settings() -> CoreSettings:
    # A short recovery timeout, so circuits also go half-open and close within the history.
    circuits = {"worker": {"recovery_timeout_s": 3, "success_threshold": 2}}
    return load_settings(circuits=circuits).core


def send_with_outputs(topics: Topics, core: FleetCore, records: list[Any]) -> dict[int, Any]:
    """Feed `records` to the core, send inputs and outputs as the processor would, and
    return the core's own health_snapshots row at every boundary (after its TICK)."""
    outputs: list[Any] = []
    expected = {}
    for record in records:
        outputs.extend(core.process(record))
        if isinstance(record, Tick):
            expected[record.ts] = snapshot_row(record.ts, core.circuits_view())
    topics.send_frames(records)
    topics.send("circuits", [o for o in outputs if isinstance(o, CircuitStateChanged)],
                lambda c: c.key.encode())  # fmt: skip
    topics.send("commands", [o for o in outputs if isinstance(o, RecoveryCommand)],
                lambda c: c.task_id.encode())  # fmt: skip
    topics.send("figures", [o for o in outputs if isinstance(o, CircuitFigures)],
                lambda f: f.key.encode())  # fmt: skip
    return expected


def landed_snapshots(settings: Settings) -> dict[int, dict[str, Any]]:
    con = duckdb.connect(settings.storage.duckdb_path, read_only=True)
    try:
        cursor = con.execute("SELECT * FROM health_snapshots ORDER BY ts")
        names = [d[0] for d in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
    finally:
        con.close()


def test_projector_lands_one_health_snapshot_per_boundary_with_the_cores_figures_across_a_restart(
    kafka_settings: Settings, start_projector
) -> None:
    topics = Topics(kafka_settings)
    directory = kafka_settings.storage.read_models_dir
    core = FleetCore(health_core_settings())
    expected = send_with_outputs(topics, core, health_history(0, 4))
    first = start_projector(health_interval_s=HEALTH_INTERVAL_MS / 1000)
    # Inputs end at the 40 s TICK: 10 s and 20 s are passed by a whole interval, 30 s is not
    # (and some circuits partition has no output after it), so exactly two are due.
    wait_for(lambda: published_rows(directory, "health_snapshots") >= 2, first, "2 snapshots")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert sorted(landed_snapshots(kafka_settings)) == [10_000, 20_000]

    expected |= send_with_outputs(topics, core, health_history(4, 4))
    second = start_projector(health_interval_s=HEALTH_INTERVAL_MS / 1000)
    wait_for(lambda: published_rows(directory, "health_snapshots") >= 6, second, "6 snapshots")
    stop(second)

    landed = landed_snapshots(kafka_settings)
    assert sorted(landed) == [10_000, 20_000, 30_000, 40_000, 50_000, 60_000]
    assert landed == {ts: expected[ts] for ts in landed}
    # The history really moves: circuits open, go half-open and close between boundaries.
    assert {row["open_workers"] for row in landed.values()} != {0}
    assert len({row["average_health"] for row in landed.values()}) > 1
