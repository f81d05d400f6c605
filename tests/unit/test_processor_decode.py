"""The processor's hand-written input decoding (events/decode.py) against the codec."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import EVENT, _fastavro_bytes, worker_events

from faultstream.events.codec import Codec
from faultstream.events.decode import InputDecoder
from faultstream.events.exceptions import DecodeError, FaultstreamError, InvalidEventError
from faultstream.events.models import EventKind, Operator, Tick, WorkerEvent

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


def string_spans(event: WorkerEvent, raw: bytes) -> list[tuple[int, int]]:
    """Where the event's string values lie in its frame (their first occurrence after the
    header): bytes changed there keep the Avro framing, so the decoder reads on."""
    values = [event.event_id, event.worker_id, event.hardware_class, event.task_id,
              event.task_type, event.message, event.recovery_command_id,
              *event.attributes, *event.attributes.values()]  # fmt: skip
    spans = []
    for value in values:
        at = raw.find(value.encode(), 5) if value else -1
        if at >= 0:
            spans.append((at, at + len(value.encode())))
    return spans


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A worker event's frame with a few bytes changed. Two in three: ASCII characters of
    its string values become other printable ones (the framing holds, so the decoder reads
    on and mostly accepts); else bytes anywhere after the header, perhaps cut short."""
    event = draw(worker_events())
    raw = bytearray(CODEC.encode(event))
    ascii_in_strings = [
        at for start, end in string_spans(event, bytes(raw)) for at in range(start, end)
        if raw[at] < 0x80
    ]  # fmt: skip
    changes = draw(st.integers(1, 3))
    if ascii_in_strings and draw(st.integers(0, 2)):
        for _ in range(changes):
            raw[draw(st.sampled_from(ascii_in_strings))] = draw(st.integers(0x20, 0x7E))
        return bytes(raw)
    for _ in range(changes):
        raw[draw(st.integers(5, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(5, len(raw)))])


def test_mutated_bytes_never_pass_what_the_codec_rejects() -> None:
    taken: Counter[str] = Counter()

    # Derandomized by the profile (tests/conftest.py); the long profile explores afresh.
    @settings(max_examples=max(300, settings.default.max_examples), deadline=None)
    @given(mutated_frames())
    def judge(mutated: bytes) -> None:
        try:
            decoded = DECODER.validated(mutated)
        except FaultstreamError:
            taken["rejected"] += 1
            return
        taken["accepted"] += 1
        assert decoded == CODEC.decode_input(mutated)
        assert DECODER.trusted(mutated) == decoded

    judge()
    # Both paths ran often enough for the comparison to mean something (about 54 % of the
    # frames are accepted, 46 % rejected).
    examples = taken["accepted"] + taken["rejected"]
    assert taken["accepted"] >= 0.3 * examples and taken["rejected"] >= 0.2 * examples, taken
    assert examples >= 300
