"""Every decoder of outside input either decodes or refuses with a reason.

Whatever bytes arrive on the input topics, the `.ordered` topic or in a JSON Lines file,
the stage reading them must answer with a record or with one of the project's errors
(DecodeError, InvalidEventError: both FaultstreamError) naming what is wrong, never with
another exception: one escaping the processor's ingest or decider crash-loops it on the
same record. Hypothesis runs derandomized, so these tests check the same inputs each run.
"""

from __future__ import annotations

import io
import json
import string
from typing import Any

from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultstream.events import frames
from faultstream.events.codec import DEFAULT_SCHEMA_IDS, HEADER, SCHEMAS, Codec
from faultstream.events.decode import InputDecoder
from faultstream.events.exceptions import DecodeError, FaultstreamError, InvalidEventError
from faultstream.events.jsonl import parse_input_line
from faultstream.events.models import (
    ConfigChanged,
    EventKind,
    FailureType,
    Operator,
    Tick,
    WorkerEvent,
)

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DECODER = InputDecoder()
CODEC = Codec()
INPUT_TYPES = (WorkerEvent, Tick, Operator, ConfigChanged)


def _valid_records() -> list[bytes]:
    base = {"ts": 1_764_355_200_000, "worker_id": "gpu-07", "hardware_class": "cuda"}
    records = [
        WorkerEvent(event_id="hb", kind="HEARTBEAT", **base),
        WorkerEvent(
            event_id="f1", kind="FAILURE", task_id="t1", task_type="bert",
            failure_type="RESOURCE_EXHAUSTION", message="CUDA out of memory", attempt=2,
            recovery_command_id="cmd-1", attributes={"batch_size": "32", "précision": "fp16"},
            **base,
        ),
        WorkerEvent(
            event_id="cp", kind="CHECKPOINT", task_id="t1", checkpoint_seq=7,
            checkpoint_state=bytes(range(256)), **base,
        ),
        Tick(event_id="tick", ts=5),
        Operator(
            event_id="op", ts=6, action="FORCE_OPEN", circuit_kind="task_type",
            circuit_id="bert", actor="ana",
        ),
        ConfigChanged(event_id="cfg", ts=7, config={"recovery": {"max_retries": 5}}, actor="t"),
    ]  # fmt: skip
    return [CODEC.encode(record) for record in records]


VALID = _valid_records()


def _header(name: str) -> bytes:
    return HEADER.pack(0, DEFAULT_SCHEMA_IDS[name])


def assert_decodes_or_refuses(decode: Any, data: Any, accepted: tuple[type, ...]) -> None:
    """`decode(data)` returns one of `accepted` or raises a FaultstreamError with a reason."""
    try:
        record = decode(data)
    except (DecodeError, InvalidEventError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a reason"
        return
    assert isinstance(record, accepted), type(record)


@st.composite
def mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A valid record or frame with a few bytes flipped, cut, inserted or repeated: the
    inputs that get past the first checks and into the body."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "cut" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "truncate":
            del data[at:]
        elif action == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


def with_header(name: str, body: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return body.map(lambda b: _header(name) + b)


# --- the Avro input decoder (ingest's one full check) ----------------------------------


RAW_INPUTS = st.one_of(
    st.binary(max_size=64),
    with_header("worker_event", st.binary(max_size=200)),
    with_header("control_record", st.binary(max_size=200)),
    with_header("dead_letter", st.binary(max_size=64)),
    st.binary(min_size=5, max_size=5).map(lambda b: b"\x00" + b[1:]),  # unknown ids
    mutated(VALID),
)


@FUZZ
@given(RAW_INPUTS)
def test_input_decoder_decodes_or_refuses_any_bytes(raw: bytes) -> None:
    assert_decodes_or_refuses(DECODER.validated, raw, INPUT_TYPES)


def _avro(name: str, body: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(_header(name))
    schemaless_writer(out, SCHEMAS[name].parsed, body)
    return out.getvalue()


LONGS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**63 - 1]))
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(string.printable, min_size=120, max_size=140),  # around the 128-char limits
    st.sampled_from(["", " ", "\x00", "é" * 70, "🙂" * 40]),
)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


WORKER_EVENT_BODIES = st.fixed_dictionaries(
    {
        "event_id": TEXT,
        "kind": st.sampled_from(list(EventKind)),
        "ts": LONGS,
        "worker_id": TEXT,
        "hardware_class": TEXT,
        "task_id": _optional(TEXT),
        "task_type": _optional(TEXT),
        "failure_type": _optional(st.sampled_from(list(FailureType))),
        "message": _optional(st.one_of(TEXT, st.just("x" * 4097))),
        "attempt": LONGS,
        "recovery_command_id": _optional(TEXT),
        "attributes": st.dictionaries(TEXT, TEXT, max_size=3),
        "checkpoint_seq": _optional(LONGS),
        "checkpoint_state": _optional(st.binary(max_size=32)),
    }
)


