"""The compiled core's log (`kernel.py`) as the very `DerivedRecord`s FleetCore emits.

Strings are built here, by the core's own helpers where it has them (`transition_id`,
`command_id`, `migration_command_id`, `circuit_health`, and `plan_failure` itself for a
failure's command, so reasons, delays and parameters cannot drift); the few f-strings that
live inline in circuit.py and fleet.py are mirrored below and checked byte for byte by
tests/unit/test_compiled_core.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

from ..core.ids import command_id, migration_command_id, transition_id
from ..core.recovery import Plan, plan_failure
from ..tuning.encode import FAILURE_TYPES
from .encode import STRATEGIES, Encoded
from .state import (
    B_GUARD,
    B_LOST,
    R_FAILED_HALF_OPEN,
    R_FORCE_OPEN,
    R_HALF_OPEN,
    R_RESET,
    R_SUCCESS,
    R_THRESHOLD,
    T_COMMAND,
    T_TRANSITION,
)

STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.FORCED_OPEN)
_ESCALATION = RecoveryStrategy.ESCALATION
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
    records = encoded.records
    names = encoded.names
    settings = encoded.versions.settings
    lost_reasons = [_lost_reason(s.recovery.heartbeat_timeout_s) for s in settings]
    probe_calls = [
        [s.circuits.for_kind(kind).half_open_max_calls for kind in CircuitKind] for s in settings
    ]
    ranks = encoded.base.circuit_rank.tolist()
    ftypes = encoded.base.ftype
    out: list[DerivedRecord] = []
    append = out.append
    for row, floats in zip(log.rows.tolist(), log.floats.tolist(), strict=True):
        kind, rec, ts, ver, a, b, c, d, e, f, g, h, i, j = row
        caused_by = records[rec].event_id
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
                reason = f"operator FORCE_OPEN by {records[rec].actor}"  # type: ignore[union-attr]
            elif h == R_RESET:
                reason = f"operator RESET by {records[rec].actor}"  # type: ignore[union-attr]
            else:
                raise AssertionError(f"log row with reason code {h}")
            append(
                CircuitStateChanged.model_construct(
                    event_id=transition_id(
                        caused_by, circuit_kind.value, circuit_id, from_state, to_state
                    ),
                    ts=ts,
                    circuit_kind=circuit_kind,
                    circuit_id=circuit_id,
                    from_state=from_state,
                    to_state=to_state,
                    reason=reason,
                    consecutive_failures=d,
                    trips=e,
                    reset_timeout_s=floats[0],
                    health=circuit_health(to_state, d, g, f),
                    caused_by=caused_by,
                )
            )
            continue
        strategy = STRATEGIES[a]
        target = None if b < 0 else names[b][1]
        checkpoint = d if c else None
        if kind == T_COMMAND:
            event = records[rec]
            plan = plan_failure(
                failure_type=FAILURE_TYPES[ftypes[rec]],
                attempt=event.attempt,  # type: ignore[union-attr]
                max_retries=settings[ver].recovery.max_retries,
                event_id=caused_by,
                hardware_class=event.hardware_class,  # type: ignore[union-attr]
                attributes=event.attributes,  # type: ignore[union-attr]
                worker=_CircuitView(event.worker_id, f, 0.0, 0),  # type: ignore[union-attr]
                hardware=_CircuitView(event.hardware_class, g, floats[0], i),  # type: ignore[union-attr]
                task_type=_CircuitView(event.task_type, h, floats[1], j),  # type: ignore[union-attr, arg-type]
                now=ts,
            )
            if plan.strategy is not strategy:
                raise AssertionError(f"record {rec}: kernel chose {strategy}, plan {plan.strategy}")
            reason = f"fleet_guard; {plan.reason}" if e else plan.reason
            append(
                RecoveryCommand.model_construct(
                    command_id=command_id(caused_by),
                    ts=ts,
                    task_id=event.task_id,  # type: ignore[union-attr]
                    task_type=event.task_type,  # type: ignore[union-attr]
                    worker_id=event.worker_id,  # type: ignore[union-attr]
                    strategy=strategy,
                    attempt=event.attempt + 1,  # type: ignore[union-attr]
                    delay_s=float(plan.delay_s),
                    target_worker_id=target,
                    target_hardware_class=plan.target_hardware_class,
                    parameters=plan.parameters,
                    checkpoint_seq=checkpoint,
                    reason=reason,
                    caused_by=caused_by,
                )
            )
            continue
        # A task migrated off a lost worker (fleet.py `_lose_worker`).
        start = records[e]
        worker_id = names[f][1]
        attempt = start.attempt  # type: ignore[union-attr]
        reason = lost_reasons[ver]
        if strategy is _ESCALATION:
            max_retries = settings[ver].recovery.max_retries
            plan = Plan(
                _ESCALATION, f"{reason}; attempt {attempt} reached max_retries {max_retries}"
            )
        else:
            plan = Plan(_DIFFERENT_WORKER, reason)
        append(
            RecoveryCommand.model_construct(
                command_id=migration_command_id(worker_id, g, start.task_id),  # type: ignore[union-attr]
                ts=ts,
                task_id=start.task_id,  # type: ignore[union-attr]
                task_type=start.task_type,  # type: ignore[union-attr]
                worker_id=worker_id,
                strategy=plan.strategy,
                attempt=attempt + 1,
                delay_s=float(plan.delay_s),
                target_worker_id=target,
                target_hardware_class=plan.target_hardware_class,
                parameters=plan.parameters,
                checkpoint_seq=checkpoint,
                reason=plan.reason,
                caused_by=caused_by,
            )
        )
    return out


def _lost_reason(heartbeat_timeout_s: float) -> str:
    silence = heartbeat_timeout_s * 1000.0 / 1000.0  # as fleet.py computes it
    return f"{FailureType.WORKER_DISCONNECTION}: worker lost, silent over {silence:g}s"
