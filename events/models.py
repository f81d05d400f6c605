"""The event contract (CONTRACT.md) as pydantic v2 models.

These mirror `schemas/*.avsc` field by field (a test checks it). Input records are
validated here, at the edge; the core reads them by attribute and never re-validates.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CHECKPOINT_BYTES = 1024 * 1024
# How much of a rejected record's value its dead letter keeps (the whole value's size and
# sha256 travel beside it): enough to see what went wrong, small whatever came in.
DEAD_LETTER_RAW_BYTES = 64 * 1024


class EventKind(StrEnum):
    HEARTBEAT = "HEARTBEAT"
    TASK_STARTED = "TASK_STARTED"
    CHECKPOINT = "CHECKPOINT"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class FailureType(StrEnum):
    HARDWARE_ERROR = "HARDWARE_ERROR"
    SOFTWARE_ERROR = "SOFTWARE_ERROR"
    RESOURCE_EXHAUSTION = "RESOURCE_EXHAUSTION"
    TIMEOUT = "TIMEOUT"
    COMMUNICATION_ERROR = "COMMUNICATION_ERROR"
    BROWSER_FAILURE = "BROWSER_FAILURE"
    TRANSIENT_ERROR = "TRANSIENT_ERROR"
    PERSISTENT_ERROR = "PERSISTENT_ERROR"
    WORKER_CRASH = "WORKER_CRASH"
    WORKER_DISCONNECTION = "WORKER_DISCONNECTION"
    COORDINATOR_ERROR = "COORDINATOR_ERROR"
    UNKNOWN = "UNKNOWN"


class CircuitKind(StrEnum):
    WORKER = "worker"
    HARDWARE_CLASS = "hardware_class"
    TASK_TYPE = "task_type"


class CircuitState(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    FORCED_OPEN = "FORCED_OPEN"


class RecoveryStrategy(StrEnum):
    IMMEDIATE_RETRY = "IMMEDIATE_RETRY"
    DELAYED_RETRY = "DELAYED_RETRY"
    DIFFERENT_WORKER = "DIFFERENT_WORKER"
    DIFFERENT_HARDWARE_CLASS = "DIFFERENT_HARDWARE_CLASS"
    REDUCED_PRECISION = "REDUCED_PRECISION"
    REDUCED_BATCH_SIZE = "REDUCED_BATCH_SIZE"
    FALLBACK_CPU = "FALLBACK_CPU"
    BROWSER_RESTART = "BROWSER_RESTART"
    ESCALATION = "ESCALATION"


class OperatorAction(StrEnum):
    RESET = "RESET"
    FORCE_OPEN = "FORCE_OPEN"


# Bytes travel raw in Avro and as base64 in JSON Lines.
_RECORD_CONFIG = ConfigDict(
    frozen=True,
    extra="forbid",
    ser_json_bytes="base64",
    val_json_bytes="base64",
)

# Epoch milliseconds up to the end of year 9999: a sane clock, and always a 64-bit long.
MAX_MILLIS = 253_402_300_799_999
MAX_LONG = 2**63 - 1
Id = Annotated[str, Field(min_length=1, max_length=128)]
Millis = Annotated[int, Field(ge=0, le=MAX_MILLIS)]
Count = Annotated[int, Field(ge=0, le=MAX_LONG)]
# Set from the broker's append time as a record enters the decision order (CIRCUITS.md
# "Decision time"), never written by producers: it is not in the Avro input schemas.
BROKER_FIELDS = ("received_at",)

_NEEDS_TASK_ID = frozenset(EventKind) - {EventKind.HEARTBEAT}
_NEEDS_TASK_TYPE = frozenset({EventKind.TASK_STARTED, EventKind.SUCCESS, EventKind.FAILURE})


class WorkerEvent(BaseModel):
    """What a worker reports: topic `faultstream.events`, key `worker_id`."""

    model_config = _RECORD_CONFIG

    event_id: Id
    kind: EventKind
    ts: Millis
    worker_id: Id
    hardware_class: Annotated[str, Field(min_length=1, max_length=64)]
    task_id: Id | None = None
    task_type: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    failure_type: FailureType | None = None
    message: Annotated[str, Field(max_length=4096)] | None = None
    attempt: Count = 0
    recovery_command_id: Id | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    checkpoint_seq: Count | None = None
    checkpoint_state: Annotated[bytes, Field(max_length=MAX_CHECKPOINT_BYTES)] | None = None
    received_at: Millis | None = None

    @model_validator(mode="after")
    def _kind_rules(self) -> WorkerEvent:
        _check_text(
            self,
            "event_id",
            "worker_id",
            "hardware_class",
            "task_id",
            "task_type",
            "message",
            "recovery_command_id",
        )
        if self.attributes:
            _check_attributes(self.attributes)
        kind = self.kind
        if kind in _NEEDS_TASK_ID and self.task_id is None:
            raise _field_error("task_id", f"is required for {kind} events")
        if kind in _NEEDS_TASK_TYPE and self.task_type is None:
            raise _field_error("task_type", f"is required for {kind} events")
        if self.failure_type is not None and kind is not EventKind.FAILURE:
            raise _field_error("failure_type", "is only allowed on FAILURE events")
        if kind is not EventKind.CHECKPOINT and (
            self.checkpoint_seq is not None or self.checkpoint_state is not None
        ):
            raise _field_error("checkpoint_seq", "is only allowed on CHECKPOINT events")
        if kind is EventKind.CHECKPOINT and self.checkpoint_seq is None:
            raise _field_error("checkpoint_seq", "is required for CHECKPOINT events")
        return self


class Tick(BaseModel):
    """Advances event time for every circuit (topic `faultstream.control`)."""

    model_config = _RECORD_CONFIG

    event_id: Id
    kind: Literal["TICK"] = "TICK"
    ts: Millis
    received_at: Millis | None = None

    @model_validator(mode="after")
    def _text(self) -> Tick:
        _check_text(self, "event_id")
        return self


class Operator(BaseModel):
    """A person's action on one circuit."""

    model_config = _RECORD_CONFIG

    event_id: Id
    kind: Literal["OPERATOR"] = "OPERATOR"
    ts: Millis
    action: OperatorAction
    circuit_kind: CircuitKind
    circuit_id: Annotated[str, Field(min_length=1, max_length=128)]
    actor: Annotated[str, Field(min_length=1, max_length=128)]
    received_at: Millis | None = None

    @model_validator(mode="after")
    def _text(self) -> Operator:
        _check_text(self, "event_id", "circuit_id", "actor")
        return self


