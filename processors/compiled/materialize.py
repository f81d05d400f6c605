"""The compiled core's log (`kernel.py`) as the very `DerivedRecord`s FleetCore emits.

Strings are built here, by the core's own helpers where it has them (`transition_id`,
`command_id`, `migration_command_id`, `circuit_health`, and `plan_failure` itself for a
failure's command, so reasons, delays and parameters cannot drift); the few f-strings that
live inline in circuit.py and fleet.py are mirrored below and checked byte for byte by
tests/unit/test_compiled_core.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from faultstream.events.config import CoreSettings
from faultstream.events.gcpause import gc_paused
from faultstream.events.health import circuit_health, overall_health
from faultstream.events.models import (
    Alert,
    AlertState,
    CircuitFigures,
    CircuitKind,
    CircuitState,
    CircuitStateChanged,
    DerivedRecord,
    FailureType,
    RecoveryStrategy,
    trusted,
)
from faultstream.processors.core.alerts import (
    CAPACITY,
    CLOCK_SKEW,
    ESCALATIONS,
    FLEET_HEALTH,
    OPEN_LONGER,
    alert_record,
)
from faultstream.processors.core.ids import (
    alert_id,
    command_id,
    figures_ids,
    migration_command_id,
    transition_id,
)
from faultstream.processors.core.recovery import Plan, plan_failure

from .codes import FAILURE_TYPES, FORCED_OPEN, OPEN, STRATEGIES
from .encode import Encoded
from .state import (
    ADAPTIVE_ROW,
    ALERT,
    ALERT_A,
    ALERT_B,
    ALERT_C,
    ALERT_RULE,
    ALERT_STATE,
    ALERT_SUBJECT,
    BLAME_GUARD,
    BLAME_LOST,
    BY_FORCE_OPEN,
    BY_RESET,
    CLASS_DUE_MS,
    CLASS_STATE,
    COMMAND,
    FAILED_HALF_OPEN,
    FIGURES,
    FIGURES_AVAILABLE,
    FIGURES_CIRCUIT,
    FIGURES_CLASS,
    FIGURES_FAILURES,
    FIGURES_LIVE,
    FIGURES_PROBES,
    FIGURES_STATE,
    FIGURES_SUCCESSES,
    FIGURES_TOTAL_FAILURES,
    FIGURES_TOTAL_TRIPS,
    FIGURES_TRIPS,
    FIRING,
    FROM_STATE,
    GUARDED,
    HAS_TARGET_CHECKPOINT,
    LOSS_DUE_MS,
    MIGRATED_START,
    MIGRATED_WORKER,
    MIGRATION,
    OUTLIER,
    OUTLIER_CLASS,
    OUTLIER_LIMIT,
    OUTLIER_MEAN,
    OUTLIER_RATE,
    REASON,
    REASON_BLAME,
    REASON_FAILURE_TYPE,
    RESOLVED,
    ROW_RECORD,
    ROW_TYPE,
    STRATEGY,
    SUCCESSES,
    TARGET,
    TARGET_CHECKPOINT,
    TASK_TYPE_DUE_MS,
    TASK_TYPE_STATE,
    THRESHOLD,
    TIMEOUT_ELAPSED,
    TO_STATE,
    TRANSITION,
    TRANSITION_CIRCUIT,
    TRANSITION_FAILURES,
    TRANSITION_MET,
    TRANSITION_N,
    TRANSITION_PROBES,
    TRANSITION_TOTAL_TRIPS,
    TRANSITION_TRIPS,
    TRANSITION_WINDOW_FAILURES,
    TRANSITION_WINDOW_SLOW,
    WINDOW_FAILURE,
    WINDOW_SUCCESS,
    WORKER_STATE,
)

STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.FORCED_OPEN)
_ESCALATION = RecoveryStrategy.ESCALATION
_DELAYED = RecoveryStrategy.DELAYED_RETRY
_OPENISH = (OPEN, FORCED_OPEN)
_FAILURE_FIELDS = ("worker_id", "hardware_class", "task_id", "task_type", "attempt")
_START_FIELDS = ("task_id", "task_type", "attempt")
_DIFFERENT_WORKER = RecoveryStrategy.DIFFERENT_WORKER
_WORKER_KIND, _CLASS_KIND = CircuitKind.WORKER, CircuitKind.HARDWARE_CLASS
# A log row's payload by its type, as a tuple (state.py names the columns).
_WINDOW_FIELDS = itemgetter(
    TRANSITION_MET, TRANSITION_N, TRANSITION_WINDOW_FAILURES, TRANSITION_WINDOW_SLOW
)
_TRANSITION_FIELDS = itemgetter(
    TRANSITION_CIRCUIT,
    FROM_STATE,
    TO_STATE,
    TRANSITION_FAILURES,
    TRANSITION_TRIPS,
    TRANSITION_TOTAL_TRIPS,
    TRANSITION_PROBES,
    REASON,
    REASON_FAILURE_TYPE,
    REASON_BLAME,
)
_COMMAND_FIELDS = itemgetter(
    STRATEGY,
    TARGET,
    HAS_TARGET_CHECKPOINT,
    TARGET_CHECKPOINT,
    GUARDED,
    WORKER_STATE,
    CLASS_STATE,
    TASK_TYPE_STATE,
    CLASS_DUE_MS,
    TASK_TYPE_DUE_MS,
)
_MIGRATION_FIELDS = itemgetter(
    STRATEGY, TARGET, HAS_TARGET_CHECKPOINT, TARGET_CHECKPOINT, MIGRATED_WORKER, LOSS_DUE_MS
)
_ALERT_FIELDS = itemgetter(ALERT_RULE, ALERT_STATE, ALERT_SUBJECT, ALERT_A, ALERT_B, ALERT_C)
# state.py's rule codes, as the core's rule names.
_RULES = (CAPACITY, OPEN_LONGER, ESCALATIONS, FLEET_HEALTH, CLOCK_SKEW)
_FIGURES_FIELDS = itemgetter(
    FIGURES_CIRCUIT,
    FIGURES_STATE,
    FIGURES_FAILURES,
    FIGURES_PROBES,
    FIGURES_TRIPS,
    FIGURES_TOTAL_TRIPS,
    FIGURES_SUCCESSES,
    FIGURES_TOTAL_FAILURES,
    FIGURES_CLASS,
    FIGURES_LIVE,
    FIGURES_AVAILABLE,
)


@dataclass(frozen=True)
class Log:
    """The kernel's derived-record log: `rows` int64 columns and `floats` per record."""

    rows: np.ndarray
    floats: np.ndarray
    adaptive: np.ndarray = field(default_factory=lambda: np.zeros((0, 9), np.int64))

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
    min_samples = [s.recovery.adaptive_min_samples if s.recovery.adaptive else 0 for s in settings]
    probe_calls = [
        [s.circuits.for_kind(kind).half_open_max_calls for kind in CircuitKind] for s in settings
    ]
    ranks = encoded.fleet.circuit_rank.tolist()
    failure_types = encoded.inputs.failure_type
    # The input fields the records need, fetched in bulk for the rows that need them.
    rows = log.rows
    causes = fields.column("event_id", rows[:, ROW_RECORD])
    is_transition = rows[:, ROW_TYPE] == TRANSITION
    by_operator = is_transition & np.isin(rows[:, REASON], (BY_FORCE_OPEN, BY_RESET))
    actors = iter(fields.column("actor", rows[by_operator, ROW_RECORD]))
    failures = rows[rows[:, ROW_TYPE] == COMMAND, ROW_RECORD]
    failed = zip(
        *(fields.column(name, failures) for name in _FAILURE_FIELDS),
        fields.attributes(failures),
        strict=True,
    )
    starts = rows[rows[:, ROW_TYPE] == MIGRATION, MIGRATED_START]
    started = zip(*(fields.column(name, starts) for name in _START_FIELDS), strict=True)
    plans: dict[tuple, Plan] = {}
    out: list[DerivedRecord] = []  # one record per log row: out[row] is row's record
    append = out.append
    figures_of = ("", figures_ids(""))  # a TICK's figure ids share a prefix: hashed once
    alerts = _Alerts(encoded, log, out)
    for row, floats, caused_by in zip(rows.tolist(), log.floats.tolist(), causes, strict=True):
        row_type, record, ts, version = row[0], row[1], row[2], row[3]
        if row_type == ALERT:
            append(alerts.record(row, ts, caused_by))
            continue
        if row_type == TRANSITION:
            (
                circuit,
                from_code,
                to_code,
                failures_now,
                trips,
                total_trips,
                probes,
                reason_code,
                failure_type,
                blame,
            ) = _TRANSITION_FIELDS(row)
            circuit_kind, circuit_id = names[circuit]
            from_state, to_state = STATES[from_code], STATES[to_code]
            if reason_code == OUTLIER:
                sample_size, class_circuit = row[TRANSITION_N], row[OUTLIER_CLASS]
                rate, limit, mean = (
                    floats[OUTLIER_RATE],
                    floats[OUTLIER_LIMIT],
                    floats[OUTLIER_MEAN],
                )
                reason = (
                    f"outlier: success rate {rate:.1%} below {limit:.1%} "
                    f"(mean {mean:.1%} of {sample_size} {names[class_circuit][1]} workers)"
                )
            elif reason_code == WINDOW_SUCCESS:
                reason = _rates(_WINDOW_FIELDS(row), settings[version], circuit_kind)
            elif reason_code in (THRESHOLD, FAILED_HALF_OPEN, WINDOW_FAILURE):
                if blame == BLAME_LOST:
                    base = lost_reasons[version]
                elif blame == BLAME_GUARD:
                    base = (
                        f"fleet_guard: {FAILURE_TYPES[failure_type]} counted on hardware_class "
                        f"{circuit_id}"
                    )
                else:
                    base = str(FAILURE_TYPES[failure_type])
                if reason_code == FAILED_HALF_OPEN:
                    reason = f"{base}; failed while half-open"
                else:  # the rules met, in the order failure_threshold; window rules
                    window = _WINDOW_FIELDS(row)
                    met = ["failure_threshold reached"] if reason_code == THRESHOLD else []
                    if window[0]:
                        met.append(_rates(window, settings[version], circuit_kind))
                    reason = "; ".join([base, *met])
            elif reason_code == SUCCESSES:
                reason = "success_threshold reached"
            elif reason_code == TIMEOUT_ELAPSED:
                calls = probe_calls[version][ranks[circuit]]
                reason = f"reset_timeout elapsed; {calls} probe calls allowed"
            elif reason_code == BY_FORCE_OPEN:
                reason = f"operator FORCE_OPEN by {next(actors)}"
            elif reason_code == BY_RESET:
                reason = f"operator RESET by {next(actors)}"
            else:
                raise AssertionError(f"log row with reason code {reason_code}")
            append(
                trusted(
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
                        "consecutive_failures": failures_now,
                        "trips": trips,
                        "reset_timeout_s": floats[0],
                        "health": circuit_health(to_state, failures_now, probes, total_trips),
                        "caused_by": caused_by,
                    },
                )
            )
            continue
        if row_type == FIGURES:
            if figures_of[0] != caused_by:
                figures_of = (caused_by, figures_ids(caused_by))
            append(_figures(row, ts, caused_by, figures_of[1], names))
            continue
        if row_type == COMMAND:
            (
                strategy_code,
                target_circuit,
                has_checkpoint,
                checkpoint_seq,
                guarded,
                worker_state,
                class_state,
                task_type_state,
                class_due_ms,
                task_type_due_ms,
            ) = _COMMAND_FIELDS(row)
        else:
            (
                strategy_code,
                target_circuit,
                has_checkpoint,
                checkpoint_seq,
                worker_circuit,
                due_ms,
            ) = _MIGRATION_FIELDS(row)
        strategy = STRATEGIES[strategy_code]
        target = None if target_circuit < 0 else names[target_circuit][1]
        checkpoint = checkpoint_seq if has_checkpoint else None
        if row_type == COMMAND:
            worker_id, hardware_class, task_id, task_type, attempt, attributes = next(failed)
            failure_type = FAILURE_TYPES[failure_types[record]]
            max_retries = settings[version].recovery.max_retries
            # Adaptive ladders: what was learned of each candidate rung, as the kernel read it.
            learning = min_samples[version]
            adaptive_row = row[ADAPTIVE_ROW]
            learned_now = tuple(log.adaptive[adaptive_row].tolist()) if adaptive_row >= 0 else ()
            # `plan_failure` is pure; a plan other than DELAYED_RETRY reads neither the
            # event id, the time nor a due moment, and names the worker circuit only when
            # it is open (the class circuit's id is the hardware_class): keyed on the rest.
            key = None
            if strategy is not _DELAYED:
                key = (
                    failure_type,
                    attempt,
                    max_retries,
                    hardware_class,
                    worker_state,
                    class_state,
                    task_type_state,
                    attributes.get("batch_size"),
                    attributes.get("precision"),
                    worker_id if worker_state in _OPENISH else None,
                    learning,
                    learned_now,
                )
                plan = plans.get(key)
            if key is None or plan is None:
                plan = plan_failure(
                    failure_type=failure_type,
                    attempt=attempt,
                    max_retries=max_retries,
                    event_id=caused_by,
                    hardware_class=hardware_class,
                    attributes=attributes,
                    worker=_CircuitView(worker_id, worker_state, 0.0, 0),
                    hardware=_CircuitView(hardware_class, class_state, floats[0], class_due_ms),
                    task_type=_CircuitView(task_type, task_type_state, floats[1], task_type_due_ms),
                    now=ts,
                    learned=_learned(learned_now, failure_type, hardware_class)
                    if learning
                    else None,
                    min_samples=learning,
                )
                if key is not None:
                    plans[key] = plan
            if plan.strategy is not strategy:
                raise AssertionError(
                    f"record {record}: kernel chose {strategy}, plan {plan.strategy}"
                )
            if guarded:
                plan = Plan(
                    strategy,
                    f"fleet_guard; {plan.reason}",
                    plan.delay_s,
                    plan.target_hardware_class,
                    plan.parameters,
                )
            cid = command_id(caused_by)
        else:  # a task migrated off a lost worker (fleet.py `_lose_worker`)
            task_id, task_type, attempt = next(started)
            worker_id = names[worker_circuit][1]
            reason = lost_reasons[version]
            if strategy is _ESCALATION:
                max_retries = settings[version].recovery.max_retries
                plan = Plan(
                    _ESCALATION, f"{reason}; attempt {attempt} reached max_retries {max_retries}"
                )
            else:
                plan = Plan(_DIFFERENT_WORKER, reason)
            cid = migration_command_id(worker_id, due_ms, task_id)
        append(
            plan.command(
                command_id=cid,
                ts=ts,
                task_id=task_id,
                task_type=task_type,
                worker_id=worker_id,
                attempt=attempt,
                target=target,
                checkpoint=checkpoint,
                caused_by=caused_by,
            )
        )
    return out


