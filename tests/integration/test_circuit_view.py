"""CircuitView and the guard against the real broker: loading the compacted circuits topic,
following it, and the guard's reports landing on the events topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, ConfigResource
from producers import ordered_producer

from faultstream.events.admin import create_topics
from faultstream.events.circuit_view import CircuitOpenError, CircuitView, CircuitViewError
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.emitter import Emitter
from faultstream.events.guard import Guard
from faultstream.events.models import CircuitState, CircuitStateChanged, EventKind, WorkerEvent

pytestmark = pytest.mark.kafka

HANG_GUARD_S = 60  # only stops a broken test from hanging; never a performance bound
NOW = time.time_ns() // 1_000_000


def transition(
    kind: str,
    cid: str,
    to_state: str,
    ts: int,
    *,
    reset_timeout_s: float = 60.0,
    from_state: str = "CLOSED",
) -> CircuitStateChanged:
    return CircuitStateChanged(
        event_id=f"{kind}:{cid}:{to_state}:{ts}",
        ts=ts,
        circuit_kind=kind,
        circuit_id=cid,
        from_state=from_state,
        to_state=to_state,
        reason="test",
        consecutive_failures=0,
        trips=1,
        reset_timeout_s=reset_timeout_s,
        health={"CLOSED": 100.0, "HALF_OPEN": 40.0}.get(to_state, 18.0),
        caused_by="cause",
    )


class Circuits:
    """Writes circuit records as the processor does: keyed by kind:id, Avro values."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.kafka.topic("circuits")
        self.codec = Codec()
        self.producer = ordered_producer(settings.kafka.bootstrap_servers)

    def send(self, *records: CircuitStateChanged) -> None:
        for record in records:
            self.producer.produce(self.topic, self.codec.encode(record), record.key)
        assert self.producer.flush(HANG_GUARD_S) == 0

    def send_raw(self, key: bytes, value: bytes | None) -> None:
        self.producer.produce(self.topic, value, key)
        assert self.producer.flush(HANG_GUARD_S) == 0


@pytest.fixture
def topics(kafka_settings: Settings) -> Settings:
    create_topics(kafka_settings.kafka)
    return kafka_settings


@pytest.fixture
def circuits(topics: Settings) -> Circuits:
    return Circuits(topics)


@pytest.fixture
def open_view(topics: Settings) -> Iterator[Callable[[], CircuitView]]:
    views: list[CircuitView] = []

    def make() -> CircuitView:
        view = CircuitView.from_kafka(topics, timeout_s=HANG_GUARD_S)
        views.append(view)
        return view

    yield make
    for view in views:
        view.close()


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_the_circuits_topic_is_compacted_and_keeps_every_circuits_newest_forever(
    topics: Settings,
) -> None:
    admin = AdminClient({"bootstrap.servers": topics.kafka.bootstrap_servers})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topics.kafka.topic("circuits"))
    config = admin.describe_configs([resource])[resource].result(timeout=HANG_GUARD_S)
    assert config["cleanup.policy"].value == "compact"
    assert config["retention.ms"].value == "-1"
    lag = int(config["min.compaction.lag.ms"].value)
    assert 0 < lag <= int(config["max.compaction.lag.ms"].value)
    assert int(config["delete.retention.ms"].value) >= 3_600_000


def test_loading_keeps_only_each_circuits_newest_record(
    circuits: Circuits, open_view: Callable[[], CircuitView]
) -> None:
    for i in range(40):
        # Several records per circuit, as the topic holds them until compaction runs.
        circuits.send(
            transition("worker", f"w{i}", "OPEN", NOW - 30_000),
            transition("worker", f"w{i}", "HALF_OPEN", NOW - 20_000, from_state="OPEN"),
        )
        if i % 2:
            circuits.send(transition("worker", f"w{i}", "CLOSED", NOW - 10_000))
    circuits.send(transition("hardware_class", "cuda", "FORCED_OPEN", NOW - 5_000))
    view = open_view()
    assert len(view) == 41
    assert [view.state("worker", f"w{i}") for i in range(4)] == [
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
    ]
    assert view.is_open("hardware_class", "cuda")
    assert view.health("worker", "w0") == 40.0
    assert len(view.select(state="HALF_OPEN")) == 20
    staleness = view.staleness()
    assert staleness.caught_up and staleness.behind == 0
    assert staleness.since_poll_s is not None and staleness.since_poll_s >= 0
    # The newest record was written 5 s before NOW.
    assert staleness.newest_age_s is not None and staleness.newest_age_s >= 5


def test_an_empty_topic_loads_to_an_empty_view(open_view: Callable[[], CircuitView]) -> None:
    view = open_view()
    assert len(view) == 0 and view.admits("w1", "cuda", "bert")
    assert view.staleness().caught_up


