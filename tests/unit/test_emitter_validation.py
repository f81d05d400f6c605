"""The SDK refuses invalid events naming the field, and sends nothing for them."""

from __future__ import annotations

import threading
from collections import Counter
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from faultstream.events.build import FAST_PATH, build_worker_event
from faultstream.events.emitter import Emitter, new_event_id
from faultstream.events.exceptions import InvalidEventError
from faultstream.events.models import MAX_MILLIS, EventKind, FailureType, WorkerEvent


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


# --- the fast validation path (events/build.py) ------------------------------------------

_text = st.one_of(st.none(), st.text(max_size=130), st.sampled_from(["", "x" * 128, "x" * 129]))
# Every value each field may take, valid or not: the refusals to compare.
_REQUIRED = {
    "event_id": st.text(max_size=130),
    "kind": st.sampled_from([*EventKind, "HEARTBEAT", "NOPE"]),
    "ts": st.one_of(st.integers(min_value=-2, max_value=2**62), st.booleans()),
    "worker_id": st.text(max_size=130),
    "hardware_class": st.sampled_from(["cpu", "", "x" * 64, "x" * 65]),
}
_OPTIONAL = {
    "task_id": _text,
    "task_type": _text,
    "failure_type": st.sampled_from([None, *FailureType, "TIMEOUT", "NOPE", 3]),
    "message": st.one_of(st.none(), st.sampled_from(["oom", "x" * 4096, "x" * 4097])),
    "attempt": st.one_of(st.integers(min_value=-1, max_value=5), st.just("1")),
    "recovery_command_id": _text,
    "attributes": st.one_of(
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        st.just({"batch_size": 32}),
        st.just(MappingProxyType({"k": "v"})),
    ),
    "checkpoint_seq": st.one_of(st.none(), st.integers(min_value=-1, max_value=9)),
    "checkpoint_state": st.one_of(st.none(), st.binary(max_size=4), st.just("text")),
}
_ANY_FIELDS = st.fixed_dictionaries(_REQUIRED, optional=_OPTIONAL)  # mostly refused
_ids = st.text(min_size=1, max_size=128)


@st.composite
def _valid_fields(draw: st.DrawFn) -> dict:
    """The fields of an event the contract accepts, each kind with what it needs."""
    kind = draw(st.sampled_from(list(EventKind)))
    fields = {
        "event_id": draw(_ids),
        "kind": draw(st.sampled_from([kind, kind.value])),
        "ts": draw(st.integers(0, MAX_MILLIS)),
        "worker_id": draw(_ids),
        "hardware_class": draw(st.text(min_size=1, max_size=64)),
        "attempt": draw(st.integers(0, 5)),
        "attributes": draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)),
    }
    if kind is not EventKind.HEARTBEAT:
        fields["task_id"] = draw(_ids)
    if kind in (EventKind.TASK_STARTED, EventKind.SUCCESS, EventKind.FAILURE):
        fields["task_type"] = draw(_ids)
    if kind is EventKind.FAILURE:
        fields["failure_type"] = draw(st.sampled_from([None, *FailureType, "TIMEOUT"]))
        fields["message"] = draw(st.none() | st.text(max_size=50))
    if kind is EventKind.CHECKPOINT:
        fields["checkpoint_seq"] = draw(st.integers(0, 2**40))
        fields["checkpoint_state"] = draw(st.none() | st.binary(max_size=8))
    if draw(st.booleans()):
        fields["recovery_command_id"] = draw(st.none() | _ids)
    return fields


@st.composite
def _one_field_off(draw: st.DrawFn) -> dict:
    """Valid fields but one, drawn from every value that field may take."""
    fields = draw(_valid_fields())
    pools = {**_REQUIRED, **_OPTIONAL}
    name = draw(st.sampled_from(sorted(pools)))
    fields[name] = draw(pools[name])
    return fields


_FIELDS = st.one_of(_valid_fields(), _one_field_off(), _ANY_FIELDS)


def _full(fields: dict) -> WorkerEvent | str:
    try:
        return WorkerEvent(**fields)
    except ValidationError as exc:
        return InvalidEventError.from_validation(exc).field


def test_fast_validation_is_in_use() -> None:
    assert FAST_PATH


def test_fast_path_accepts_and_refuses_exactly_what_pydantic_does() -> None:
    paths: Counter[str] = Counter()

    # Derandomized by the profile (tests/conftest.py); the long profile explores afresh.
    @settings(max_examples=max(400, settings.default.max_examples), deadline=None)
    @given(fields=_FIELDS)
    def compare(fields: dict) -> None:
        expected = _full(fields)
        try:
            built: WorkerEvent | str = build_worker_event(fields)
        except InvalidEventError as exc:
            built = exc.field
        assert built == expected
        if isinstance(built, WorkerEvent):
            paths["accepted"] += 1
            assert built.model_dump() == expected.model_dump()  # type: ignore[union-attr]
            assert built.model_fields_set == expected.model_fields_set  # type: ignore[union-attr]
        else:
            paths["refused"] += 1

    compare()
    # Both paths compared often (about 64 % of the examples are accepted, 36 % refused).
    examples = paths["accepted"] + paths["refused"]
    assert paths["accepted"] >= 0.25 * examples and paths["refused"] >= 0.25 * examples, paths


def test_a_mapping_that_is_not_a_dict_still_validates_through_pydantic(
    emitter: Emitter, transport: RecordingTransport
) -> None:
    emitter.success("t1", "bert", attributes=MappingProxyType({"batch_size": "8"}))
    assert transport.sent[-1].attributes == {"batch_size": "8"}
    emitter.failure("t1", "bert", failure_type="TIMEOUT")
    assert transport.sent[-1].failure_type is FailureType.TIMEOUT


def test_changing_the_attributes_dict_after_emitting_leaves_the_event_alone(
    emitter: Emitter, transport: RecordingTransport
) -> None:
    attributes = {"batch_size": "8"}
    emitter.task_started("t1", "bert", attributes=attributes)
    attributes["batch_size"] = "4"
    assert transport.sent[-1].attributes == {"batch_size": "8"}


def test_event_ids_from_concurrent_threads_are_all_distinct() -> None:
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.extend(new_event_id() for _ in range(5000)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 20000


def test_seeding_the_global_random_does_not_repeat_event_ids() -> None:
    import random

    random.seed(7)
    first = new_event_id()
    random.seed(7)
    assert new_event_id() != first


def test_a_forked_child_does_not_repeat_the_parents_event_ids() -> None:
    import os

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write_end, new_event_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read_end, 64).decode()
    assert child_id != new_event_id()
    assert len(child_id) == 32