class _Alerts:
    """ALERT rows as the core's `Alert` records: messages from the numbers the kernel
    logged (alerts.py, fleet.py f-strings mirrored), each FIRING's alert_id kept for the
    RESOLVED that ends it (alerts.py `AlertBook`)."""

    def __init__(self, encoded: Encoded, log: Log, out: list[DerivedRecord]) -> None:
        self.names = encoded.names
        self.worker_circuit = encoded.fleet.worker_circuit.tolist()
        self.settings = encoded.versions.settings
        self.out = out
        self.firing: dict[tuple[str, str, str | None], str] = {}
        rows = log.rows
        # The task ids of the SUCCESS records that resolve escalations, fetched in bulk.
        resolving = (
            (rows[:, ROW_TYPE] == ALERT)
            & (rows[:, ALERT_RULE] == _RULES.index(ESCALATIONS))
            & (rows[:, ALERT_STATE] == RESOLVED)
        )
        self.succeeded = iter(encoded.fields.column("task_id", rows[resolving, ROW_RECORD]))

    def record(self, row: list[int], ts: int, caused_by: str) -> Alert:
        rule_code, state_code, subject, a, b, c = _ALERT_FIELDS(row)
        rule, firing = _RULES[rule_code], state_code == FIRING
        settings = self.settings[row[3]]
        if rule == CAPACITY:
            kind, subject_id = "hardware_class", self.names[subject][1]
            message = f"{a} of {b} live {subject_id} workers available"
            if firing:
                message = f"{message}, below {settings.alerts.class_capacity_below:g}%"
        elif rule == OPEN_LONGER:
            circuit_kind, subject_id = self.names[subject]
            kind = circuit_kind.value
            if firing:
                seconds = settings.alerts.open_longer_than_s * 1000.0 / 1000.0
                message = f"{kind} circuit {subject_id} not CLOSED for {seconds:g}s"
            else:
                message = f"{kind} circuit {subject_id} is CLOSED again"
        elif rule == ESCALATIONS:
            kind = "task"
            if firing:
                command = self.out[a]
                subject_id = command.task_id  # type: ignore[union-attr]
                message = f"task {subject_id} escalated: {command.reason}"  # type: ignore[union-attr]
            else:
                subject_id = next(self.succeeded)
                message = f"task {subject_id} succeeded"
        elif rule == FLEET_HEALTH:
            kind = subject_id = "fleet"
            message = f"overall health {overall_health(a, b, c):g}"
            if firing:
                message = f"{message}, below {settings.alerts.fleet_health_below:g}"
        else:
            kind, subject_id = "worker", self.names[self.worker_circuit[subject]][1]
            if firing:
                message = f"worker {subject_id}'s clock is {a / 1000.0:+g}s off the broker's"
            else:
                limit = settings.clock.max_skew_s * 1000.0 / 1000.0
                message = f"worker {subject_id}'s clock is within {limit:g}s again"
        key = (rule, kind, subject_id)
        if firing:
            aid = self.firing[key] = alert_id(rule, kind, subject_id, ts, caused_by)  # type: ignore[arg-type]
        else:
            aid = self.firing.pop(key)
        state = AlertState.FIRING if firing else AlertState.RESOLVED
        return alert_record(aid, state, key, message, ts, caused_by)


