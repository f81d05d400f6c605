"""Framed `<prefix>.decisions` records: many validated input records in one Kafka record.

The ingest stage forwards each batch of validated inputs as ONE decisions record, so the
decider (and every other reader of the topic) pays Kafka's per-message cost once per
batch, not once per event. A frame is

    version (1 byte, = 1) | count (4 bytes, big-endian) | count * (length (4 bytes) | payload)

where each payload is the original Avro record, byte for byte. The history order is
(decisions offset, index within the frame); `seq(offset, index)` turns it into one
integer, which caps a frame at MAX_RECORDS records.

A bare Avro record in the Confluent wire format (magic byte 0, as the unframed processor
wrote) reads as a frame of one, so a decisions topic written before framing still reads.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from faultstream.events.exceptions import DecodeError

VERSION = 1
_HEADER = struct.Struct(">BI")
_LENGTH = struct.Struct(">I")
_AVRO_MAGIC = 0
# seq = offset * MAX_RECORDS + index must stay unique and ordered: at most this many
# records per frame.
MAX_RECORDS = 65_536
# Keep a frame well under Kafka's default 1 MB message limit; one larger record (a big
# checkpoint) still travels alone in a frame of its own.
MAX_FRAME_BYTES = 512 * 1024


def pack(records: Sequence[bytes]) -> bytes:
    """One frame holding `records` (1 to MAX_RECORDS of them) in order."""
    count = len(records)
    if not 0 < count <= MAX_RECORDS:
        raise ValueError(f"a frame holds 1 to {MAX_RECORDS} records, not {count}")
    length = _LENGTH.pack
    parts = [_HEADER.pack(VERSION, count)]
    for record in records:
        parts.append(length(len(record)))
        parts.append(record)
    return b"".join(parts)


def unpack(frame: bytes) -> list[bytes]:
    """The records of one frame, in order; DecodeError when it is not a whole frame."""
    if not frame:
        raise DecodeError("empty decisions record")
    version = frame[0]
    if version == _AVRO_MAGIC:
        return [frame]  # a bare record, written before framing
    if version != VERSION:
        raise DecodeError(f"decisions frame version {version}, expected {VERSION}")
    size = len(frame)
    if size < _HEADER.size:
        raise DecodeError(f"decisions frame of {size} bytes is shorter than its header")
    count = _HEADER.unpack_from(frame)[1]
    records: list[bytes] = []
    pos = _HEADER.size
    length = _LENGTH.unpack_from
    for index in range(count):
        if pos + 4 > size:
            raise DecodeError(f"decisions frame truncated at record {index} of {count}")
        (n,) = length(frame, pos)
        pos += 4
        end = pos + n
        if end > size:
            raise DecodeError(f"decisions frame truncated in record {index} of {count}")
        records.append(frame[pos:end])
        pos = end
    if pos != size:
        raise DecodeError(f"{size - pos} trailing bytes after a decisions frame")
    return records


def pack_all(records: Sequence[bytes]) -> list[bytes]:
    """`records` as consecutive frames, each within MAX_RECORDS and MAX_FRAME_BYTES."""
    frames: list[bytes] = []
    start = 0
    size = 0
    for i, record in enumerate(records):
        if i > start and (i - start >= MAX_RECORDS or size + len(record) > MAX_FRAME_BYTES):
            frames.append(pack(records[start:i]))
            start, size = i, 0
        size += len(record) + 4
    if start < len(records):
        frames.append(pack(records[start:]))
    return frames


def seq(offset: int, index: int) -> int:
    """The history position of record `index` of the frame at decisions `offset`."""
    return offset * MAX_RECORDS + index


def iter_records(frames: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """(seq, record) for every record of (offset, frame) pairs, in history order."""
    for offset, frame in frames:
        for index, record in enumerate(unpack(frame)):
            yield seq(offset, index), record
