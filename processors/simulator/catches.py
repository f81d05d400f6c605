"""Which rule caught a scripted incident, and when: the demo's report and the bench's delays.

A catch is the first derived record, from the incident's start to a little after its end,
that is about the incident's subject and names a rule: a circuit change of its worker,
class or task type, a FIRING alert on it, or a recovery command whose rule is about it (a
lost worker's move is about the worker; an adaptive or fleet-guard choice about the failed
worker's class). The core's `reason` names the rule that decided (CIRCUITS.md); an alert's
`rule` is its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from faultstream.events.models import Alert, CircuitStateChanged, DerivedRecord, RecoveryCommand

from .incidents import IncidentState

# (rule, what its reasons say): the core's reasons name most rules by their setting.
RULE_MARKS = (
    ("failure_threshold", "failure_threshold"),
    ("failure_rate", "failure_rate"),
    ("slow_call_rate", "slow_call_rate"),
    ("outlier", "outlier"),
    ("adaptive", "adaptive"),
    ("fleet_guard", "fleet_guard"),
    ("heartbeat_timeout", "worker lost"),
    ("half_open_probe", "failed while half-open"),
)
WORKER_COMMAND_RULES = ("heartbeat_timeout",)
# A task started just before an incident ends may fail after it: still the incident's.
GRACE_MS = 5 * 60_000

WORKER_KINDS = ("flaky_worker", "silent_worker", "throttled_worker")
CLASS_KINDS = ("hardware_fault", "browser_crash", "first_rung_fails")


@dataclass(frozen=True)
class Signal:
    """One derived record that names a rule, reduced to what a catch needs."""

    ts: int
    subject_kind: str  # worker, hardware_class, task_type, task or fleet
    subject_id: str
    rules: tuple[str, ...]
    what: str  # for the report: "circuit worker:cpu-03 OPEN", "command REDUCED_PRECISION", …
    # A command's: the failed worker's class, its task type and the strategy chosen.
    hardware_class: str | None = None
    task_type: str | None = None
    strategy: str | None = None


@dataclass(frozen=True)
class Catch:
    rules: tuple[str, ...]
    ts: int
    delay_ms: int  # from the incident's start
    what: str

    @property
    def rule(self) -> str:
        return " + ".join(self.rules)


def rules_named(reason: str) -> tuple[str, ...]:
    return tuple(rule for rule, mark in RULE_MARKS if mark in reason)


def circuit_signal(
    ts: int, circuit_kind: str, circuit_id: str, to_state: str, reason: str
) -> Signal | None:
    rules = rules_named(reason)
    if not rules:
        return None
    what = f"circuit {circuit_kind}:{circuit_id} {to_state}"
    return Signal(ts, circuit_kind, circuit_id, rules, what)


def command_signals(
    ts: int,
    worker_id: str,
    hardware_class: str | None,
    task_type: str | None,
    strategy: str,
    reason: str,
) -> list[Signal]:
    """A command's rules about its worker (a lost worker's moves) and about its worker's
    class (adaptive ladders learn per class; the fleet guard blames the class)."""
    rules = rules_named(reason)
    what = f"command {strategy} for a task of {worker_id}"
    signals = []
    about_worker = tuple(rule for rule in rules if rule in WORKER_COMMAND_RULES)
    if about_worker:
        signals.append(Signal(ts, "worker", worker_id, about_worker, what, hardware_class,
                              task_type, strategy))  # fmt: skip
    about_class = tuple(rule for rule in rules if rule not in WORKER_COMMAND_RULES)
    if about_class and hardware_class is not None:
        signals.append(Signal(ts, "hardware_class", hardware_class, about_class, what,
                              hardware_class, task_type, strategy))  # fmt: skip
    return signals


def alert_signal(
    ts: int, rule: str, subject_kind: str, subject_id: str, state: str
) -> Signal | None:
    if state != "FIRING":
        return None
    return Signal(ts, subject_kind, subject_id, (rule,), f"alert {rule}")


def signals_of(records: Iterable[DerivedRecord], worker_classes: Mapping[str, str]) -> list[Signal]:
    """The signals among derived records, in their order; `worker_classes` gives each
    worker's hardware class (a command does not carry it)."""
    signals = []
    for record in records:
        if isinstance(record, CircuitStateChanged):
            signal = circuit_signal(
                record.ts, record.circuit_kind, record.circuit_id, record.to_state, record.reason
            )
        elif isinstance(record, RecoveryCommand):
            signals += command_signals(
                record.ts,
                record.worker_id,
                worker_classes.get(record.worker_id),
                record.task_type,
                record.strategy,
                record.reason,
            )
            continue
        elif isinstance(record, Alert):
            signal = alert_signal(
                record.ts, record.rule, record.subject_kind, record.subject_id, record.state
            )
        else:
            continue
        if signal is not None:
            signals.append(signal)
    return signals


def first_catch(state: IncidentState, signals: Iterable[Signal]) -> Catch | None:
    """The earliest signal about the incident's subject while it lasts; None if none."""
    began = state.started_at
    if began is None:
        return None
    until = began - state.spec.start_ms + state.spec.end_ms + GRACE_MS
    best: Signal | None = None
    for signal in signals:
        sooner = best is None or signal.ts < best.ts
        if sooner and began <= signal.ts < until and is_about(state, signal):
            best = signal
    if best is None:
        return None
    return Catch(best.rules, best.ts, best.ts - began, best.what)


def is_about(state: IncidentState, signal: Signal) -> bool:
    spec = state.spec
    kind = spec.kind
    command = signal.strategy is not None
    subject = (signal.subject_kind, signal.subject_id)
    if kind in WORKER_KINDS:
        return signal.subject_kind == "worker" and signal.subject_id in state.workers
    if kind in CLASS_KINDS:
        if subject != ("hardware_class", spec.hardware_class):
            return False
        if kind == "first_rung_fails" and command:
            # Caught once a command for it stops choosing the rung that never works.
            if spec.task_type is not None and signal.task_type != spec.task_type:
                return False
            return signal.strategy != spec.fails_on
        return True
    # oom and bad_release: their task type's circuit, an escalation of a task they hit, or
    # what was learned on their tasks
    if signal.subject_kind == "task":
        return signal.subject_id in state.tasks
    if command:
        return signal.subject_kind == "hardware_class" and signal.task_type == spec.task_type
    return subject == ("task_type", spec.task_type)
