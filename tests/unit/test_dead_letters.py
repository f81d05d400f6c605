"""Dead letters stay small whatever they reject, and the size limits fit the contract's
largest record: a CHECKPOINT with 1 MiB of state travels, anything larger is refused with
a reason instead of stopping the processor."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import duckdb
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from fastavro import parse_schema, schemaless_writer

from faultstream.events import frames
from faultstream.events.admin import (
    MAX_MESSAGE_BYTES,
    MAX_RECORD_BYTES,
    topic_specs,
)
from faultstream.events.codec import HEADER, Codec
from faultstream.events.config import KafkaSettings
from faultstream.events.decode import InputDecoder
from faultstream.events.exceptions import DecodeError
from faultstream.events.models import (
    DEAD_LETTER_RAW_BYTES,
    MAX_CHECKPOINT_BYTES,
    DeadLetter,
    WorkerEvent,
)
from faultstream.processors.stream.ingest import ORDERED_KEY
from faultstream.projections.tables import HistoryWriter

# dead_letter.avsc as the first release wrote it, under the fixed schema id 5.
FIRST_DEAD_LETTER_SCHEMA = {
    "type": "record",
    "name": "DeadLetter",
    "namespace": "io.faultstream",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "source_topic", "type": "string"},
        {"name": "source_partition", "type": "int"},
        {"name": "source_offset", "type": "long"},
        {"name": "raw", "type": "bytes"},
        {"name": "reason", "type": "string"},
    ],
}


def letter_for(value: bytes | None) -> DeadLetter:
    return DeadLetter.of_record(
        event_id="dlq:fs.events:3:7",
        ts=1,
        source_topic="fs.events",
        source_partition=3,
        source_offset=7,
        value=value,
        reason="magic byte is 1, expected 0",
    )


def largest_valid_event() -> WorkerEvent:
    """The contract's largest record but for attributes: every field at its limit."""
    return WorkerEvent(
        event_id="e" * 128,
        kind="CHECKPOINT",
        ts=1_764_355_200_000,
        worker_id="w" * 128,
        hardware_class="h" * 64,
        task_id="t" * 128,
        message="é" * 4096,
        recovery_command_id="c" * 128,
        attributes={"model": "m" * 1000, "batch_size": "32"},
        checkpoint_seq=2**62,
        checkpoint_state=b"\xff" * MAX_CHECKPOINT_BYTES,
    )


def test_a_dead_letter_keeps_a_bounded_prefix_with_the_whole_values_size_and_hash() -> None:
    value = bytes(range(256)) * 4000  # 1,024,000 bytes
    letter = letter_for(value)
    assert letter.raw == value[:DEAD_LETTER_RAW_BYTES]
    assert letter.raw_size == len(value)
    assert letter.raw_sha256 == hashlib.sha256(value).hexdigest()
    assert len(Codec().encode(letter)) < DEAD_LETTER_RAW_BYTES + 1024
    assert Codec().decode(Codec().encode(letter)) == letter


def test_a_small_or_null_value_is_kept_whole() -> None:
    assert letter_for(b"\x01garbage").raw == b"\x01garbage"
    empty = letter_for(None)
    assert (empty.raw, empty.raw_size) == (b"", 0)
    assert empty.raw_sha256 == hashlib.sha256(b"").hexdigest()


def test_dead_letters_written_before_size_and_hash_still_read() -> None:
    out = io.BytesIO()
    out.write(HEADER.pack(0, 5))
    old = {
        "event_id": "d",
        "ts": 10,
        "source_topic": "fs.events",
        "source_partition": 3,
        "source_offset": 9,
        "raw": b"\x01garbage",
        "reason": "magic byte is 1",
    }
    schemaless_writer(out, parse_schema(FIRST_DEAD_LETTER_SCHEMA, named_schemas={}), old)
    letter = Codec().decode(out.getvalue())
    assert letter == DeadLetter(**old, raw_size=None, raw_sha256=None)
    assert Codec().decode_trusted(out.getvalue())[1]["raw_size"] is None


def test_the_decoder_refuses_a_record_past_the_limit_with_its_size() -> None:
    decoder = InputDecoder()
    too_large = Codec().encode(
        WorkerEvent(
            event_id="big", kind="HEARTBEAT", ts=1, worker_id="w", hardware_class="cpu",
            attributes={"blob": "x" * MAX_RECORD_BYTES},
        )
    )  # fmt: skip
    try:
        decoder.validated(too_large)
    except DecodeError as exc:
        assert str(len(too_large)) in str(exc) and str(MAX_RECORD_BYTES) in str(exc)
    else:
        raise AssertionError("a record past MAX_RECORD_BYTES was accepted")


def test_the_largest_valid_checkpoint_passes_and_its_frame_fits_every_limit() -> None:
    raw = Codec().encode(largest_valid_event())
    assert len(raw) <= MAX_RECORD_BYTES
    assert InputDecoder().validated(raw).checkpoint_state == b"\xff" * MAX_CHECKPOINT_BYTES
    # A record at the limit travels alone in its frame; with Kafka's record-batch overhead
    # it stays within what the producer sends and the topics accept.
    (frame,) = frames.pack_all([b"\x00" * MAX_RECORD_BYTES], [1_764_355_200_000])
    batch = DefaultRecordBatchBuilder.estimate_size_in_bytes(ORDERED_KEY, frame, [])
    assert batch <= MAX_MESSAGE_BYTES


def test_the_topics_a_record_passes_through_accept_the_largest_frame() -> None:
    limits = {
        spec.logical: int(spec.config.get("max.message.bytes", 0))
        for spec in topic_specs(KafkaSettings())
    }
    for logical in ("events", "control", "ordered", "dlq"):
        assert limits[logical] == MAX_MESSAGE_BYTES, logical


def test_the_history_keeps_the_size_and_hash_of_each_dead_letter(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    value = b"\x01" * (DEAD_LETTER_RAW_BYTES + 10)
    trusted = Codec().decode_trusted(Codec().encode(letter_for(b"\x02")))[1]  # the projector's
    with HistoryWriter(db) as writer:
        writer.append_dead_letters([letter_for(value), {**trusted, "event_id": "d2"}])
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT event_id, octet_length(raw), raw_size, raw_sha256 FROM dead_letters "
            "ORDER BY event_id"
        ).fetchall()
    finally:
        con.close()
    assert rows == [
        ("d2", 1, 1, hashlib.sha256(b"\x02").hexdigest()),
        ("dlq:fs.events:3:7", DEAD_LETTER_RAW_BYTES, len(value), hashlib.sha256(value).hexdigest()),
    ]