class ConfigChanged(BaseModel):
    """New circuit/recovery settings that apply from this record on.

    `config` is the `[circuits.*]` and `[recovery]` part of faultstream.toml as a nested
    mapping; the core validates it into `CoreSettings` when it applies it.
    """

    model_config = _RECORD_CONFIG

    event_id: Id
    kind: Literal["CONFIG_CHANGED"] = "CONFIG_CHANGED"
    ts: Millis
    config: dict[str, Any]
    actor: Annotated[str, Field(min_length=1, max_length=128)]
    received_at: Millis | None = None

    @model_validator(mode="after")
    def _text(self) -> ConfigChanged:
        _check_text(self, "event_id", "actor")
        return self


ControlRecord = Tick | Operator | ConfigChanged
InputRecord = WorkerEvent | ControlRecord


def received_at(record: InputRecord) -> int:
    """When the record counts as having happened for decisions: the broker's append time,
    or the record's own `ts` in a history that has none (CIRCUITS.md "Decision time")."""
    at = record.received_at
    return record.ts if at is None else at


class CircuitStateChanged(BaseModel):
    """One change of a circuit's state: topic `faultstream.circuits`."""

    model_config = _RECORD_CONFIG

    event_id: str
    ts: int
    circuit_kind: CircuitKind
    circuit_id: str
    from_state: CircuitState
    to_state: CircuitState
    reason: str
    consecutive_failures: int
    trips: int
    reset_timeout_s: float
    health: float
    caused_by: str

    @property
    def key(self) -> str:
        return f"{self.circuit_kind}:{self.circuit_id}"


class RecoveryCommand(BaseModel):
    """What a coordinator should do about a failed task: topic `faultstream.commands`."""

    model_config = _RECORD_CONFIG

    command_id: str
    ts: int
    task_id: str
    task_type: str | None
    worker_id: str
    strategy: RecoveryStrategy
    attempt: int
    delay_s: float
    target_worker_id: str | None = None
    target_hardware_class: str | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    checkpoint_seq: int | None = None
    reason: str
    caused_by: str


class CircuitFigures(BaseModel):
    """What the core counts on one circuit, published at a TICK when any of it changed
    since the last TICK: topic `faultstream.figures`, key `<circuit_kind>:<circuit_id>`.

    The same figures as the core's views (`circuits_view`, `workers_view`,
    `capacity_view`). `hardware_class`, `live` and `available` are set on a worker circuit
    whose worker is known; `workers`, `live_workers` and `available_workers` on a
    hardware_class circuit; None otherwise."""

    model_config = _RECORD_CONFIG

    event_id: str
    ts: int
    circuit_kind: CircuitKind
    circuit_id: str
    state: CircuitState
    consecutive_failures: int
    half_open_successes: int
    trips: int
    total_trips: int
    total_successes: int
    total_failures: int
    health: float
    caused_by: str
    hardware_class: str | None = None
    live: bool | None = None
    available: bool | None = None
    workers: int | None = None
    live_workers: int | None = None
    available_workers: int | None = None

    @property
    def key(self) -> str:
        return f"{self.circuit_kind}:{self.circuit_id}"


class AlertState(StrEnum):
    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


