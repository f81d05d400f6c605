"""The compiled core's log (`kernel.py`) as the very `DerivedRecord`s FleetCore emits.

Strings are built here, by the core's own helpers where it has them (`transition_id`,
`command_id`, `migration_command_id`, `circuit_health`, and `plan_failure` itself for a
failure's command, so reasons, delays and parameters cannot drift); the few f-strings that
live inline in circuit.py and fleet.py are mirrored below and checked byte for byte by
tests/unit/test_compiled_core.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from faultstream.events.gcpause import gc_paused
from faultstream.events.health import circuit_health
from faultstream.events.models import (
    CircuitKind,
    CircuitState,
    CircuitStateChanged,
    DerivedRecord,
    FailureType,
    RecoveryCommand,
    RecoveryStrategy,
)
from faultstream.processors.core.ids import command_id, migration_command_id, transition_id
from faultstream.processors.core.recovery import Plan, plan_failure
from faultstream.processors.offline.tune.encode import FAILURE_TYPES

from .encode import STRATEGIES, Encoded
from .state import (
    B_GUARD,
    B_LOST,
    FORCED_OPEN,
    L_E,
    L_H,
    L_REC,
    L_TYPE,
    OPEN,
    R_FAILED_HALF_OPEN,
    R_FORCE_OPEN,
    R_HALF_OPEN,
    R_RESET,
    R_SUCCESS,
    R_THRESHOLD,
    T_COMMAND,
    T_MIGRATION,
    T_TRANSITION,
)

_Record = TypeVar("_Record", CircuitStateChanged, RecoveryCommand)
_set = object.__setattr__
STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.FORCED_OPEN)
_ESCALATION = RecoveryStrategy.ESCALATION
_DELAYED = RecoveryStrategy.DELAYED_RETRY
_OPENISH = (OPEN, FORCED_OPEN)
_FAILURE_FIELDS = ("worker_id", "hardware_class", "task_id", "task_type", "attempt")
_START_FIELDS = ("task_id", "task_type", "attempt")
_DIFFERENT_WORKER = RecoveryStrategy.DIFFERENT_WORKER


@dataclass(frozen=True)
class Log:
    """The kernel's derived-record log: `rows` int64 columns and `floats` per record."""

    rows: np.ndarray
    floats: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


class _CircuitView:
    """What `plan_failure` reads of a circuit, as the kernel saw it after the failure."""

    __slots__ = ("due_ms", "id", "reset_timeout_s", "state")

    def __init__(self, circuit_id: str, state: int, reset_timeout_s: float, due_ms: int) -> None:
        self.id = circuit_id
        self.state = STATES[state]
        self.reset_timeout_s = reset_timeout_s
        self.due_ms = due_ms


def materialize(log: Log, encoded: Encoded) -> list[DerivedRecord]:
    """The log's records. The collector is paused meanwhile: the records are acyclic, and
    each collection it would start walks every live object again (half the time)."""
    with gc_paused():
        return _materialize(log, encoded)