@FUZZ
@given(WORKER_EVENT_BODIES)
def test_input_decoder_decodes_or_refuses_any_worker_event_fields(body: dict[str, Any]) -> None:
    # Well-formed Avro with any values: the contract's checks, not the wire format's.
    assert_decodes_or_refuses(DECODER.validated, _avro("worker_event", body), INPUT_TYPES)


JSON_TEXT = st.one_of(
    st.text(max_size=60),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    ).map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # nesting deeper than the parser
    st.integers(4000, 6000).map(lambda n: "9" * n),  # an integer Python refuses to parse
    st.sampled_from(['{"recovery": {"max_retries": 5}}', '{"a": NaN}', '"\\ud800"']),
)
CONTROL_BODIES = st.fixed_dictionaries(
    {
        "event_id": TEXT,
        "kind": st.sampled_from(["TICK", "OPERATOR", "CONFIG_CHANGED"]),
        "ts": LONGS,
        "action": _optional(st.sampled_from(["RESET", "FORCE_OPEN"])),
        "circuit_kind": _optional(st.sampled_from(["worker", "hardware_class", "task_type"])),
        "circuit_id": _optional(TEXT),
        "actor": _optional(TEXT),
        "config": _optional(JSON_TEXT),
    }
)


@FUZZ
@given(CONTROL_BODIES)
def test_input_decoder_decodes_or_refuses_any_control_fields(body: dict[str, Any]) -> None:
    assert_decodes_or_refuses(DECODER.validated, _avro("control_record", body), INPUT_TYPES)


# --- frame (the decider's input) ---------------------------------------------


def _frames() -> list[bytes]:
    return [
        frames.pack(VALID[:1], [1_764_355_200_123]),
        frames.pack(VALID),
        frames.pack([b"", b"\x00"]),
    ]


FRAMES = st.one_of(st.binary(max_size=64), mutated(_frames()))


@FUZZ
@given(FRAMES)
def test_frame_unpacking_gives_records_or_refuses(frame: bytes) -> None:
    assert_decodes_or_refuses(frames.unpack, frame, (list,))


@FUZZ
@given(FRAMES)
def test_the_deciders_frame_decoding_gives_every_record_or_refuses_the_frame(frame: bytes) -> None:
    try:
        records = DECODER.trusted_frame(frame)
    except DecodeError as exc:  # the decider dead-letters the whole frame with this reason
        assert str(exc).strip()
        return
    assert all(isinstance(record, INPUT_TYPES) for record in records)


# --- JSON Lines (replay's input) --------------------------------------------------------


def _lines() -> list[bytes]:
    return [CODEC.decode(raw).model_dump_json().encode() for raw in VALID]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
FIELD_NAMES = [
    *WorkerEvent.model_fields,
    "action",
    "circuit_kind",
    "circuit_id",
    "actor",
    "config",
    "type",
]
JSON_OBJECTS = st.dictionaries(
    st.sampled_from(FIELD_NAMES),
    st.one_of(
        JSON_VALUES,
        st.sampled_from([*EventKind, "TICK", "OPERATOR", "CONFIG_CHANGED", "worker", "RESET"]),
    ),
).map(json.dumps)
LINES = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80),
    JSON_OBJECTS,
    mutated(_lines()),
    st.integers(1, 3000).map(lambda n: '{"kind": "TICK", "x": ' + "[" * n + "]" * n + "}"),
    st.integers(4000, 6000).map(lambda n: '{"kind": "TICK", "event_id": "t", "ts": ' + "9" * n),
)


@FUZZ
@given(LINES)
def test_json_lines_parser_gives_a_record_or_a_reason(line: str | bytes) -> None:
    assert_decodes_or_refuses(parse_input_line, line, INPUT_TYPES)


def test_the_fuzzed_decoders_do_refuse_what_they_must() -> None:
    # The properties above hold trivially for a decoder that accepts everything.
    for decode, bad in [
        (DECODER.validated, b"\x00\x00\x00\x00\x01garbage"),
        (frames.unpack, b"\x02\x00\x00\x00\x05"),
        (DECODER.trusted_frame, frames.pack([VALID[0], b"\x00\x00\x00\x00\x01"])),
        (parse_input_line, '{"kind": "HEARTBEAT"}'),
    ]:
        try:
            decode(bad)
        except FaultstreamError:
            continue
        raise AssertionError(f"{decode.__qualname__} accepted {bad!r}")
    assert all(isinstance(DECODER.validated(raw), INPUT_TYPES) for raw in VALID)