def _figures(
    row: list[int],
    ts: int,
    caused_by: str,
    figures_id: Callable[[CircuitKind, str], str],
    names: list[tuple[CircuitKind, str]],
) -> CircuitFigures:
    """A FIGURES row as view.py `figures` builds the record."""
    (
        circuit,
        state_code,
        failures,
        probes,
        trips,
        total_trips,
        successes,
        total_failures,
        by_kind,
        live_figure,
        available_figure,
    ) = _FIGURES_FIELDS(row)
    circuit_kind, circuit_id = names[circuit]
    state = STATES[state_code]
    hardware_class = live = available = None
    workers = live_workers = available_workers = None
    if circuit_kind is _WORKER_KIND:
        if by_kind >= 0:  # its worker's class circuit
            hardware_class = names[by_kind][1]
            live, available = bool(live_figure), bool(available_figure)
    elif circuit_kind is _CLASS_KIND:
        workers, live_workers, available_workers = by_kind, live_figure, available_figure
    return trusted(
        CircuitFigures,
        {
            "event_id": figures_id(circuit_kind, circuit_id),
            "ts": ts,
            "circuit_kind": circuit_kind,
            "circuit_id": circuit_id,
            "state": state,
            "consecutive_failures": failures,
            "half_open_successes": probes,
            "trips": trips,
            "total_trips": total_trips,
            "total_successes": successes,
            "total_failures": total_failures,
            "health": circuit_health(state, failures, probes, total_trips),
            "caused_by": caused_by,
            "hardware_class": hardware_class,
            "live": live,
            "available": available,
            "workers": workers,
            "live_workers": live_workers,
            "available_workers": available_workers,
        },
    )


