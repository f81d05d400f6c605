"""The projector's columnar decode of decisions batches (projections/columns.py) against the
codec's per-record decode (fastavro), the reference: the same fields for every kind of
record, and the same verdict (fields, or the reason) for anything malformed."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import _fastavro_bytes
from test_codec import worker_events as valid_worker_events
from test_history_dedupe_and_totals import event, every_kind_of_record, table_rows

from faultstream.events import frames as framing
from faultstream.events.codec import Codec
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import MAX_MILLIS, WorkerEvent
from faultstream.projections.columns import FAILURE_TYPES, KINDS, FramesDecoder
from faultstream.projections.schema import TABLES
from faultstream.projections.tables import HistoryWriter

CODEC = Codec()
DECODER = FramesDecoder(CODEC)
EVERY_FIELD_SET = event(
    "f9", "FAILURE", MAX_MILLIS, worker_id="wörker-🚀", hardware_class="cuda", task_id="t9",
    task_type="bert", failure_type="WORKER_CRASH", message="ünïcode\nmessage " * 20,
    attempt=2**31 - 1, recovery_command_id="c9",
    attributes={"batch_size": "32", "precision": "fp16", "": "", "ключ": "значение"},
)  # fmt: skip
CHECKPOINT_EVERY_FIELD = event(
    "k9", "CHECKPOINT", 7, task_id="t9", task_type="bert", checkpoint_seq=2**62,
    checkpoint_state=bytes(range(256)) * 40, attributes={"a": "b"},
)  # fmt: skip


def row_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A table row as the codec's dict: the map as a dict, without `seq`."""
    fields = without_unknown_time(row)
    del fields["seq"]
    fields["attributes"] = dict(fields["attributes"])
    return fields


