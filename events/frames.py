"""Framed `<prefix>.ordered` records: many validated input records in one Kafka record.

The ingest stage forwards each batch of validated inputs as ONE frame, so the
decider (and every other reader of the topic) pays Kafka's per-message cost once per
batch, not once per event. A frame is

    version (1 byte, = 2) | count (4 bytes, big-endian)
    | count * received_at (8 bytes, big-endian, signed; -1 = not known)
    | count * (length (4 bytes) | payload)

where each payload is the original Avro record, byte for byte, and `received_at` is the
broker's append time of the record it came in (CIRCUITS.md "Decision time"): producers
never write it, so it travels beside the payload. The history order is (`.ordered` offset,
index within the frame); `seq(offset, index)` turns it into one integer, which caps a
frame at MAX_RECORDS records.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from faultstream.events.exceptions import DecodeError

VERSION = 2
UNKNOWN_TIME = -1
_HEADER = struct.Struct(">BI")
_LENGTH = struct.Struct(">I")
# seq = offset * MAX_RECORDS + index must stay unique and ordered: at most this many
# records per frame.
MAX_RECORDS = 65_536
# Keep a frame well under Kafka's default 1 MB message limit; one larger record (a big
# checkpoint) still travels alone in a frame of its own.
MAX_FRAME_BYTES = 512 * 1024
# Per record: its time and its length.
RECORD_OVERHEAD = 12


def pack(records: Sequence[bytes], received_at: Sequence[int] | None = None) -> bytes:
    """One frame holding `records` (1 to MAX_RECORDS of them) in order, each with its
    broker append time (`received_at`, epoch ms; None: not known)."""
    count = len(records)
    if not 0 < count <= MAX_RECORDS:
        raise ValueError(f"a frame holds 1 to {MAX_RECORDS} records, not {count}")
    if received_at is None:
        received_at = [UNKNOWN_TIME] * count
    elif len(received_at) != count:
        raise ValueError(f"{len(received_at)} times for {count} records")
    length = _LENGTH.pack
    parts = [_HEADER.pack(VERSION, count), struct.pack(f">{count}q", *received_at)]
    for record in records:
        parts.append(length(len(record)))
        parts.append(record)
    return b"".join(parts)


def unpack_stamped(frame: bytes) -> tuple[list[int | None], list[bytes]]:
    """(received_at or None, record) of one frame, as two lists in order; DecodeError when
    it is not a whole frame."""
    if not frame:
        raise DecodeError("empty frames")
    version = frame[0]
    if version != VERSION:
        raise DecodeError(f"frame version {version}, expected {VERSION}")
    size = len(frame)
    if size < _HEADER.size:
        raise DecodeError(f"frame of {size} bytes is shorter than its header")
    count = _HEADER.unpack_from(frame)[1]
    pos = _HEADER.size + 8 * count
    if pos > size:
        raise DecodeError(f"frame truncated in the times of its {count} records")
    times = [
        None if at == UNKNOWN_TIME else at
        for at in struct.unpack_from(f">{count}q", frame, _HEADER.size)
    ]
    records: list[bytes] = []
    length = _LENGTH.unpack_from
    for index in range(count):
        if pos + 4 > size:
            raise DecodeError(f"frame truncated at record {index} of {count}")
        (n,) = length(frame, pos)
        pos += 4
        end = pos + n
        if end > size:
            raise DecodeError(f"frame truncated in record {index} of {count}")
        records.append(frame[pos:end])
        pos = end
    if pos != size:
        raise DecodeError(f"{size - pos} trailing bytes after a frame")
    return times, records


def unpack(frame: bytes) -> list[bytes]:
    """The records of one frame, in order; DecodeError when it is not a whole frame."""
    return unpack_stamped(frame)[1]


def pack_all(records: Sequence[bytes], received_at: Sequence[int]) -> list[bytes]:
    """`records` (with their times) as consecutive frames, each within MAX_RECORDS and
    MAX_FRAME_BYTES."""
    frames: list[bytes] = []
    start = 0
    size = 0
    for i, record in enumerate(records):
        if i > start and (i - start >= MAX_RECORDS or size + len(record) > MAX_FRAME_BYTES):
            frames.append(pack(records[start:i], received_at[start:i]))
            start, size = i, 0
        size += len(record) + RECORD_OVERHEAD
    if start < len(records):
        frames.append(pack(records[start:], received_at[start:]))
    return frames


def seq(offset: int, index: int) -> int:
    """The history position of record `index` of the frame at `.ordered` `offset`."""
    return offset * MAX_RECORDS + index
