"""The processor's hand-written input decoding (processors/decode.py) against the codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import EVENT, _fastavro_bytes, worker_events

from faultstream.events.codec import Codec
from faultstream.events.exceptions import DecodeError, FaultstreamError, InvalidEventError
from faultstream.events.models import EventKind, Operator, Tick, WorkerEvent
from faultstream.processors.decode import InputDecoder

CODEC = Codec()
DECODER = InputDecoder()


@given(worker_events())
def test_validated_and_trusted_decoding_equal_the_codecs_models(event: WorkerEvent) -> None:
    raw = CODEC.encode(event)
    expected = CODEC.decode_input(raw)
    for decoded in (DECODER.validated(raw), DECODER.trusted(raw)):
        assert decoded == expected == event
        assert decoded.model_dump() == expected.model_dump()
        assert type(decoded.kind) is EventKind


def test_control_records_take_the_codec() -> None:
    for record in (
        Tick(event_id="t", ts=5),
        Operator(
            event_id="o", ts=6, action="RESET", circuit_kind="worker", circuit_id="w", actor="me"
        ),
    ):
        raw = CODEC.encode(record)
        assert DECODER.validated(raw) == DECODER.trusted(raw) == record


def test_a_multi_block_attributes_map_reads_like_fastavro() -> None:
    # Block of 1 entry with its byte size (negative count), then a block of 1, then end.
    body = CODEC.encode(EVENT)
    head, tail = body[:-3], body[-3:]  # attributes end, checkpoint_seq, checkpoint_state
    assert tail == b"\x00\x00\x00"
    entry = b"\x02k\x02v"
    blocks = b"\x01" + bytes([len(entry) * 2]) + entry + b"\x02" + b"\x02x\x02y" + b"\x00"
    decoded = DECODER.validated(head + blocks + b"\x00\x00")
    assert decoded.attributes == {"k": "v", "x": "y"}


def test_a_contract_breaking_event_names_the_field() -> None:
    body = EVENT.model_dump() | {"task_type": None}  # FAILURE needs a task_type
    with pytest.raises(InvalidEventError) as caught:
        DECODER.validated(_fastavro_bytes("worker_event", body, 1))
    assert caught.value.field == "task_type"


def test_garbage_after_a_worker_event_header_is_a_decode_error() -> None:
    raw = CODEC.encode(EVENT)
    with pytest.raises(DecodeError, match="truncated"):
        DECODER.validated(raw[:-4])
    with pytest.raises(DecodeError, match="trailing"):
        DECODER.validated(raw + b"\x00")
    with pytest.raises(DecodeError, match="kind: enum index"):
        DECODER.validated(raw[:5] + b"\x04e1\x7e" + raw[9:])


@settings(max_examples=300)
@given(st.data())
def test_mutated_bytes_never_pass_what_the_codec_rejects(data: st.DataObject) -> None:
    raw = bytearray(CODEC.encode(data.draw(worker_events())))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(5, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(5, len(raw)))
    mutated = bytes(raw[:cut])
    try:
        decoded = DECODER.validated(mutated)
    except FaultstreamError:
        return
    assert decoded == CODEC.decode_input(mutated)
