"""Every Avro schema agrees with its pydantic model, field by field, and every model
round-trips through the Avro codec."""

from __future__ import annotations

import json
import types
import typing
from enum import StrEnum
from typing import Any, Union

import pytest
from pydantic import BaseModel

from faultstream.events.codec import SCHEMAS, Codec
from faultstream.events.models import (
    BROKER_FIELDS,
    Alert,
    CircuitFigures,
    CircuitStateChanged,
    ConfigChanged,
    DeadLetter,
    EventKind,
    Operator,
    RecoveryCommand,
    Tick,
    WorkerEvent,
)

MODEL_OF_SCHEMA: dict[str, type[BaseModel]] = {
    "worker_event": WorkerEvent,
    "circuit_state_changed": CircuitStateChanged,
    "recovery_command": RecoveryCommand,
    "dead_letter": DeadLetter,
    "circuit_figures": CircuitFigures,
    "alert": Alert,
}
AVRO_OF_PYTHON = {str: "string", int: "long", float: "double", bytes: "bytes", bool: "boolean"}


def _schema(name: str) -> dict[str, Any]:
    return json.loads(SCHEMAS[name].text)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _base(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _check_type(field: str, annotation: Any, avro: Any, named: dict[str, Any]) -> None:
    annotation = _base(annotation)
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        assert avro["type"] == "enum", field
        assert avro["symbols"] == [member.value for member in annotation], field
        named[avro["name"]] = avro
    elif typing.get_origin(annotation) is dict:
        assert avro == {"type": "map", "values": "string"}, field
    elif annotation is int:
        assert avro in ("int", "long"), field
    else:
        assert avro == AVRO_OF_PYTHON[annotation], field


@pytest.mark.parametrize("name", sorted(MODEL_OF_SCHEMA))
def test_schema_fields_match_model_fields(name: str) -> None:
    model = MODEL_OF_SCHEMA[name]
    fields = _schema(name)["fields"]
    written = [f for f in model.model_fields if f not in BROKER_FIELDS]
    assert [f["name"] for f in fields] == written
    named: dict[str, Any] = {}
    for spec in fields:
        info = model.model_fields[spec["name"]]
        annotation, optional = _strip_optional(info.annotation)
        avro = spec["type"]
        if optional:
            assert isinstance(avro, list) and avro[0] == "null", spec["name"]
            avro = avro[1]
        else:
            assert not isinstance(avro, list), spec["name"]
        _check_type(spec["name"], annotation, avro, named)
        if info.is_required():
            # A required model field may still carry a schema default (for old records),
            # but a schema default must then not be a made-up value for an optional one.
            continue
        default = info.get_default(call_default_factory=True)
        assert "default" in spec, f"{spec['name']} has a model default but no schema default"
        assert spec["default"] == default, spec["name"]


def test_control_record_schema_covers_every_control_model() -> None:
    fields = {f["name"]: f for f in _schema("control_record")["fields"]}
    assert fields["kind"]["type"]["symbols"] == ["TICK", "OPERATOR", "CONFIG_CHANGED"]
    for model in (Tick, Operator, ConfigChanged):
        for name in model.model_fields:
            if name in BROKER_FIELDS:
                assert name not in fields, f"{name} is the broker's to set, not a producer's"
                continue
            assert name in fields, f"{model.__name__}.{name}"
            if name not in ("event_id", "kind", "ts"):
                # Fields of one control kind are null on the others.
                assert fields[name]["type"][0] == "null" and fields[name]["default"] is None
    assert fields["action"]["type"][1]["symbols"] == ["RESET", "FORCE_OPEN"]
    assert fields["circuit_kind"]["type"][1]["symbols"] == ["worker", "hardware_class", "task_type"]
    assert fields["config"]["type"] == ["null", "string"]


def _examples() -> list[BaseModel]:
    base = {"ts": 1764355200000, "worker_id": "gpu-07", "hardware_class": "cuda"}
    return [
        WorkerEvent(event_id="hb", kind=EventKind.HEARTBEAT, **base),
        WorkerEvent(
            event_id="st", kind=EventKind.TASK_STARTED, task_id="t1", task_type="bert",
            attempt=2, recovery_command_id="cmd-1", attributes={"batch_size": "32"}, **base,
        ),
        WorkerEvent(
            event_id="cp", kind=EventKind.CHECKPOINT, task_id="t1", checkpoint_seq=7,
            checkpoint_state=b"\x00\xffstate", **base,
        ),
        WorkerEvent(
            event_id="cp0", kind=EventKind.CHECKPOINT, task_id="t1", checkpoint_seq=0, **base
        ),
        WorkerEvent(
            event_id="ok", kind=EventKind.SUCCESS, task_id="t1", task_type="bert",
            attributes={"precision": "fp16", "model": "bért-ü"}, **base,
        ),
        WorkerEvent(
            event_id="f1", kind=EventKind.FAILURE, task_id="t1", task_type="bert",
            failure_type="RESOURCE_EXHAUSTION", message="CUDA out of memory " * 100,
            attempt=300, **base,
        ),
        WorkerEvent(event_id="f2", kind=EventKind.FAILURE, task_id="t1", task_type="bert", **base),
        Tick(event_id="tick", ts=5),
        Operator(
            event_id="op", ts=6, action="FORCE_OPEN", circuit_kind="task_type",
            circuit_id="bert", actor="ana",
        ),
        ConfigChanged(event_id="cfg", ts=7, config={"recovery": {"max_retries": 5}}, actor="tune"),
        CircuitStateChanged(
            event_id="c1", ts=8, circuit_kind="worker", circuit_id="gpu-07", from_state="CLOSED",
            to_state="OPEN", reason="failure_threshold", consecutive_failures=5, trips=1,
            reset_timeout_s=60.0, health=20.0, caused_by="f1",
        ),
        RecoveryCommand(
            command_id="cmd", ts=9, task_id="t1", task_type=None, worker_id="gpu-07",
            strategy="REDUCED_BATCH_SIZE", attempt=1, delay_s=0.0, parameters={"batch_size": "16"},
            reason="ladder", caused_by="f1",
        ),
        RecoveryCommand(
            command_id="cmd2", ts=9, task_id="t1", task_type="bert", worker_id="gpu-07",
            strategy="DIFFERENT_WORKER", attempt=1, delay_s=0.0, target_worker_id="gpu-08",
            target_hardware_class="cpu", checkpoint_seq=7, reason="ladder", caused_by="f1",
        ),
        DeadLetter(
            event_id="d", ts=10, source_topic="faultstream.events", source_partition=3,
            source_offset=2**40, raw=b"\x01garbage", reason="magic byte is 1",
        ),
        CircuitFigures(
            event_id="fig-w", ts=11, circuit_kind="worker", circuit_id="gpu-07", state="HALF_OPEN",
            consecutive_failures=0, half_open_successes=1, trips=2, total_trips=7,
            total_successes=2**40, total_failures=3, health=50.0, caused_by="tick",
            hardware_class="cuda", live=False, available=False,
        ),
        CircuitFigures(
            event_id="fig-c", ts=11, circuit_kind="hardware_class", circuit_id="cuda",
            state="CLOSED", consecutive_failures=2, half_open_successes=0, trips=0, total_trips=0,
            total_successes=0, total_failures=2, health=80.0, caused_by="tick", workers=5,
            live_workers=4, available_workers=0,
        ),
        CircuitFigures(
            event_id="fig-t", ts=11, circuit_kind="task_type", circuit_id="bert", state="OPEN",
            consecutive_failures=10, half_open_successes=0, trips=1, total_trips=1,
            total_successes=0, total_failures=10, health=18.0, caused_by="tick",
        ),
        Alert(
            alert_id="alr-1", ts=12, rule="class_capacity_below", subject_kind="hardware_class",
            subject_id="cuda", severity="critical", state="FIRING",
            message="1 of 3 live cuda workers available, below 50%", caused_by="f1",
        ),
        Alert(
            alert_id="alr-1", ts=13, rule="class_capacity_below", subject_kind="hardware_class",
            subject_id="cuda", severity="critical", state="RESOLVED", message="3 of 3 — ünï",
            caused_by="ok",
        ),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "record",
    _examples(),
    ids=lambda r: (
        f"{type(r).__name__}-{r.model_dump().get('event_id') or r.model_dump().get('command_id')}"
        if not isinstance(r, Alert)
        else f"Alert-{r.alert_id}-{r.state}"
    ),
)
def test_every_model_round_trips_through_avro(record: BaseModel) -> None:
    codec = Codec()
    assert codec.decode(codec.encode(record)) == record