def _materialize(log: Log, encoded: Encoded) -> list[DerivedRecord]:
    fields = encoded.fields
    names = encoded.names
    settings = encoded.versions.settings
    lost_reasons = [_lost_reason(s.recovery.heartbeat_timeout_s) for s in settings]
    probe_calls = [
        [s.circuits.for_kind(kind).half_open_max_calls for kind in CircuitKind] for s in settings
    ]
    ranks = encoded.base.circuit_rank.tolist()
    ftypes = encoded.base.ftype
    # The input fields the records need, fetched in bulk for the rows that need them.
    rows = log.rows
    causes = fields.column("event_id", rows[:, L_REC])
    is_transition = rows[:, L_TYPE] == T_TRANSITION
    by_operator = is_transition & np.isin(rows[:, L_H], (R_FORCE_OPEN, R_RESET))
    actors = iter(fields.column("actor", rows[by_operator, L_REC]))
    failures = rows[rows[:, L_TYPE] == T_COMMAND, L_REC]
    failed = zip(
        *(fields.column(name, failures) for name in _FAILURE_FIELDS),
        fields.attributes(failures),
        strict=True,
    )
    starts = rows[rows[:, L_TYPE] == T_MIGRATION, L_E]
    started = zip(*(fields.column(name, starts) for name in _START_FIELDS), strict=True)
    plans: dict[tuple, Plan] = {}
    out: list[DerivedRecord] = []
    append = out.append
    for row, floats, caused_by in zip(rows.tolist(), log.floats.tolist(), causes, strict=True):
        kind, rec, ts, ver, a, b, c, d, e, f, g, h, i, j = row
        if kind == T_TRANSITION:
            circuit_kind, circuit_id = names[a]
            from_state, to_state = STATES[b], STATES[c]
            if h in (R_THRESHOLD, R_FAILED_HALF_OPEN):
                if j == B_LOST:
                    base = lost_reasons[ver]
                elif j == B_GUARD:
                    base = f"fleet_guard: {FAILURE_TYPES[i]} counted on hardware_class {circuit_id}"
                else:
                    base = str(FAILURE_TYPES[i])
                tail = "failure_threshold reached" if h == R_THRESHOLD else "failed while half-open"
                reason = f"{base}; {tail}"
            elif h == R_SUCCESS:
                reason = "success_threshold reached"
            elif h == R_HALF_OPEN:
                calls = probe_calls[ver][ranks[a]]
                reason = f"reset_timeout elapsed; {calls} probe calls allowed"
            elif h == R_FORCE_OPEN:
                reason = f"operator FORCE_OPEN by {next(actors)}"
            elif h == R_RESET:
                reason = f"operator RESET by {next(actors)}"
            else:
                raise AssertionError(f"log row with reason code {h}")
            append(
                _trusted(
                    CircuitStateChanged,
                    {
                        "event_id": transition_id(
                            caused_by, circuit_kind.value, circuit_id, from_state, to_state, ts
                        ),
                        "ts": ts,
                        "circuit_kind": circuit_kind,
                        "circuit_id": circuit_id,
                        "from_state": from_state,
                        "to_state": to_state,
                        "reason": reason,
                        "consecutive_failures": d,
                        "trips": e,
                        "reset_timeout_s": floats[0],
                        "health": circuit_health(to_state, d, g, f),
                        "caused_by": caused_by,
                    },
                )
            )
            continue
        strategy = STRATEGIES[a]
        target = None if b < 0 else names[b][1]
        checkpoint = d if c else None
        if kind == T_COMMAND:
            worker_id, hardware_class, task_id, task_type, attempt, attributes = next(failed)
            failure_type = FAILURE_TYPES[ftypes[rec]]
            max_retries = settings[ver].recovery.max_retries
            # `plan_failure` is pure; a plan other than DELAYED_RETRY reads neither the
            # event id, the time nor a due moment, and names the worker circuit only when
            # it is open (the class circuit's id is the hardware_class): keyed on the rest.
            key = None
            if strategy is not _DELAYED:
                key = (
                    failure_type, attempt, max_retries, hardware_class, f, g, h,
                    attributes.get("batch_size"), attributes.get("precision"),
                    worker_id if f in _OPENISH else None,
                )  # fmt: skip
                plan = plans.get(key)
            if key is None or plan is None:
                plan = plan_failure(
                    failure_type=failure_type,
                    attempt=attempt,
                    max_retries=max_retries,
                    event_id=caused_by,
                    hardware_class=hardware_class,
                    attributes=attributes,
                    worker=_CircuitView(worker_id, f, 0.0, 0),
                    hardware=_CircuitView(hardware_class, g, floats[0], i),
                    task_type=_CircuitView(task_type, h, floats[1], j),
                    now=ts,
                )
                if key is not None:
                    plans[key] = plan
            if plan.strategy is not strategy:
                raise AssertionError(f"record {rec}: kernel chose {strategy}, plan {plan.strategy}")
            reason = f"fleet_guard; {plan.reason}" if e else plan.reason
            append(
                _trusted(
                    RecoveryCommand,
                    {
                        "command_id": command_id(caused_by),
                        "ts": ts,
                        "task_id": task_id,
                        "task_type": task_type,
                        "worker_id": worker_id,
                        "strategy": strategy,
                        "attempt": attempt + 1,
                        "delay_s": float(plan.delay_s),
                        "target_worker_id": target,
                        "target_hardware_class": plan.target_hardware_class,
                        "parameters": dict(plan.parameters),  # a plan may be shared
                        "checkpoint_seq": checkpoint,
                        "reason": reason,
                        "caused_by": caused_by,
                    },
                )
            )
            continue
        # A task migrated off a lost worker (fleet.py `_lose_worker`).
        task_id, task_type, attempt = next(started)
        worker_id = names[f][1]
        reason = lost_reasons[ver]
        if strategy is _ESCALATION:
            max_retries = settings[ver].recovery.max_retries
            plan = Plan(
                _ESCALATION, f"{reason}; attempt {attempt} reached max_retries {max_retries}"
            )
        else:
            plan = Plan(_DIFFERENT_WORKER, reason)
        append(
            _trusted(
                RecoveryCommand,
                {
                    "command_id": migration_command_id(worker_id, g, task_id),
                    "ts": ts,
                    "task_id": task_id,
                    "task_type": task_type,
                    "worker_id": worker_id,
                    "strategy": plan.strategy,
                    "attempt": attempt + 1,
                    "delay_s": float(plan.delay_s),
                    "target_worker_id": target,
                    "target_hardware_class": plan.target_hardware_class,
                    "parameters": plan.parameters,
                    "checkpoint_seq": checkpoint,
                    "reason": plan.reason,
                    "caused_by": caused_by,
                },
            )
        )
    return out


def _trusted(cls: type[_Record], values: dict[str, Any]) -> _Record:
    """`cls.model_construct(**values)` for `values` naming every field: its walk over the
    fields (for aliases and defaults these models do not have) was a third of the cost."""
    record = cls.__new__(cls)
    _set(record, "__dict__", values)
    _set(record, "__pydantic_fields_set__", set(values))
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record


def _lost_reason(heartbeat_timeout_s: float) -> str:
    silence = heartbeat_timeout_s * 1000.0 / 1000.0  # as fleet.py computes it
    return f"{FailureType.WORKER_DISCONNECTION}: worker lost, silent over {silence:g}s"