def without_unknown_time(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields but an unknown `received_at`: it is not on the wire, the codec has none."""
    return {k: v for k, v in fields.items() if k != "received_at" or v is not None}


def columnar(values: list[bytes], first_offset: int = 0):
    return DECODER.decode(values, list(range(first_offset, first_offset + len(values))))


def codec_verdict(raw: bytes) -> tuple[str, Any]:
    try:
        name, fields = CODEC.decode_trusted(raw)
    except FaultstreamError as exc:
        return "rejected", str(exc)
    if name not in ("worker_event", "control_record"):
        return "rejected", f"a {name} on the `.ordered` topic"
    return "decoded", fields


def columnar_verdict(raw: bytes) -> tuple[str, Any]:
    out = columnar([framing.pack([raw])])
    if out.rejected:
        return "rejected", out.rejected[0]
    rows = [row_fields(r) for r in out.events.to_pylist()]
    rows += [without_unknown_time(r) for r in out.records]
    assert len(rows) == 1
    return "decoded", rows[0]


# --- equality with the codec ---------------------------------------------------------------


def test_every_kind_of_record_decodes_to_the_codecs_fields_with_its_seq() -> None:
    inputs, _, _ = every_kind_of_record()
    raws = [CODEC.encode(r) for r in [*inputs, EVERY_FIELD_SET, CHECKPOINT_EVERY_FIELD]]
    # Frames of five, one and the rest, at offsets 40, 41, 42, each record with the broker
    # time it came in with (none known for the frame of one).
    times = [1_000 + i for i in range(len(raws))]
    values = [
        framing.pack(raws[:5], times[:5]),
        framing.pack(raws[5:6]),
        framing.pack(raws[6:], times[6:]),
    ]
    out = columnar(values, first_offset=40)
    places = [(40, i) for i in range(5)] + [(41, 0)] + [(42, i) for i in range(len(raws) - 6)]
    expected = {}
    for place, raw, at in zip(places, raws, times, strict=True):
        name, fields = CODEC.decode_trusted(raw)
        if place[0] != 41:
            fields["received_at"] = at
        expected[framing.seq(*place)] = (name, fields)
    assert out.rejected == {}
    got = {row["seq"]: ("worker_event", row_fields(row)) for row in out.events.to_pylist()}
    got.update(
        (
            seq,
            ("control_record", {k: v for k, v in r.items() if v is not None or k != "received_at"}),
        )
        for seq, r in zip(out.record_seqs, out.records, strict=True)
    )
    assert got == expected
    assert [r["kind"] for r in out.records] == ["TICK", "OPERATOR", "CONFIG_CHANGED"]
    assert out.events.num_rows == len(raws) - 3


def test_columnar_rows_are_in_history_order_with_every_enum_symbol() -> None:
    records = [event(f"k{kind}", kind, 1, checkpoint_seq=1 if kind == "CHECKPOINT" else None)
               for kind in KINDS.to_pylist()]  # fmt: skip
    records += [event(f"f{failure}", "FAILURE", 2, failure_type=failure)
                for failure in FAILURE_TYPES.to_pylist()]  # fmt: skip
    out = columnar([framing.pack([CODEC.encode(r) for r in records])])
    rows = out.events.to_pylist()
    assert [r["seq"] for r in rows] == list(range(len(records)))
    assert [(r["kind"], r["failure_type"]) for r in rows] == [
        (r.kind, r.failure_type) for r in records
    ]


@settings(max_examples=150, deadline=None)
@given(st.lists(valid_worker_events(), min_size=1, max_size=8))
def test_any_valid_worker_event_decodes_to_the_codecs_fields(events: list[WorkerEvent]) -> None:
    raws = [CODEC.encode(e) for e in events]
    out = columnar([framing.pack(raws)])
    assert out.rejected == {} and out.records == []
    assert [row_fields(r) for r in out.events.to_pylist()] == [
        CODEC.decode_trusted(raw)[1] for raw in raws
    ]


text = st.text(max_size=12)
optional = st.none() | text
AVRO_BODIES = st.fixed_dictionaries(
    {
        "event_id": text,
        "kind": st.sampled_from(KINDS.to_pylist()),
        "ts": st.integers(-(2**63), 2**63 - 1),
        "worker_id": text,
        "hardware_class": text,
        "task_id": optional,
        "task_type": optional,
        "failure_type": st.none() | st.sampled_from(FAILURE_TYPES.to_pylist()),
        "message": optional,
        "attempt": st.integers(-(2**31), 2**31 - 1),
        "recovery_command_id": optional,
        "attributes": st.dictionaries(text, text, max_size=4),
        "checkpoint_seq": st.none() | st.integers(-(2**63), 2**63 - 1),
        "checkpoint_state": st.none() | st.binary(max_size=40),
    }
)


@settings(max_examples=200, deadline=None)
@given(AVRO_BODIES)
def test_any_body_the_schema_allows_decodes_as_fastavro_reads_it(body: dict[str, Any]) -> None:
    """Beyond the contract's checks too (negative numbers, empty ids): what fastavro wrote."""
    raw = _fastavro_bytes("worker_event", body, 1)
    assert columnar_verdict(raw) == ("decoded", body) == codec_verdict(raw)


# --- what the kernels leave to the codec -----------------------------------------------------


def varint(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    return bytes([*out, z])


def avro_string(value: str) -> bytes:
    raw = value.encode()
    return varint(len(raw)) + raw


def body_with_map(map_bytes: bytes) -> bytes:
    """A HEARTBEAT in the wire format whose attributes are `map_bytes`, written by hand."""
    head = avro_string("h") + varint(0) + varint(5) + avro_string("w") + avro_string("cpu")
    nulls = b"\x00" * 4 + varint(0) + b"\x00"  # task_id … message, attempt, command id
    return struct.pack(">bI", 0, 1) + head + nulls + map_bytes + b"\x00\x00"


def test_a_map_block_with_its_byte_size_decodes_as_the_codec_does() -> None:
    entries = avro_string("gpu") + avro_string("a100") + avro_string("zone") + avro_string("eu")
    raw = body_with_map(varint(-2) + varint(len(entries)) + entries + varint(0))
    assert columnar_verdict(raw) == codec_verdict(raw)
    assert columnar_verdict(raw)[1]["attributes"] == {"gpu": "a100", "zone": "eu"}


def test_a_repeated_map_key_is_left_to_the_codec_which_keeps_the_last_value() -> None:
    entries = avro_string("k") + avro_string("1") + avro_string("k") + avro_string("2")
    raw = body_with_map(varint(2) + entries + varint(0))
    out = columnar([framing.pack([raw])])
    assert out.events.num_rows == 0 and out.records[0]["attributes"] == {"k": "2"}
    assert columnar_verdict(raw) == codec_verdict(raw)


def test_a_record_of_another_schema_id_is_decoded_by_the_codec() -> None:
    raw = CODEC.encode(EVERY_FIELD_SET)
    decoder = FramesDecoder(CODEC, event_schema_id=99)  # as if ours had another id
    out = decoder.decode([framing.pack([raw], [7])], [0])
    assert out.events.num_rows == 0
    assert out.records == [{**CODEC.decode_trusted(raw)[1], "received_at": 7}]
    assert out.record_seqs == [0]


# --- undecodable records ---------------------------------------------------------------------


def test_an_undecodable_record_is_reported_with_its_reason_not_raised() -> None:
    good = CODEC.encode(EVERY_FIELD_SET)
    truncated = good[:-3]
    bad_utf8 = body_with_map(varint(1) + avro_string("k")[:1] + b"\xff" + avro_string("v") + b"\0")
    values = [*map(framing.pack, [[good], [truncated], [bad_utf8]]), b"", b"\x07junk"]
    values.append(framing.pack([good]))
    out = columnar(values)
    assert set(out.rejected) == {1, 2, 3, 4}
    assert out.rejected[1] == codec_verdict(truncated)[1]
    assert out.rejected[1].startswith("not a valid worker_event body")
    assert out.rejected[2] == codec_verdict(bad_utf8)[1]
    assert out.rejected[3] == "empty frames"
    assert out.rejected[4] == "frame version 7, expected 2"
    # The good messages on either side still decode.
    assert [r["seq"] for r in out.events.to_pylist()] == [0, framing.seq(5, 0)]


def test_a_frame_with_one_bad_record_is_rejected_whole_with_that_records_reason() -> None:
    inputs, derived, _ = every_kind_of_record()
    raws = [CODEC.encode(r) for r in inputs[:4]]
    bad = raws[2][:-1]
    frames = [framing.pack([raws[0], raws[1], bad, raws[3]]), framing.pack(raws)]
    out = columnar(frames)
    assert out.rejected == {0: codec_verdict(bad)[1]}
    assert [r["seq"] for r in out.events.to_pylist()] == [framing.seq(1, i) for i in range(4)]
    # A derived record inside a frame: not an input, so the frame is rejected.
    out = columnar([framing.pack([raws[0], CODEC.encode(derived[1])])])
    assert out.rejected == {0: "a recovery_command on the `.ordered` topic"}
    assert out.events.num_rows == 0


def test_an_enum_index_past_the_symbols_gets_the_codecs_reason() -> None:
    head = struct.pack(">bI", 0, 1) + avro_string("e")
    rest = avro_string("w") + avro_string("cpu") + b"\x00\x00"  # …, task_id, task_type null
    tail = b"\x00" + varint(0) + b"\x00" + b"\x00" + b"\x00\x00"  # message … checkpoint_state
    kind_past = head + varint(len(KINDS)) + varint(1) + rest + b"\x00" + tail
    failure_past = head + varint(4) + varint(1) + rest + b"\x02" + varint(len(FAILURE_TYPES)) + tail
    for raw in (kind_past, failure_past):
        verdict = columnar_verdict(raw)
        assert verdict[0] == "rejected" and verdict == codec_verdict(raw)
    ok = head + varint(4) + varint(1) + rest + b"\x02" + varint(len(FAILURE_TYPES) - 1) + tail
    assert columnar_verdict(ok) == codec_verdict(ok) == ("decoded", CODEC.decode_trusted(ok)[1])


def test_a_truncated_frame_gets_the_framing_reason() -> None:
    frame = framing.pack([CODEC.encode(EVERY_FIELD_SET)] * 3)
    out = columnar([frame[:-10], frame + b"\x00"])
    assert out.rejected == {
        0: "frame truncated in record 2 of 3",
        1: "1 trailing bytes after a frame",
    }


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_of_a_record_gets_the_codecs_verdict(data: st.DataObject) -> None:
    raw = bytearray(
        CODEC.encode(data.draw(st.sampled_from([EVERY_FIELD_SET, CHECKPOINT_EVERY_FIELD])))
    )
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(5, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.none() | st.integers(5, len(raw)))
    corrupted = bytes(raw[:cut])
    assert columnar_verdict(corrupted) == codec_verdict(corrupted)


# --- landing ---------------------------------------------------------------------------------


def test_columnar_events_land_the_same_rows_as_the_pydantic_models(tmp_path: Path) -> None:
    inputs, derived, letters = every_kind_of_record()
    inputs = [*inputs, EVERY_FIELD_SET, CHECKPOINT_EVERY_FIELD]
    with HistoryWriter(tmp_path / "models.duckdb") as writer:
        writer.append_inputs(inputs, [framing.seq(0, i) for i in range(len(inputs))])
        writer.append_derived(derived)
        writer.append_dead_letters(letters)
    out = columnar([framing.pack([CODEC.encode(r) for r in inputs])])
    with HistoryWriter(tmp_path / "columns.duckdb") as writer:
        writer.append_event_table(out.events)
        writer.append_inputs(out.records, out.record_seqs)
        writer.append_derived(derived)
        writer.append_dead_letters(letters)
    for table in TABLES:
        models = table_rows(tmp_path / "models.duckdb", table)
        assert models == table_rows(tmp_path / "columns.duckdb", table), table


def test_with_a_schema_registry_records_of_our_schema_still_decode_in_columns() -> None:
    codec = Codec("mock://columnar-decode", topic_prefix="fs-columnar")
    raws = [codec.encode(EVERY_FIELD_SET), codec.encode(CHECKPOINT_EVERY_FIELD)]
    out = FramesDecoder(codec).decode([framing.pack(raws)], [3])
    assert out.rejected == {} and out.records == []
    assert [row_fields(r) for r in out.events.to_pylist()] == [
        codec.decode_trusted(raw)[1] for raw in raws
    ]
