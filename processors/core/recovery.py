"""Recovery planning: rules 1-5 of CIRCUITS.md, the ladders and the retry delays."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from faultstream.events.models import FailureType, RecoveryCommand, RecoveryStrategy, trusted

from .circuit import FORCED_OPEN, OPENISH, Circuit
from .ids import jitter

S = RecoveryStrategy
F = FailureType
CPU = "cpu"

_RETRY_LADDER = (S.IMMEDIATE_RETRY, S.DELAYED_RETRY, S.DIFFERENT_WORKER)
_WORKER_LADDER = (S.DIFFERENT_WORKER, S.DIFFERENT_WORKER, S.ESCALATION)
_SOFTWARE_LADDER = (S.DELAYED_RETRY, S.DIFFERENT_WORKER, S.ESCALATION)
LADDERS: dict[FailureType, tuple[RecoveryStrategy, ...]] = {
    F.RESOURCE_EXHAUSTION: (S.REDUCED_BATCH_SIZE, S.REDUCED_PRECISION, S.FALLBACK_CPU),
    F.HARDWARE_ERROR: (S.DIFFERENT_WORKER, S.DELAYED_RETRY, S.FALLBACK_CPU),
    F.BROWSER_FAILURE: (S.BROWSER_RESTART, S.DIFFERENT_WORKER, S.FALLBACK_CPU),
    F.TRANSIENT_ERROR: _RETRY_LADDER,
    F.COMMUNICATION_ERROR: _RETRY_LADDER,
    F.TIMEOUT: _RETRY_LADDER,
    F.WORKER_CRASH: _WORKER_LADDER,
    F.WORKER_DISCONNECTION: _WORKER_LADDER,
    F.PERSISTENT_ERROR: (S.ESCALATION,),
    F.SOFTWARE_ERROR: _SOFTWARE_LADDER,
    F.COORDINATOR_ERROR: _SOFTWARE_LADDER,
    F.UNKNOWN: _SOFTWARE_LADDER,
}

# Strategies that move the task elsewhere: they name a target worker and carry the
# task's newest checkpoint so it resumes instead of restarting.
MOVES_TASK = frozenset({S.DIFFERENT_WORKER, S.DIFFERENT_HARDWARE_CLASS, S.FALLBACK_CPU})

_LOWER_PRECISION = {"fp32": "fp16", "fp16": "int8", "bf16": "int8"}
MAX_RETRY_DELAY_S = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do about one failure; the fleet adds the target worker, ids and checkpoint."""

    strategy: RecoveryStrategy
    reason: str
    delay_s: float = 0.0
    target_hardware_class: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)

    def command(
        self,
        *,
        command_id: str,
        ts: int,
        task_id: str,
        task_type: str | None,
        worker_id: str,
        attempt: int,
        target: str | None,
        checkpoint: int | None,
        caused_by: str,
    ) -> RecoveryCommand:
        """The recovery_command carrying the plan out: the attempt after `attempt` of the
        task, failed on `worker_id`, sent to `target` (None: wherever it is planned)."""
        return trusted(
            RecoveryCommand,
            {
                "command_id": command_id,
                "ts": ts,
                "task_id": task_id,
                "task_type": task_type,
                "worker_id": worker_id,
                "strategy": self.strategy,
                "attempt": attempt + 1,
                "delay_s": float(self.delay_s),
                "target_worker_id": target,
                "target_hardware_class": self.target_hardware_class,
                "parameters": dict(self.parameters),  # its own: a plan may be shared
                "checkpoint_seq": checkpoint,
                "reason": self.reason,
                "caused_by": caused_by,
            },
        )


def retry_delay_s(attempt: int, event_id: str) -> float:
    """`min(2 x 2^attempt, 60) x (1 + j)`, j in [-0.2, 0.2] from the failure's event id."""
    base = MAX_RETRY_DELAY_S if attempt >= 5 else min(2.0 * 2**attempt, MAX_RETRY_DELAY_S)
    return round(base * (1 + jitter(event_id)), 3)


def wait_until_half_open_s(circuit: Circuit, now: int) -> float:
    """How long until an open circuit half-opens (a forced-open one: its current timeout)."""
    if circuit.state is FORCED_OPEN:
        return circuit.reset_timeout_s
    return max(0.0, (circuit.due_ms - now) / 1000.0)


# Per (failure type, hardware class, strategy): [trials, successes] of its commands.
Learned = dict[tuple[FailureType, str, RecoveryStrategy], list[int]]


