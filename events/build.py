"""Building worker events fast, for the SDK's hot path.

One check per field is generated at import from `WorkerEvent`'s own annotations and
constraints (min/max length, ge, le, enum members, str→str maps), plus a call of its
after-validators, so the contract stays in models.py alone. The checks are compiled into
one straight-line function (as dataclasses does for __init__): a loop over per-field
closures cost as much as pydantic itself. The model is then filled in without pydantic's
validator. Anything the checks do not accept exactly goes to full pydantic validation,
which either accepts it (a coercion the fast path does not do) or raises
InvalidEventError naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from enum import Enum
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from .exceptions import InvalidEventError
from .models import EventKind, WorkerEvent

log = logging.getLogger(__name__)


def _field_check(name: str, info: FieldInfo, env: dict[str, Any]) -> list[str]:
    """Source lines that leave `values[name]` as the model would store it, or return None
    (not accepted here). Only exact types pass: coercions go the full path."""
    annotation: Any = info.annotation
    metadata = list(info.metadata)
    nullable = False
    if get_origin(annotation) in (Union, UnionType):
        args = [arg for arg in get_args(annotation) if arg is not NoneType]
        nullable = len(args) < len(get_args(annotation))
        if len(args) != 1:
            raise RuntimeError(f"WorkerEvent.{name}: no fast check for {annotation}")
        annotation = args[0]
    if get_origin(annotation) is Annotated:
        annotation, *extras = get_args(annotation)
        for extra in extras:
            metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
    low, high, bounds = 0, None, []
    for item in metadata:
        if isinstance(item, MinLen):
            low = item.min_length
        elif isinstance(item, MaxLen):
            high = item.max_length
        elif isinstance(item, Ge):
            bounds.append(f"v >= {item.ge!r}")
        elif isinstance(item, Le):
            bounds.append(f"v <= {item.le!r}")
        else:  # a constraint this path would silently skip: refuse to start instead
            raise RuntimeError(f"WorkerEvent.{name}: no fast check for {item!r}")
    if high is not None:  # one len() call: this runs for every event
        bounds.append(f"{low} <= len(v) <= {high}")
    elif low:
        bounds.append(f"len(v) >= {low}")

    lines = [f"v = values[{name!r}]"]
    guard = "if v is not None and " if nullable else "if "
    if annotation in (str, bytes, int):
        accepted = " and ".join([f"type(v) is {annotation.__name__}", *bounds])
        lines.append(f"{guard}not ({accepted}): return None")
    elif isinstance(annotation, type) and issubclass(annotation, Enum) and not bounds:
        env[f"members_{name}"] = {member.value: member for member in annotation}
        # A str or a member in, the member out; an unhashable value raises TypeError.
        indent = "    " if nullable else ""
        if nullable:
            lines.append("if v is not None:")
        lines.append(f"{indent}v = values[{name!r}] = members_{name}.get(v)")
        lines.append(f"{indent}if v is None: return None")
    elif get_origin(annotation) is dict and get_args(annotation) == (str, str) and not bounds:
        lines.append("if type(v) is not dict: return None")
        lines.append("for k, x in v.items():")
        lines.append("    if type(k) is not str or type(x) is not str: return None")
        lines.append(f"values[{name!r}] = dict(v)  # the model's own copy, as pydantic makes")
    else:
        raise RuntimeError(f"WorkerEvent.{name}: no fast check for {annotation}")
    return lines


def _after_validators() -> list[Callable[[WorkerEvent], Any]]:
    decorators = WorkerEvent.__pydantic_decorators__
    if decorators.field_validators or decorators.validators or decorators.root_validators:
        raise RuntimeError("WorkerEvent has field validators: extend events/build.py")
    validators = []
    for decorator in decorators.model_validators.values():
        if decorator.info.mode != "after":
            raise RuntimeError("WorkerEvent has a non-after model validator: extend build.py")
        validators.append(decorator.func)
    return validators


def _compile_fast_path() -> Callable[[Mapping[str, Any]], WorkerEvent | None]:
    env: dict[str, Any] = {
        "WorkerEvent": WorkerEvent,
        "new_model": WorkerEvent.__new__,
        "set_slot": object.__setattr__,
        "after_validators": tuple(_after_validators()),
        # Required fields default to None here, which their checks then refuse.
        "defaults": {
            name: None if info.is_required() else info.get_default(call_default_factory=True)
            for name, info in WorkerEvent.model_fields.items()
        },
    }
    body = ["values = defaults.copy()", "values.update(fields)"]
    for name, info in WorkerEvent.model_fields.items():
        body.extend(_field_check(name, info, env))
    # What `model_construct` does, without its per-field default handling (which made it
    # slower than validating); _fast_path_agrees() compares the result with validation.
    body += [
        "event = new_model(WorkerEvent)",
        "set_slot(event, '__dict__', values)",
        "set_slot(event, '__pydantic_fields_set__', frozenset(fields))",
        "set_slot(event, '__pydantic_extra__', None)",
        "set_slot(event, '__pydantic_private__', None)",
        "for validate in after_validators:",
        "    validate(event)",
        "return event",
    ]
    source = "def fast_worker_event(fields):\n" + "".join(f"    {line}\n" for line in body)
    env["__source__"] = source  # for a reader in a debugger
    exec(compile(source, "<faultstream.events.build>", "exec"), env)
    return env["fast_worker_event"]


fast_worker_event = _compile_fast_path()
fast_worker_event.__doc__ = """The event these fields describe, checked without pydantic's
validator; None when the checks do not accept it. Raises ValueError (an after-validator)
or TypeError (an unhashable enum value): the caller then validates fully."""


def _fast_path_agrees() -> bool:
    sample = {
        "event_id": "e1", "kind": EventKind.FAILURE, "ts": 1, "worker_id": "w",
        "hardware_class": "cpu", "task_id": "t", "task_type": "x", "failure_type": "TIMEOUT",
        "message": "m", "attributes": {"a": "b"},
    }  # fmt: skip
    fast, full = fast_worker_event(sample), WorkerEvent(**sample)
    return (
        fast == full
        and fast.model_dump() == full.model_dump()
        and fast.model_fields_set == full.model_fields_set
    )


# Should pydantic's internals move, stay correct (if slower) rather than build bad models.
FAST_PATH = _fast_path_agrees()
if not FAST_PATH:
    log.warning("the emitter's fast validation disagrees with pydantic; not using it")


def build_worker_event(fields: Mapping[str, Any]) -> WorkerEvent:
    """A valid event from these fields (each a WorkerEvent field name), or
    InvalidEventError naming the field at fault."""
    if FAST_PATH:
        try:
            event = fast_worker_event(fields)
        except (ValueError, TypeError):
            event = None
        if event is not None:
            return event
    try:
        return WorkerEvent(**fields)
    except ValidationError as exc:
        raise InvalidEventError.from_validation(exc) from None