def _rates(window: tuple, settings: CoreSettings, kind: CircuitKind) -> str:
    """window.py `judge`'s reason for the rules a window met (bits), over its counts."""
    met, n, failures, slow = window
    params = settings.circuits.for_kind(kind)
    rates = []
    if met & 1:
        rates.append(f"failure_rate {failures}/{n} ≥ {float(params.failure_rate_threshold):g}%")
    if met & 2:
        rate = float(params.slow_call_rate_threshold)
        rates.append(f"slow_call_rate {slow}/{n} ≥ {rate:g}%")
    return "; ".join(rates)


def _learned(
    logged: tuple[int, ...], failure_type: FailureType, hardware_class: str
) -> dict[tuple[FailureType, str, RecoveryStrategy], list[int]]:
    """recovery.py `Learned` for the candidates the kernel logged: (strategy, trials,
    successes) each, -1 past the last."""
    learned = {}
    for at in range(0, len(logged), 3):
        if logged[at] >= 0:
            learned[failure_type, hardware_class, STRATEGIES[logged[at]]] = list(
                logged[at + 1 : at + 3]
            )
    return learned


def _lost_reason(heartbeat_timeout_s: float) -> str:
    silence = heartbeat_timeout_s * 1000.0 / 1000.0  # as fleet.py computes it
    return f"{FailureType.WORKER_DISCONNECTION}: worker lost, silent over {silence:g}s"