def plan_failure(
    *,
    failure_type: FailureType,
    attempt: int,
    max_retries: int,
    event_id: str,
    hardware_class: str,
    attributes: Mapping[str, str],
    worker: Circuit,
    hardware: Circuit,
    task_type: Circuit,
    now: int,
    learned: Learned | None = None,
    min_samples: int = 0,
) -> Plan:
    """Rules 1-5, first that applies wins; the circuits have already taken the failure.
    With `learned` (adaptive ladders), rule 5 picks its rung from measured success."""
    if attempt >= max_retries:
        return Plan(S.ESCALATION, f"attempt {attempt} reached max_retries {max_retries}")
    if worker.state in OPENISH:
        return Plan(S.DIFFERENT_WORKER, f"worker circuit {worker.id} is {worker.state}")
    if hardware.state in OPENISH:
        why = f"hardware_class circuit {hardware.id} is {hardware.state}"
        if hardware_class == CPU:
            return Plan(S.DELAYED_RETRY, why, delay_s=wait_until_half_open_s(hardware, now))
        return Plan(S.DIFFERENT_HARDWARE_CLASS, why, target_hardware_class=CPU)
    if task_type.state in OPENISH:
        why = f"task_type circuit {task_type.id} is {task_type.state}"
        return Plan(S.DELAYED_RETRY, why, delay_s=wait_until_half_open_s(task_type, now))
    rungs = _rungs(failure_type, attempt, event_id, hardware_class, attributes)
    if learned is None:
        return next(rungs, None) or _exhausted(failure_type, attempt)
    return adaptive_plan(list(rungs), learned, failure_type, hardware_class, min_samples) or (
        _exhausted(failure_type, attempt)
    )


def ladder_plan(
    failure_type: FailureType,
    attempt: int,
    event_id: str,
    hardware_class: str,
    attributes: Mapping[str, str],
) -> Plan:
    """Rung `attempt` of the failure type's ladder; rungs that cannot apply are skipped."""
    rungs = _rungs(failure_type, attempt, event_id, hardware_class, attributes)
    return next(rungs, None) or _exhausted(failure_type, attempt)


def adaptive_plan(
    candidates: list[Plan],
    learned: Learned,
    failure_type: FailureType,
    hardware_class: str,
    min_samples: int,
) -> Plan | None:
    """The static rung while it has fewer than `min_samples` trials (exploration); then the
    candidate with the best `(successes + 1) / (trials + 2)` among those with the minimum,
    ties by ladder order. None when no rung applies."""
    if not candidates:
        return None
    static = candidates[0]
    trials, _ = learned.get((failure_type, hardware_class, static.strategy), _NONE)
    if trials < min_samples:
        return static
    best, best_trials, best_successes = static, 0, 0
    for plan in candidates:
        trials, successes = learned.get((failure_type, hardware_class, plan.strategy), _NONE)
        if trials < min_samples:
            continue
        # (s + 1) / (t + 2) compared without division, so both engines agree exactly.
        if best_trials == 0 or (successes + 1) * (best_trials + 2) > (best_successes + 1) * (
            trials + 2
        ):
            best, best_trials, best_successes = plan, trials, successes
    # The reason carries what was learned of each candidate: the read side shows it as is.
    learned_of = {}
    for plan in candidates:
        trials, successes = learned.get((failure_type, hardware_class, plan.strategy), _NONE)
        learned_of.setdefault(plan.strategy, f"{plan.strategy} {successes}/{trials}")
    table = ", ".join(learned_of.values())
    why = f"adaptive: {table} -> {best.strategy}; {best.reason}"
    return Plan(best.strategy, why, best.delay_s, best.target_hardware_class, best.parameters)


_NONE = (0, 0)


def _exhausted(failure_type: FailureType, attempt: int) -> Plan:
    return Plan(S.ESCALATION, f"{failure_type} ladder exhausted at attempt {attempt}")


def _rungs(
    failure_type: FailureType,
    attempt: int,
    event_id: str,
    hardware_class: str,
    attributes: Mapping[str, str],
) -> Iterator[Plan]:
    """The plans of the ladder's rungs from `attempt` on that can apply, in ladder order."""
    ladder = LADDERS[failure_type]
    for rung in range(attempt, len(ladder)):
        strategy = ladder[rung]
        reason = f"{failure_type} ladder rung {rung}"
        if strategy is S.REDUCED_BATCH_SIZE:
            batch = _positive_int(attributes.get("batch_size"))
            if batch is None or batch <= 1:
                continue
            yield Plan(strategy, reason, parameters={"batch_size": str(batch // 2)})
        elif strategy is S.REDUCED_PRECISION:
            lower = _LOWER_PRECISION.get(attributes.get("precision", ""))
            if lower is None:
                continue
            yield Plan(strategy, reason, parameters={"precision": lower})
        elif strategy is S.FALLBACK_CPU:
            if hardware_class == CPU:
                yield Plan(S.DIFFERENT_WORKER, f"{reason} (already on cpu)")
            else:
                yield Plan(strategy, reason, target_hardware_class=CPU)
        elif strategy is S.DELAYED_RETRY:
            yield Plan(strategy, reason, delay_s=retry_delay_s(attempt, event_id))
        else:
            yield Plan(strategy, reason)


def _positive_int(text: str | None) -> int | None:
    # isdecimal, not isdigit: "²" is a digit that int() refuses (it would raise here).
    if text is None or not text.strip().isdecimal():
        return None
    return int(text)