class Alert(BaseModel):
    """Something an operator should know now (CIRCUITS.md "Alerts"): topic
    `faultstream.alerts`, key `alert_id`. A RESOLVED record repeats the `alert_id` of the
    FIRING one it ends."""

    model_config = _RECORD_CONFIG

    alert_id: str
    ts: int
    rule: str  # the [alerts] setting: class_capacity_below, open_longer_than_s, ...
    subject_kind: str  # hardware_class, worker, task_type, task or fleet
    subject_id: str
    severity: str  # warning | critical
    state: AlertState
    message: str
    caused_by: str

    @property
    def key(self) -> str:
        return self.alert_id


DerivedRecord = CircuitStateChanged | RecoveryCommand | CircuitFigures | Alert


class DeadLetter(BaseModel):
    """A record that could not be decoded or validated: topic `faultstream.dlq`.

    `raw` keeps the first DEAD_LETTER_RAW_BYTES of the record's value, so a letter always
    fits where its record may not have; `raw_size` and `raw_sha256` describe the whole
    value (null on letters written before they existed)."""

    model_config = _RECORD_CONFIG

    event_id: str
    ts: int
    source_topic: str
    source_partition: int
    source_offset: int
    raw: bytes
    reason: str
    raw_size: int | None = None
    raw_sha256: str | None = None

    @classmethod
    def of_record(
        cls,
        *,
        event_id: str,
        ts: int,
        source_topic: str,
        source_partition: int,
        source_offset: int,
        value: bytes | None,
        reason: str,
    ) -> DeadLetter:
        """The letter for a rejected record whose value was `value` (None: a null value)."""
        value = value or b""
        return cls(
            event_id=event_id,
            ts=ts,
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            raw=value[:DEAD_LETTER_RAW_BYTES],
            reason=reason,
            raw_size=len(value),
            raw_sha256=hashlib.sha256(value).hexdigest(),
        )


def _check_text(record: BaseModel, *fields: str) -> None:
    """Refuse text that cannot be written as UTF-8 (a lone surrogate, e.g. from a
    mis-decoded command line): it would fail later, in a sender thread, out of sight."""
    values = [getattr(record, name) or "" for name in fields]
    if "".join(values).isascii():  # the common case, checked in C
        return
    for name, value in zip(fields, values, strict=True):
        _utf8(name, value)


def _check_attributes(attributes: dict[str, str]) -> None:
    if "".join(attributes).isascii() and "".join(attributes.values()).isascii():
        return
    for key, value in attributes.items():
        _utf8("attributes", key)
        _utf8(f"attributes.{key}", value)


def _utf8(field: str, value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        reason = f"is not valid UTF-8 text ({exc.reason} at {exc.start})"
        raise _field_error(field, reason) from None


def _field_error(field: str, text: str) -> ValueError:
    # A ValueError raised inside a validator becomes a pydantic error; InvalidEventError
    # (events/exceptions.py) picks the field name back out of the message.
    return ValueError(f"{field} {text}")


# --- JSON Lines -----------------------------------------------------------------------

_WORKER_KINDS = frozenset(EventKind)
_CONTROL_MODELS: dict[str, type[BaseModel]] = {
    "TICK": Tick,
    "OPERATOR": Operator,
    "CONFIG_CHANGED": ConfigChanged,
}
DERIVED_TYPES: dict[type[BaseModel], str] = {
    CircuitStateChanged: "circuit_state_changed",
    RecoveryCommand: "recovery_command",
    CircuitFigures: "circuit_figures",
    Alert: "alert",
}


_Derived = TypeVar("_Derived", CircuitStateChanged, RecoveryCommand, CircuitFigures, Alert)
_set_dict = object.__setattr__
# BaseModel's slots, set through their descriptors (a third faster than by name).
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
# Every field is set, so pydantic can only ever add to a record's fields-set a name it
# already holds: the records of one type share one.
_ALL_FIELDS = {cls: set(cls.model_fields) for cls in DERIVED_TYPES}


def trusted(cls: type[_Derived], values: dict[str, Any]) -> _Derived:
    """`cls.model_construct(**values)` for the values the core derived, which name every
    field (tests/unit/test_trusted_records.py): without its walk over the fields for aliases
    and defaults these records do not have, which was a third of a record's cost."""
    record = cls.__new__(cls)
    _set_dict(record, "__dict__", values)
    _set_fields_set(record, _ALL_FIELDS[cls])
    _set_extra(record, None)
    _set_private(record, None)
    return record


def input_model_for(kind: object) -> type[BaseModel] | None:
    """The model of an input record of this `kind`, or None for an unknown kind."""
    if not isinstance(kind, str):  # e.g. a JSON object, which is not even hashable
        return None
    if kind in _WORKER_KINDS:
        return WorkerEvent
    return _CONTROL_MODELS.get(kind)  # type: ignore[arg-type]


def derived_to_json(record: DerivedRecord) -> str:
    """One JSON line for a derived record, `type` first, fields in schema order."""
    body = record.model_dump_json()
    return f'{{"type":"{DERIVED_TYPES[type(record)]}",{body[1:]}'
