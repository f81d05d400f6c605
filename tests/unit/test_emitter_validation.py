"""The SDK refuses invalid events naming the field, and sends nothing for them."""

from __future__ import annotations

import pytest

from faultstream.events.emitter import Emitter, new_event_id
from faultstream.events.exceptions import InvalidEventError
from faultstream.events.models import EventKind, FailureType, WorkerEvent


class RecordingTransport:
    """A transport that keeps what it is given (the SDK's pluggable Transport)."""

    def __init__(self) -> None:
        self.sent: list[WorkerEvent] = []
        self.closed = False

    def send(self, event: WorkerEvent) -> None:
        self.sent.append(event)

    def flush(self, timeout: float) -> int:
        return 0

    def close(self, timeout: float) -> None:
        self.closed = True


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def emitter(transport: RecordingTransport) -> Emitter:
    return Emitter(worker_id="w1", hardware_class="cuda", transport=transport)


def test_bad_worker_identity_fails_at_construction(transport: RecordingTransport) -> None:
    with pytest.raises(InvalidEventError) as caught:
        Emitter(worker_id="", hardware_class="cuda", transport=transport)
    assert caught.value.field == "worker_id"
    with pytest.raises(InvalidEventError) as caught:
        Emitter(worker_id="w", hardware_class="x" * 65, transport=transport)
    assert caught.value.field == "hardware_class"
    assert transport.sent == []


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e: e.failure("t1", "bert", failure_type="NOT_A_TYPE"), "failure_type"),
        (lambda e: e.failure("t1", "bert", message="x" * 4097), "message"),
        (lambda e: e.failure("t1", "bert", attempt=-1), "attempt"),
        (lambda e: e.task_started("", "bert"), "task_id"),
        (lambda e: e.success("t1", "bert", attributes={"batch_size": 32}), "attributes.batch_size"),
        (lambda e: e.checkpoint("t1", -1), "checkpoint_seq"),
        (lambda e: e.checkpoint("t1", 1, b"x" * (1024 * 1024 + 1)), "checkpoint_state"),
        (lambda e: e.heartbeat(ts=-5), "ts"),
        (lambda e: e.heartbeat(event_id=""), "event_id"),
    ],
    ids=["failure_type", "message", "attempt", "task_id", "attribute", "seq", "state", "ts", "id"],
)
def test_invalid_event_names_the_field_and_sends_nothing(
    emitter: Emitter, transport: RecordingTransport, call, field: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        call(emitter)
    assert caught.value.field == field
    assert transport.sent == []


def test_each_method_returns_the_event_id_and_sends_its_kind(
    emitter: Emitter, transport: RecordingTransport
) -> None:
    ids = [
        emitter.heartbeat(),
        emitter.task_started("t1", "bert", attributes={"batch_size": "8"}),
        emitter.checkpoint("t1", 3, b"state"),
        emitter.success("t1", "bert"),
        emitter.failure("t1", "bert", message="oom", event_id="fixed", ts=42),
    ]
    assert [e.event_id for e in transport.sent] == ids
    assert [e.kind for e in transport.sent] == list(EventKind)
    assert ids[-1] == "fixed" and transport.sent[-1].ts == 42
    assert all(e.worker_id == "w1" and e.hardware_class == "cuda" for e in transport.sent)


def test_generated_event_ids_are_uuid4_hex() -> None:
    import uuid

    value = new_event_id()
    assert len(value) == 32 and uuid.UUID(value).version == 4


def test_task_context_reports_success(emitter: Emitter, transport: RecordingTransport) -> None:
    with emitter.task("t1", "bert", attempt=1) as running:
        running.checkpoint(1)
    assert [e.kind for e in transport.sent] == [
        EventKind.TASK_STARTED, EventKind.CHECKPOINT, EventKind.SUCCESS
    ]  # fmt: skip
    assert all(e.attempt == 1 for e in transport.sent)


def test_task_context_reports_classified_failure_and_reraises(
    emitter: Emitter, transport: RecordingTransport
) -> None:
    with pytest.raises(RuntimeError, match="CUDA error"), emitter.task("t1", "bert"):
        raise RuntimeError("CUDA error: illegal address")
    failure = transport.sent[-1]
    assert failure.kind is EventKind.FAILURE
    assert failure.failure_type is FailureType.HARDWARE_ERROR
    assert failure.message == "CUDA error: illegal address"


def test_close_closes_the_transport(transport: RecordingTransport) -> None:
    with Emitter(worker_id="w1", hardware_class="cpu", transport=transport):
        pass
    assert transport.closed
