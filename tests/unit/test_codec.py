"""The Avro codec: the wire format, its errors, the hand-written fast path, the registry."""

from __future__ import annotations

import io
import struct

import pytest
from fastavro import schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from faultstream.events.codec import DEFAULT_SCHEMA_IDS, HEADER, SCHEMAS, Codec
from faultstream.events.exceptions import DecodeError, InvalidEventError
from faultstream.events.models import (
    MAX_MILLIS,
    CircuitFigures,
    EventKind,
    FailureType,
    RecoveryCommand,
    Tick,
    WorkerEvent,
    derived_to_json,
)
from faultstream.processors.core import FleetCore

EVENT = WorkerEvent(
    event_id="e1",
    kind=EventKind.FAILURE,
    ts=1764355200000,
    worker_id="w1",
    hardware_class="cuda",
    task_id="t1",
    task_type="bert",
    message="CUDA error",
)


def _fastavro_bytes(name: str, body: dict, schema_id: int) -> bytes:
    out = io.BytesIO()
    out.write(HEADER.pack(0, schema_id))
    schemaless_writer(out, SCHEMAS[name].parsed, body)
    return out.getvalue()


def test_records_carry_the_confluent_header_with_the_fixed_schema_id() -> None:
    data = Codec().encode(EVENT)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == DEFAULT_SCHEMA_IDS["worker_event"] == 1
    assert Codec().encode(Tick(event_id="t", ts=1))[1:5] == b"\x00\x00\x00\x02"


ids = st.text(min_size=1, max_size=20)
optional_text = st.none() | st.text(max_size=50)


@st.composite
def worker_events(draw: st.DrawFn) -> WorkerEvent:
    kind = draw(st.sampled_from(list(EventKind)))
    fields: dict = {
        "event_id": draw(ids),
        "kind": kind,
        "ts": draw(st.integers(0, MAX_MILLIS)),
        "worker_id": draw(ids),
        "hardware_class": draw(ids),
        "message": draw(optional_text),
        "attempt": draw(st.integers(0, 2**31 - 1)),
        "recovery_command_id": draw(st.none() | ids),
        "attributes": draw(st.dictionaries(st.text(max_size=10), st.text(max_size=10))),
    }
    if kind is not EventKind.HEARTBEAT:
        fields["task_id"] = draw(ids)
        fields["task_type"] = draw(st.none() | ids) if kind is EventKind.CHECKPOINT else draw(ids)
    if kind is EventKind.FAILURE:
        fields["failure_type"] = draw(st.none() | st.sampled_from(list(FailureType)))
    if kind is EventKind.CHECKPOINT:
        fields["checkpoint_seq"] = draw(st.integers(0, 2**62))
        fields["checkpoint_state"] = draw(st.none() | st.binary(max_size=300))
    return WorkerEvent(**fields)


