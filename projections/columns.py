"""Decisions records decoded a consumed batch at a time, straight into Arrow columns.

The projector's hot path. The values of a batch of `<prefix>.ordered` messages are
joined into one buffer; numba kernels (avro_kernel.py) split the frames and decode every
worker event into spans and numbers per field, and the `events` rows come out as one Arrow
table (EVENTS columns, `seq` included) without a Python object per record.

Whatever the kernels leave alone — control records, records of another schema id, anything
unusual — is decoded one by one by `Codec.decode_trusted`, the reference. A message holding
a record the codec cannot decode, or a record that is not an input, is rejected whole with
the reason (a bad frame's reason comes from `frames.unpack`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from faultstream.events.codec import SCHEMAS, Codec
from faultstream.events.exceptions import DecodeError, FaultstreamError
from faultstream.events.frames import MAX_RECORDS, UNKNOWN_TIME
from faultstream.events.frames import unpack_stamped as unpack_frame

from . import avro_kernel as k
from .schema import EVENTS, arrow_schema

log = logging.getLogger(__name__)
INPUT_SCHEMAS = ("worker_event", "control_record")
_EVENT_FIELDS = [
    "event_id", "kind", "ts", "worker_id", "hardware_class", "task_id", "task_type",
    "failure_type", "message", "attempt", "recovery_command_id", "attributes",
    "checkpoint_seq", "checkpoint_state",
]  # fmt: skip
_SCHEMA = json.loads(SCHEMAS["worker_event"].text)
if [f["name"] for f in _SCHEMA["fields"]] != _EVENT_FIELDS:
    raise RuntimeError("worker_event.avsc changed: update projections/avro_kernel.py")


def _symbols(name: str) -> list[str]:
    (spec,) = [f["type"] for f in _SCHEMA["fields"] if f["name"] == name]
    return (spec[1] if isinstance(spec, list) else spec)["symbols"]


KINDS = pa.array(_symbols("kind"), pa.string())
FAILURE_TYPES = pa.array(_symbols("failure_type"), pa.string())
_STRING = pa.string()
_EVENTS_SCHEMA = arrow_schema(EVENTS)
_MAP_TYPE = _EVENTS_SCHEMA.field("attributes").type
# Keeps every offset of a kernel call within Arrow's int32 offsets.
_MAX_BUFFER = (1 << 31) - 1


@dataclass
class DecodedDecisions:
    """One batch of frames, decoded."""

    events: pa.Table  # worker events, EVENTS columns with `seq`, in message order
    records: list[dict[str, Any]] = field(default_factory=list)  # codec-decoded inputs
    record_seqs: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # message index -> reason


class FramesDecoder:
    """Decodes batches of frames values; `codec` decodes what the kernels leave."""

    def __init__(self, codec: Codec, event_schema_id: int | None = None) -> None:
        self.codec = codec
        self._event_schema_id = event_schema_id

    @property
    def event_schema_id(self) -> int:
        """The id of records written with our own worker_event schema exactly (asked once;
        with a schema registry that is a call to it). -1 while it cannot be known: every
        record then goes through the codec, as it would without the kernels."""
        if self._event_schema_id is None:
            try:
                self._event_schema_id = self.codec.schema_id("worker_event")
            except Exception as exc:  # the registry's client raises its own errors
                log.warning("worker_event schema id unknown, decoding one by one: %s", exc)
                return -1
        return self._event_schema_id

    def decode(self, values: Sequence[bytes], offsets: Sequence[int]) -> DecodedDecisions:
        """`values[m]` is the value of the frames at `offsets[m]`."""
        sizes = np.fromiter(map(len, values), np.int64, len(values))
        if len(values) > 1 and int(sizes.sum()) > _MAX_BUFFER:
            half = len(values) // 2
            return _concat(
                self.decode(values[:half], offsets[:half]),
                self.decode(values[half:], offsets[half:]),
                half,
            )
        bounds = np.zeros(len(values) + 1, np.int64)
        np.cumsum(sizes, out=bounds[1:])
        buf = np.frombuffer(b"".join(values), np.uint8)
        frame_status, starts, ends, owner, index, received = k.split_frames(buf, bounds)
        fields = k.decode_worker_events(
            buf, starts, ends, self.event_schema_id, len(KINDS), len(FAILURE_TYPES)
        )
        status = fields[0]
        message_offsets = np.asarray(offsets, np.int64)
        # Records the kernels left, as (message, index in frame, received_at, bytes), in
        # history order.
        slow: list[tuple[int, int, int | None, bytes]] = []
        rejected: dict[int, str] = {}
        for m in np.flatnonzero(frame_status).tolist():
            try:
                times, records = unpack_frame(values[m])
            except DecodeError as exc:
                rejected[m] = str(exc)
                continue
            slow.extend((m, i, *pair) for i, pair in enumerate(zip(times, records, strict=True)))
        for r in np.flatnonzero(status).tolist():
            at = int(received[r])
            record = buf[starts[r] : ends[r]].tobytes()
            slow.append((int(owner[r]), int(index[r]), None if at == UNKNOWN_TIME else at, record))
        slow.sort(key=lambda item: item[:2])
        decoded = self._decode_slow(slow, rejected)
        out = DecodedDecisions(events=_EVENTS_SCHEMA.empty_table(), rejected=rejected)
        for m, i, record in decoded:
            if m not in rejected:
                out.records.append(record)
                out.record_seqs.append(int(message_offsets[m]) * MAX_RECORDS + i)
        rows = np.flatnonzero(status == k.OK)
        if rejected:
            rows = rows[~np.isin(owner[rows], np.fromiter(rejected, np.int64))]
        if len(rows):
            seqs = message_offsets[owner[rows]] * MAX_RECORDS + index[rows]
            out.events = _events_table(buf, fields, rows, seqs, received[rows])
        return out

    def _decode_slow(
        self, slow: list[tuple[int, int, int | None, bytes]], rejected: dict[int, str]
    ) -> list[tuple[int, int, dict[str, Any]]]:
        """Codec-decoded records; a message's reason is its first undecodable record, else
        its first record that is not an input (the order the per-record path checked)."""
        decoded: list[tuple[int, int, dict[str, Any]]] = []
        foreign: dict[int, str] = {}
        for m, i, received_at, raw in slow:
            if m in rejected:
                continue
            try:
                name, record = self.codec.decode_trusted(raw)
            except FaultstreamError as exc:
                rejected[m] = str(exc)
                continue
            record["received_at"] = received_at
            if name not in INPUT_SCHEMAS:
                foreign.setdefault(m, f"a {name} on the `.ordered` topic")
            decoded.append((m, i, record))
        for m, reason in foreign.items():
            rejected.setdefault(m, reason)
        return decoded


def _events_table(
    buf: np.ndarray,
    fields: tuple[np.ndarray, ...],
    rows: np.ndarray,
    seqs: np.ndarray,
    received: np.ndarray,
) -> pa.Table:
    (_, span_start, span_len, kind, ts, failure_type, attempt, checkpoint_seq,
     has_checkpoint_seq, map_offsets, key_start, key_len, value_start,
     value_len) = fields  # fmt: skip

    def text(column: int, type_: pa.DataType = _STRING) -> pa.Array:
        return _spans(buf, span_start[column], span_len[column], rows, type_)

    entry_offsets, entries = k.map_entries(map_offsets, rows)
    attributes = pa.MapArray.from_arrays(
        pa.array(entry_offsets),
        _spans(buf, key_start, key_len, entries, _STRING),
        _spans(buf, value_start, value_len, entries, _STRING),
        type=_MAP_TYPE,
    )
    failure = failure_type[rows]
    columns = [
        text(k.S_EVENT_ID),
        KINDS.take(pa.array(kind[rows])),
        pa.array(ts[rows]),
        text(k.S_WORKER_ID),
        text(k.S_HARDWARE_CLASS),
        text(k.S_TASK_ID),
        text(k.S_TASK_TYPE),
        FAILURE_TYPES.take(pa.array(failure, mask=failure < 0)),
        text(k.S_MESSAGE),
        pa.array(attempt[rows]),
        text(k.S_RECOVERY_COMMAND_ID),
        attributes,
        pa.array(checkpoint_seq[rows], mask=~has_checkpoint_seq[rows]),
        text(k.S_CHECKPOINT_STATE, pa.binary()),
        pa.array(received, mask=received == UNKNOWN_TIME),
        pa.array(seqs),
    ]
    return pa.Table.from_arrays(columns, schema=_EVENTS_SCHEMA)


def _spans(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray, type_: pa.DataType
) -> pa.Array:
    """The byte spans `rows` picks as one Arrow string/binary array; length -1 is null."""
    offsets, data = k.gather(buf, starts, lengths, rows)
    valid = lengths[rows] >= 0
    nulls = len(rows) - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(
        type_, len(rows), [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], nulls
    )


def _concat(a: DecodedDecisions, b: DecodedDecisions, shift: int) -> DecodedDecisions:
    """Two halves' results as one; `b`'s message indexes start at `shift`."""
    rejected = dict(a.rejected)
    rejected.update({m + shift: reason for m, reason in b.rejected.items()})
    return DecodedDecisions(
        events=pa.concat_tables([a.events, b.events]),
        records=a.records + b.records,
        record_seqs=a.record_seqs + b.record_seqs,
        rejected=rejected,
    )
