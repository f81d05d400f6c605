"""Fast decoding of input records for the processor's hot path.

fastavro's `schemaless_reader` costs ~30 µs per small worker event (per-call set-up
dominates), more than the core itself. Worker events written with our own schema (the
default ids, no registry) are read here by hand instead, like `codec.encode_worker_event`
writes them; anything else (control records, other writer schemas) takes the codec.

- `validated(raw)`: the one full check, in ingest: size, Avro, then the pydantic model.
- `trusted(raw)`: for records ingest already validated (the decider): the same model,
  built without validation. Tests check both against `Codec.decode_input`.
- `trusted_frame(frame)`: every record of a frame, or DecodeError for the frame.

Whatever the bytes, these return records or raise DecodeError / InvalidEventError with the
reason, never another exception (tests/unit/test_decoder_fuzz.py): one escaping would
crash the processor on that record again after every restart.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from faultstream.events.admin import MAX_RECORD_BYTES
from faultstream.events.codec import DEFAULT_SCHEMA_IDS, HEADER, MAGIC, SCHEMAS, Codec
from faultstream.events.exceptions import DecodeError, FaultstreamError, InvalidEventError
from faultstream.events.models import EventKind, FailureType, InputRecord, WorkerEvent

from . import frames

_SCHEMA = json.loads(SCHEMAS["worker_event"].text)
_FIELDS = [f["name"] for f in _SCHEMA["fields"]]
_KINDS = list(EventKind)
_FAILURE_TYPES = list(FailureType)
if [f.value for f in _KINDS] != next(
    f["type"]["symbols"] for f in _SCHEMA["fields"] if f["name"] == "kind"
) or [f.value for f in _FAILURE_TYPES] != next(
    f["type"][1]["symbols"] for f in _SCHEMA["fields"] if f["name"] == "failure_type"
):
    raise RuntimeError("worker_event.avsc enums changed: update events/decode.py")
_HEADER_LEN = HEADER.size
_validate = WorkerEvent.model_validate
_new = WorkerEvent.__new__
_set = object.__setattr__


class _Truncated(Exception):
    pass


def _long(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    n = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise DecodeError("a varint longer than 10 bytes")


def _bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _long(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise _Truncated
    return data[pos:end], end


def _string(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _long(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise _Truncated
    return data[pos:end].decode(), end


def _branch(data: bytes, pos: int) -> tuple[bool, int]:
    """A ["null", T] union: True when T follows."""
    b = data[pos]
    if b == 0:
        return False, pos + 1
    if b == 2:
        return True, pos + 1
    raise DecodeError(f"union branch byte {b} is neither null (0) nor value (2)")


def _enum(data: bytes, pos: int, symbols: list[Any], field: str) -> tuple[Any, int]:
    index, pos = _long(data, pos)
    if not 0 <= index < len(symbols):
        raise DecodeError(f"{field}: enum index {index} out of range")
    return symbols[index], pos


def read_worker_event(data: bytes) -> dict[str, Any]:
    """The fields of a worker_event body after the 5-byte header (our schema)."""
    try:
        return _read_fields(data)
    except (_Truncated, IndexError):
        raise DecodeError("not a valid worker_event body (truncated)") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not a valid worker_event body (bad UTF-8: {exc.reason})") from None


def _read_fields(data: bytes) -> dict[str, Any]:
    pos = _HEADER_LEN
    event_id, pos = _string(data, pos)
    kind, pos = _enum(data, pos, _KINDS, "kind")
    ts, pos = _long(data, pos)
    worker_id, pos = _string(data, pos)
    hardware_class, pos = _string(data, pos)
    present, pos = _branch(data, pos)
    task_id = None
    if present:
        task_id, pos = _string(data, pos)
    present, pos = _branch(data, pos)
    task_type = None
    if present:
        task_type, pos = _string(data, pos)
    present, pos = _branch(data, pos)
    failure_type = None
    if present:
        failure_type, pos = _enum(data, pos, _FAILURE_TYPES, "failure_type")
    present, pos = _branch(data, pos)
    message = None
    if present:
        message, pos = _string(data, pos)
    attempt, pos = _long(data, pos)
    present, pos = _branch(data, pos)
    recovery_command_id = None
    if present:
        recovery_command_id, pos = _string(data, pos)
    attributes: dict[str, str] = {}
    while True:
        count, pos = _long(data, pos)
        if count == 0:
            break
        if count < 0:  # a block with its byte size
            count = -count
            _size, pos = _long(data, pos)
        for _ in range(count):
            key, pos = _string(data, pos)
            attributes[key], pos = _string(data, pos)
    present, pos = _branch(data, pos)
    checkpoint_seq = None
    if present:
        checkpoint_seq, pos = _long(data, pos)
    present, pos = _branch(data, pos)
    checkpoint_state = None
    if present:
        checkpoint_state, pos = _bytes(data, pos)
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} trailing bytes after the worker_event")
    return {
        "event_id": event_id,
        "kind": kind,
        "ts": ts,
        "worker_id": worker_id,
        "hardware_class": hardware_class,
        "task_id": task_id,
        "task_type": task_type,
        "failure_type": failure_type,
        "message": message,
        "attempt": attempt,
        "recovery_command_id": recovery_command_id,
        "attributes": attributes,
        "checkpoint_seq": checkpoint_seq,
        "checkpoint_state": checkpoint_state,
        "received_at": None,  # not on the wire: the broker's time travels in the frame
    }


class InputDecoder:
    """Input records from wire bytes, by hand for our own worker-event schema."""

    def __init__(
        self, schema_registry_url: str | None = None, *, topic_prefix: str = "faultstream"
    ) -> None:
        self.codec = Codec(schema_registry_url, topic_prefix=topic_prefix)
        # With a registry an id may name an older writer schema: every record takes the
        # codec, which resolves it.
        self._fast_header = (
            None if schema_registry_url else HEADER.pack(MAGIC, DEFAULT_SCHEMA_IDS["worker_event"])
        )

    def validated(self, raw: bytes) -> InputRecord:
        """Decode and fully validate; DecodeError / InvalidEventError name what is wrong
        (never another exception: whatever arrives is dead-lettered with that reason)."""
        if len(raw) > MAX_RECORD_BYTES:
            # Its frame would exceed what the `.ordered` topic and the producer accept.
            raise DecodeError(
                f"a record of {len(raw)} bytes; the processor forwards at most "
                f"{MAX_RECORD_BYTES} bytes"
            )
        if raw[:_HEADER_LEN] == self._fast_header:
            body = read_worker_event(raw)
            try:
                return _validate(body)
            except ValidationError as exc:
                raise InvalidEventError.from_validation(exc) from None
        return self.codec.decode_input(raw)

    def trusted(self, raw: bytes, received_at: int | None = None) -> InputRecord:
        """Decode a record that `validated` accepted before, skipping the checks, with
        the broker's append time it came in with (frames.unpack_stamped)."""
        if raw[:_HEADER_LEN] == self._fast_header:
            fields = read_worker_event(raw)
            fields["received_at"] = received_at
            return _trusted_event(fields)
        record = self.codec.decode_input(raw)
        return record if received_at is None else stamped(record, received_at)

    def trusted_frame(self, frame: bytes) -> list[InputRecord]:
        """Every record of a frame with its broker time, as `trusted` decodes it.

        All or nothing: DecodeError, naming the record at fault, when the frame or any record
        in it does not decode, so the caller can reject the frame whole before any record of
        it reaches the core (the projector rejects such a frame whole too)."""
        times, raws = frames.unpack_stamped(frame)
        trusted = self.trusted
        records: list[InputRecord] = []
        for index, raw in enumerate(raws):
            try:
                records.append(trusted(raw, times[index]))
            except FaultstreamError as exc:
                raise DecodeError(f"record {index} of {len(raws)} in the frame: {exc}") from None
        return records


def stamped(record: InputRecord, received_at: int) -> InputRecord:
    """`record` with its broker append time."""
    return record.model_copy(update={"received_at": received_at})


def _trusted_event(fields: dict[str, Any]) -> WorkerEvent:
    # What `model_construct` does, minus its per-field Python loop (~4x its cost here):
    # every field is present and of its validated type, enums included.
    event = _new(WorkerEvent)
    _set(event, "__dict__", fields)
    _set(event, "__pydantic_fields_set__", set(_FIELDS))
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event