@given(worker_events())
def test_hand_written_worker_event_encoding_equals_fastavro_byte_for_byte(
    event: WorkerEvent,
) -> None:
    expected = _fastavro_bytes("worker_event", event.model_dump(), 1)
    assert Codec().encode(event) == expected
    assert Codec().decode(expected) == event


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter than the 5-byte header"),
        (b"\x00\x00\x00", "shorter than the 5-byte header"),
        (b"\x01\x00\x00\x00\x01abc", "magic byte is 1"),
        (b"\x00\x00\x00\x00\x63abc", "unknown schema id 99"),
        (b"\x00\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "worker_event"),
        (b'\x00\x00\x00\x00\x01{"event_id": "json, not avro"}', "worker_event"),
    ],
    ids=["empty", "short-header", "wrong-magic", "unknown-id", "garbage", "json"],
)
def test_undecodable_bytes_raise_decode_error(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        Codec().decode(data)


def test_truncated_record_raises_decode_error() -> None:
    data = Codec().encode(EVENT)
    for cut in range(5, len(data)):
        with pytest.raises(DecodeError):
            Codec().decode(data[:cut])


def test_trailing_bytes_raise_decode_error() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        Codec().decode(Codec().encode(EVENT) + b"\x00")


def test_record_that_breaks_the_contract_raises_invalid_event_naming_the_field() -> None:
    body = EVENT.model_dump() | {"task_type": None}  # FAILURE needs a task_type
    with pytest.raises(InvalidEventError) as caught:
        Codec().decode(_fastavro_bytes("worker_event", body, 1))
    assert caught.value.field == "task_type"


def test_tick_carrying_operator_fields_is_rejected_naming_the_field() -> None:
    body = {"event_id": "t", "kind": "TICK", "ts": 1, "action": "RESET", "circuit_kind": None,
            "circuit_id": None, "actor": None, "config": None}  # fmt: skip
    with pytest.raises(InvalidEventError) as caught:
        Codec().decode(_fastavro_bytes("control_record", body, 2))
    assert caught.value.field == "action"


def test_config_changed_with_bad_json_names_config() -> None:
    body = {"event_id": "c", "kind": "CONFIG_CHANGED", "ts": 1, "action": None,
            "circuit_kind": None, "circuit_id": None, "actor": "me", "config": "{nope"}  # fmt: skip
    with pytest.raises(InvalidEventError) as caught:
        Codec().decode(_fastavro_bytes("control_record", body, 2))
    assert caught.value.field == "config"


def test_decode_input_refuses_derived_records() -> None:
    command = RecoveryCommand(
        command_id="c", ts=1, task_id="t", task_type=None, worker_id="w",
        strategy="ESCALATION", attempt=3, delay_s=0, reason="r", caused_by="e",
    )  # fmt: skip
    codec = Codec()
    assert codec.decode(codec.encode(command)) == command
    with pytest.raises(DecodeError, match="expected a worker event or control record"):
        codec.decode_input(codec.encode(command))
    assert codec.decode_input(codec.encode(EVENT)) == EVENT


def test_registry_ids_are_registered_per_topic_subject_and_resolved_on_decode() -> None:
    # "mock://" is confluent-kafka's documented in-memory registry client: no server.
    codec = Codec("mock://faultstream-test", topic_prefix="fs")
    registry = codec._registry
    command_id = codec.schema_id("recovery_command")
    event_id = codec.schema_id("worker_event")
    assert command_id != event_id
    assert registry.get_latest_version("fs.commands-value").schema_id == command_id
    assert registry.get_latest_version("fs.events-value").schema_id == event_id
    data = codec.encode(EVENT)
    assert struct.unpack(">I", data[1:5])[0] == event_id
    assert codec.decode(data) == EVENT


def test_registry_codec_fetches_writer_schema_for_an_id_it_did_not_register() -> None:
    writer = Codec("mock://faultstream-test-2")
    data = writer.encode(EVENT)
    reader = Codec("mock://faultstream-test-2")
    reader._registry = writer._registry  # the same registry, a fresh id cache
    assert reader.decode(data) == EVENT
    with pytest.raises(DecodeError, match="not in the registry"):
        reader.decode(b"\x00\x00\x00\x03\xe7" + data[5:])


def test_circuit_figures_the_core_publishes_round_trip_with_their_own_id_and_subject() -> None:
    core = FleetCore()
    core.process(EVENT)
    published = core.process(Tick(event_id="tick-1", ts=EVENT.ts + 1))
    assert {type(r) for r in published} == {CircuitFigures} and len(published) == 3
    codec = Codec()
    for record in published:  # built by the core without pydantic's constructor
        data = codec.encode(record)
        assert struct.unpack(">I", data[1:5])[0] == DEFAULT_SCHEMA_IDS["circuit_figures"] == 7
        assert codec.decode(data) == record
        assert derived_to_json(codec.decode(data)) == derived_to_json(record)
    registry = Codec("mock://faultstream-figures", topic_prefix="fs")
    figures_id = registry.schema_id("circuit_figures")
    assert registry._registry.get_latest_version("fs.figures-value").schema_id == figures_id
    assert registry.decode(registry.encode(published[0])) == published[0]