def test_a_missing_topic_is_said_in_one_line(kafka_settings: Settings) -> None:
    with pytest.raises(CircuitViewError, match=r"circuits does not exist .*topics create"):
        CircuitView.from_kafka(kafka_settings)


def test_the_view_follows_live_changes_and_calls_back(
    circuits: Circuits, open_view: Callable[[], CircuitView]
) -> None:
    circuits.send(transition("task_type", "bert", "OPEN", NOW - 1_000))
    view = open_view()
    changes: list[tuple[str | None, str]] = []
    view.on_change(
        lambda before, after: changes.append(
            (None if before is None else before.state.value, f"{after.key}={after.state.value}")
        )
    )
    circuits.send(
        transition("task_type", "bert", "HALF_OPEN", NOW, from_state="OPEN"),
        transition("worker", "w7", "OPEN", NOW),
    )
    eventually(lambda: len(changes) == 2, "both changes called back")
    # Two keys, two partitions: the order between them is the consumer's.
    assert sorted(changes, key=str) == [
        ("OPEN", "task_type:bert=HALF_OPEN"),
        (None, "worker:w7=OPEN"),
    ]
    assert view.state("task_type", "bert") is CircuitState.HALF_OPEN
    eventually(lambda: view.staleness().behind == 0, "caught up")
    assert view.staleness().caught_up


def test_a_tombstone_forgets_a_circuit_and_an_unreadable_record_is_skipped(
    circuits: Circuits, open_view: Callable[[], CircuitView]
) -> None:
    circuits.send(transition("worker", "w1", "OPEN", NOW), transition("worker", "w2", "OPEN", NOW))
    circuits.send_raw(b"worker:w1", None)
    circuits.send_raw(b"worker:w3", b"not avro")
    view = open_view()
    assert view.get("worker", "w1") is None and view.is_open("worker", "w2")
    assert view.skipped == 1 and len(view) == 1


# --- the guard --------------------------------------------------------------------------


def events_of(settings: Settings, wanted: int) -> list[WorkerEvent]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.kafka.topic("events")])
    codec = Codec()
    got: list[WorkerEvent] = []
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while len(got) < wanted and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                got.append(codec.decode(message.value()))  # type: ignore[arg-type]
    finally:
        consumer.close()
    return sorted(got, key=lambda e: (e.task_id or "", e.ts, e.kind != EventKind.TASK_STARTED))


def test_the_guard_refuses_limits_probes_and_reports_outcomes_on_the_events_topic(
    topics: Settings, circuits: Circuits, open_view: Callable[[], CircuitView]
) -> None:
    circuits.send(transition("hardware_class", "cuda", "OPEN", NOW, reset_timeout_s=120))
    view = open_view()
    emitter = Emitter(topics, worker_id="w1", hardware_class="cuda")
    guard = Guard(view, emitter)

    @guard(task_type="bert", task_id="task-ok")
    def succeed() -> str:
        return "ok"

    @guard(task_type="bert", task_id="task-bad")
    async def fail() -> None:
        raise TimeoutError("timed out waiting for the model")

    with pytest.raises(CircuitOpenError) as caught:
        succeed()
    error = caught.value
    assert (error.kind, error.circuit_id, error.state) == ("hardware_class", "cuda", "OPEN")
    assert error.due_at == NOW + 120_000

    # The processor half-opens it: at most half_open_max_calls probes run at once.
    circuits.send(transition("hardware_class", "cuda", "HALF_OPEN", NOW + 120_000))
    eventually(lambda: view.state("hardware_class", "cuda") is CircuitState.HALF_OPEN, "half")
    limit = topics.circuits.hardware_class.half_open_max_calls
    probes = [guard(task_type="bert") for _ in range(limit + 1)]
    for probe in probes[:limit]:
        probe.__enter__()
    with pytest.raises(CircuitOpenError, match="half-open probes are running"), probes[limit]:
        pass
    for probe in probes[:limit]:
        probe.__exit__(None, None, None)

    assert succeed() == "ok"
    with pytest.raises(TimeoutError):
        asyncio.run(fail())
    emitter.close()

    reported = events_of(topics, wanted=2 * limit + 4)
    ours = [(e.task_id, e.kind) for e in reported if e.task_id in ("task-ok", "task-bad")]
    assert ours == [
        ("task-bad", EventKind.TASK_STARTED),
        ("task-bad", EventKind.FAILURE),
        ("task-ok", EventKind.TASK_STARTED),
        ("task-ok", EventKind.SUCCESS),
    ]
    failure = next(e for e in reported if e.kind is EventKind.FAILURE)
    assert failure.failure_type == "TIMEOUT" and failure.worker_id == "w1"
    # The refused calls reported nothing: the probes (one task each) and the two tasks.
    assert len(reported) == 2 * limit + 4
