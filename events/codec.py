"""Avro codec in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, body.

The schemas ship in `faultstream.schemas`. Without a schema registry every schema has a
fixed id (DEFAULT_SCHEMA_IDS); with one, ids are registered under `<topic>-value` and
unknown ids are fetched from it, so records written with an older or newer schema still
decode (Avro resolves the writer's schema against ours).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import BaseModel, ValidationError

from .exceptions import DecodeError, InvalidEventError
from .models import (
    Alert,
    CircuitFigures,
    CircuitStateChanged,
    ConfigChanged,
    DeadLetter,
    InputRecord,
    Operator,
    RecoveryCommand,
    Tick,
    WorkerEvent,
)

MAGIC = 0
HEADER = struct.Struct(">bI")

DEFAULT_SCHEMA_IDS: dict[str, int] = {
    "worker_event": 1,
    "control_record": 2,
    "circuit_state_changed": 3,
    "recovery_command": 4,
    "dead_letter": 6,
    "circuit_figures": 7,
    "alert": 8,
}
# Fixed ids that earlier releases wrote before fields were added to a schema: such a record
# is read with that earlier writer schema (ours minus the fields added since), and Avro
# fills in their defaults. Without a registry this is what keeps old records readable.
EARLIER_SCHEMA_IDS: dict[int, tuple[str, tuple[str, ...]]] = {
    5: ("dead_letter", ("raw_size", "raw_sha256")),
}
# The topic (after the prefix) each schema is written to: the registry subject's stem.
SCHEMA_TOPICS: dict[str, str] = {
    "worker_event": "events",
    "control_record": "control",
    "circuit_state_changed": "circuits",
    "recovery_command": "commands",
    "dead_letter": "dlq",
    "circuit_figures": "figures",
    "alert": "alerts",
}
_SCHEMA_OF_MODEL: dict[type[BaseModel], str] = {
    WorkerEvent: "worker_event",
    Tick: "control_record",
    Operator: "control_record",
    ConfigChanged: "control_record",
    CircuitStateChanged: "circuit_state_changed",
    RecoveryCommand: "recovery_command",
    DeadLetter: "dead_letter",
    CircuitFigures: "circuit_figures",
    Alert: "alert",
}
_CONTROL_MODELS: dict[str, type[BaseModel]] = {
    "TICK": Tick,
    "OPERATOR": Operator,
    "CONFIG_CHANGED": ConfigChanged,
}


@dataclass(frozen=True)
class AvroSchema:
    name: str
    fullname: str
    text: str
    parsed: Any


def load_schema(name: str) -> AvroSchema:
    """One schema of the `faultstream.schemas` package, parsed for fastavro."""
    text = resources.files("faultstream.schemas").joinpath(f"{name}.avsc").read_text()
    raw = json.loads(text)
    fullname = f"{raw['namespace']}.{raw['name']}"
    # Each schema gets its own named-type table: several declare the same enums.
    return AvroSchema(name, fullname, text, parse_schema(raw, named_schemas={}))


SCHEMAS: dict[str, AvroSchema] = {name: load_schema(name) for name in DEFAULT_SCHEMA_IDS}
_SCHEMA_BY_FULLNAME = {schema.fullname: schema for schema in SCHEMAS.values()}


class Codec:
    """Encodes any record model to wire bytes and decodes them back to models."""

    def __init__(
        self, schema_registry_url: str | None = None, *, topic_prefix: str = "faultstream"
    ) -> None:
        self._topic_prefix = topic_prefix
        self._registry = None
        # schema name -> header bytes; schema id -> (writer schema, our schema)
        self._headers: dict[str, bytes] = {}
        self._readers: dict[int, tuple[Any, AvroSchema]] = {}
        if schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            # new_client gives the in-memory MockSchemaRegistryClient for "mock://" URLs.
            self._registry = SchemaRegistryClient.new_client({"url": schema_registry_url})
        else:
            for name, schema_id in DEFAULT_SCHEMA_IDS.items():
                self._headers[name] = HEADER.pack(MAGIC, schema_id)
                self._readers[schema_id] = (SCHEMAS[name].parsed, SCHEMAS[name])
            for schema_id, (name, added) in EARLIER_SCHEMA_IDS.items():
                self._readers[schema_id] = (_without(SCHEMAS[name], added), SCHEMAS[name])
        self._event_header = self._header("worker_event") if not self._registry else None

    # --- schema ids --------------------------------------------------------------------

    def schema_id(self, name: str) -> int:
        """The id that records of schema `name` carry (registering it when needed)."""
        return HEADER.unpack(self._header(name))[1]

    def _header(self, name: str) -> bytes:
        header = self._headers.get(name)
        if header is None:
            header = HEADER.pack(MAGIC, self._register(name))
            self._headers[name] = header
        return header

    def _register(self, name: str) -> int:
        from confluent_kafka.schema_registry import Schema

        assert self._registry is not None
        subject = f"{self._topic_prefix}.{SCHEMA_TOPICS[name]}-value"
        schema = SCHEMAS[name]
        schema_id = self._registry.register_schema(subject, Schema(schema.text, "AVRO"))
        self._readers[schema_id] = (schema.parsed, schema)
        return schema_id

    def _reader(self, schema_id: int) -> tuple[Any, AvroSchema]:
        reader = self._readers.get(schema_id)
        if reader is not None:
            return reader
        if self._registry is None:
            raise DecodeError(f"unknown schema id {schema_id}")
        try:
            writer_text = self._registry.get_schema(schema_id).schema_str
        except Exception as exc:
            raise DecodeError(f"schema id {schema_id} not in the registry ({exc})") from None
        writer = json.loads(writer_text)
        ours = _SCHEMA_BY_FULLNAME.get(f"{writer.get('namespace')}.{writer.get('name')}")
        if ours is None:
            raise DecodeError(f"schema id {schema_id} is not a faultstream record")
        reader = (parse_schema(writer, named_schemas={}), ours)
        self._readers[schema_id] = reader
        return reader

    # --- encode ------------------------------------------------------------------------

    def encode(self, record: BaseModel) -> bytes:
        if type(record) is WorkerEvent:
            return self.encode_worker_event(record)
        name = _SCHEMA_OF_MODEL.get(type(record))
        if name is None:
            raise TypeError(f"no Avro schema for {type(record).__name__}")
        body = _control_to_avro(record) if name == "control_record" else record.model_dump()
        return self._write(self._header(name), SCHEMAS[name].parsed, body)

    def encode_worker_event(self, event: WorkerEvent) -> bytes:
        """The hot path: Avro written by hand (a third of fastavro's per-call cost for this
        small record); tests check it byte for byte against fastavro."""
        header = self._event_header or self._header("worker_event")
        return header + _worker_event_body(event)

    @staticmethod
    def _write(header: bytes, parsed: Any, body: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(header)
        schemaless_writer(out, parsed, body)
        return out.getvalue()

    # --- decode ------------------------------------------------------------------------

    def decode(self, data: bytes) -> BaseModel:
        """Any faultstream record; DecodeError for bytes that are not one, InvalidEventError
        for a record that decodes but breaks the contract."""
        name, body = self._read(data)
        return _to_model(name, body)

    def decode_input(self, data: bytes) -> InputRecord:
        """A worker event or control record; any other record is a DecodeError."""
        name, body = self._read(data)
        if name not in ("worker_event", "control_record"):
            raise DecodeError(f"expected a worker event or control record, got {name}")
        return _to_model(name, body)  # type: ignore[return-value]

    def decode_trusted(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """(schema name, Avro fields) without the pydantic models: for records the processor
        already validated (the projector's input). Still a DecodeError for bytes that are
        not a faultstream record; contract checks beyond the schema are skipped. A control
        record's `config` stays JSON text, as the history stores it."""
        return self._read(data)

    def _read(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if len(data) < HEADER.size:
            raise DecodeError(f"{len(data)} bytes is shorter than the 5-byte header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"magic byte is {magic}, expected {MAGIC}")
        writer, ours = self._reader(schema_id)
        buf = io.BytesIO(data)
        buf.seek(HEADER.size)
        try:
            body = schemaless_reader(buf, writer, ours.parsed)
        except Exception as exc:  # fastavro raises EOFError, IndexError, UnicodeError, …
            raise DecodeError(
                f"not a valid {ours.name} body ({type(exc).__name__}: {exc})"
            ) from None
        if buf.tell() != len(data):
            raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after the {ours.name}")
        if not isinstance(body, dict):
            raise DecodeError(f"not a valid {ours.name} body")
        return ours.name, body


def _without(schema: AvroSchema, fields: tuple[str, ...]) -> Any:
    """`schema` as it was before `fields` were added, parsed for fastavro."""
    raw = json.loads(schema.text)
    raw["fields"] = [f for f in raw["fields"] if f["name"] not in fields]
    return parse_schema(raw, named_schemas={})


_MODEL_OF_SCHEMA: dict[str, type[BaseModel]] = {
    "worker_event": WorkerEvent,
    "circuit_state_changed": CircuitStateChanged,
    "recovery_command": RecoveryCommand,
    "dead_letter": DeadLetter,
    "circuit_figures": CircuitFigures,
    "alert": Alert,
}


def _to_model(name: str, body: dict[str, Any]) -> BaseModel:
    if name == "control_record":
        model, body = _control_from_avro(body)
    else:
        model = _MODEL_OF_SCHEMA[name]
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidEventError.from_validation(exc) from None


def _control_to_avro(record: BaseModel) -> dict[str, Any]:
    body = {
        "event_id": record.event_id,  # type: ignore[attr-defined]
        "kind": record.kind,  # type: ignore[attr-defined]
        "ts": record.ts,  # type: ignore[attr-defined]
        "action": None,
        "circuit_kind": None,
        "circuit_id": None,
        "actor": None,
        "config": None,
    }
    if isinstance(record, Operator):
        body.update(
            action=record.action,
            circuit_kind=record.circuit_kind,
            circuit_id=record.circuit_id,
            actor=record.actor,
        )
    elif isinstance(record, ConfigChanged):
        body.update(actor=record.actor, config=json.dumps(record.config, sort_keys=True))
    return body


def _control_from_avro(body: dict[str, Any]) -> tuple[type[BaseModel], dict[str, Any]]:
    model = _CONTROL_MODELS[body["kind"]]
    # Fields of other control kinds must be null; left in, `extra="forbid"` names them.
    fields = {key: value for key, value in body.items() if value is not None}
    if "config" in fields:
        try:
            fields["config"] = json.loads(fields["config"])
        except json.JSONDecodeError as exc:
            raise InvalidEventError("config", f"is not a JSON object ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:
            # Any text reaches here: an integer of more than 4300 digits, or nesting
            # deeper than the parser's recursion limit.
            raise InvalidEventError("config", f"is not usable JSON ({exc})") from None
    return model, fields


# --- hand-written Avro for WorkerEvent ---------------------------------------------------


def _zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL_LONGS = [_zigzag_varint(n) for n in range(64)]


def _long(n: int) -> bytes:
    return _SMALL_LONGS[n] if 0 <= n < 64 else _zigzag_varint(n)


def _string(value: str) -> bytes:
    raw = value.encode()
    return _long(len(raw)) + raw


def _optional_string(value: str | None) -> bytes:
    if value is None:
        return b"\x00"
    raw = value.encode()
    return b"\x02" + _long(len(raw)) + raw


def _enum_codes(schema: dict[str, Any], field: str) -> dict[str, bytes]:
    (spec,) = [f["type"] for f in schema["fields"] if f["name"] == field]
    if isinstance(spec, list):  # ["null", enum]: branch 1, then the symbol's index
        return {sym: b"\x02" + _long(i) for i, sym in enumerate(spec[1]["symbols"])}
    return {sym: _long(i) for i, sym in enumerate(spec["symbols"])}


_EVENT_SCHEMA = json.loads(SCHEMAS["worker_event"].text)
_KIND_CODES = _enum_codes(_EVENT_SCHEMA, "kind")
_FAILURE_TYPE_CODES = _enum_codes(_EVENT_SCHEMA, "failure_type")
_EXPECTED_FIELDS = [
    "event_id", "kind", "ts", "worker_id", "hardware_class", "task_id", "task_type",
    "failure_type", "message", "attempt", "recovery_command_id", "attributes",
    "checkpoint_seq", "checkpoint_state",
]  # fmt: skip
if [f["name"] for f in _EVENT_SCHEMA["fields"]] != _EXPECTED_FIELDS:
    raise RuntimeError("worker_event.avsc changed: update codec._worker_event_body")


# Encoded forms of recurring strings (worker ids, classes, task types, attribute keys and
# values) and of the current millisecond: most events of a busy worker repeat them.
_ENCODED: dict[str, bytes] = {}
_ENCODED_MAX = 4096
_last_ts: tuple[int, bytes] = (-1, b"")


def _cached_string(value: str) -> bytes:
    encoded = _ENCODED.get(value)
    if encoded is None:
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.clear()
        raw = value.encode()
        encoded = _ENCODED[value] = _long(len(raw)) + raw
    return encoded


def _worker_event_body(e: WorkerEvent) -> bytes:
    global _last_ts
    ts = e.ts
    if ts != _last_ts[0]:
        _last_ts = (ts, _long(ts))
    task_id, task_type = e.task_id, e.task_type
    parts = [
        _string(e.event_id),
        _KIND_CODES[e.kind],
        _last_ts[1],
        _cached_string(e.worker_id),
        _cached_string(e.hardware_class),
        b"\x00" if task_id is None else b"\x02" + _cached_string(task_id),
        b"\x00" if task_type is None else b"\x02" + _cached_string(task_type),
        b"\x00" if e.failure_type is None else _FAILURE_TYPE_CODES[e.failure_type],
        _optional_string(e.message),
        _long(e.attempt),
        _optional_string(e.recovery_command_id),
    ]
    attributes = e.attributes
    if attributes:
        parts.append(_long(len(attributes)))
        for key, value in attributes.items():
            parts.append(_cached_string(key))
            parts.append(_cached_string(value))
    parts.append(b"\x00")  # end of the map's blocks
    parts.append(b"\x00" if e.checkpoint_seq is None else b"\x02" + _long(e.checkpoint_seq))
    state = e.checkpoint_state
    parts.append(b"\x00" if state is None else b"\x02" + _long(len(state)) + state)
    return b"".join(parts)
