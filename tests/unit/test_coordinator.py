"""The reference coordinator: commands become assignments that honour circuits."""

from __future__ import annotations

from typing import Any

from faultstream.events.config import CoreSettings
from faultstream.events.models import CircuitStateChanged, RecoveryCommand
from faultstream.processors.coordinator import Coordinator


def command(strategy: str, **fields: Any) -> RecoveryCommand:
    base: dict[str, Any] = {
        "command_id": f"cmd-{strategy}-{fields.get('task_id', 't1')}",
        "ts": 1_000,
        "task_id": "t1",
        "task_type": "bert",
        "worker_id": "w1",
        "strategy": strategy,
        "attempt": 1,
        "delay_s": 0.0,
        "reason": "test",
        "caused_by": "e1",
    }
    base.update(fields)
    return RecoveryCommand(**base)


def change(kind: str, circuit_id: str, to_state: str, ts: int = 1_000) -> CircuitStateChanged:
    return CircuitStateChanged(
        event_id=f"c-{circuit_id}-{to_state}-{ts}",
        ts=ts,
        circuit_kind=kind,
        circuit_id=circuit_id,
        from_state="CLOSED",
        to_state=to_state,
        reason="test",
        consecutive_failures=0,
        trips=1,
        reset_timeout_s=60,
        health=50,
        caused_by="e0",
    )


def coordinator(*records: Any) -> Coordinator:
    inbox = list(records)

    def source() -> list[Any]:
        taken = inbox[:]
        inbox.clear()
        return taken

    c = Coordinator(CoreSettings(), source=source)
    for worker, cls in (("w1", "cuda"), ("w2", "cuda"), ("w3", "cuda"), ("c1", "cpu")):
        c.register_worker(worker, cls)
    c.pump()
    return c


def test_no_work_goes_to_a_worker_whose_circuit_is_open() -> None:
    c = coordinator(
        change("worker", "w2", "OPEN"), command("DIFFERENT_WORKER", target_worker_id="w2")
    )
    assert not c.admits("w2", "cuda", "bert")
    assert c.next_assignment("w2", "cuda", now_ms=10_000) is None
    assert c.admits("w3", "cuda", "bert")


def test_forced_open_hardware_class_gets_no_work() -> None:
    c = coordinator(change("hardware_class", "cuda", "FORCED_OPEN"))
    assert not c.admits("w1", "cuda", "bert")
    assert c.admits("c1", "cpu", "bert")


def test_half_open_circuit_gets_at_most_its_probe_limit() -> None:
    c = coordinator(change("task_type", "bert", "HALF_OPEN"))
    limit = CoreSettings().circuits.task_type.half_open_max_calls
    probes = []
    for _ in range(limit):
        assert c.admits("w1", "cuda", "bert")
        probes.append(c.dispatched("w1", "cuda", "bert"))
    assert not c.admits("w2", "cuda", "bert")
    c.completed(probes[0])  # one probe's outcome is in: one more may go
    assert c.admits("w2", "cuda", "bert")


def test_closed_circuit_lifts_the_probe_limit() -> None:
    c = coordinator(change("task_type", "bert", "HALF_OPEN"))
    for _ in range(5):
        c.dispatched("w1", "cuda", "bert")
    c.observe([change("task_type", "bert", "CLOSED", ts=2_000)])
    assert c.admits("w1", "cuda", "bert")


def test_move_resumes_from_checkpoint_on_the_target_worker() -> None:
    c = coordinator(command("DIFFERENT_WORKER", target_worker_id="w3", checkpoint_seq=7))
    assert c.next_assignment("w2", "cuda", now_ms=1_000) is None  # not the target, in grace
    assert c.next_assignment("w1", "cuda", now_ms=1_000) is None  # where it failed
    assignment = c.next_assignment("w3", "cuda", now_ms=1_000)
    assert assignment is not None
    assert assignment.checkpoint_seq == 7 and assignment.attempt == 1
    assert assignment.recovery_command_id == "cmd-DIFFERENT_WORKER-t1"


def test_move_falls_back_to_any_fit_worker_after_the_grace_period() -> None:
    c = coordinator(command("DIFFERENT_WORKER", target_worker_id="w3"))
    assignment = c.next_assignment("w2", "cuda", now_ms=1_000 + c.target_grace_ms)
    assert assignment is not None and assignment.task_id == "t1"


def test_retry_applies_new_parameters_on_top_of_the_tasks_own() -> None:
    c = coordinator()
    c.remember_parameters("t1", {"batch_size": "32", "precision": "fp32", "model": "llama"})
    c.observe([command("REDUCED_BATCH_SIZE", parameters={"batch_size": "16"})])
    first = c.next_assignment("w1", "cuda", now_ms=1_000)
    assert first is not None
    assert first.parameters == {"batch_size": "16", "precision": "fp32", "model": "llama"}
    c.observe([command("REDUCED_PRECISION", attempt=2, parameters={"precision": "fp16"})])
    second = c.next_assignment("w1", "cuda", now_ms=1_000)
    assert second is not None
    assert second.parameters == {"batch_size": "16", "precision": "fp16", "model": "llama"}


def test_delayed_retry_waits_its_delay_in_event_time() -> None:
    c = coordinator(command("DELAYED_RETRY", delay_s=4.5))
    assert c.next_assignment("w1", "cuda", now_ms=5_499) is None
    assert c.next_assignment("w1", "cuda", now_ms=5_500) is not None


def test_fallback_cpu_goes_to_the_cpu_class_only() -> None:
    c = coordinator(command("FALLBACK_CPU", target_hardware_class="cpu", target_worker_id="c1"))
    assert c.next_assignment("w2", "cuda", now_ms=100_000) is None
    assignment = c.next_assignment("c1", "cpu", now_ms=1_000)
    assert assignment is not None and assignment.hardware_class == "cpu"


def test_browser_restart_is_pinned_to_the_worker_and_restarts_first() -> None:
    c = coordinator(command("BROWSER_RESTART"))
    assert c.next_assignment("w2", "cuda", now_ms=1_000_000) is None
    assignment = c.next_assignment("w1", "cuda", now_ms=1_000)
    assert assignment is not None and assignment.restart_browser


def test_escalation_is_reported_not_retried() -> None:
    c = coordinator(command("ESCALATION", attempt=4))
    assert [e.task_id for e in c.escalations] == ["t1"]
    assert c.next_assignment("w1", "cuda", now_ms=10_000) is None


def test_a_command_delivered_twice_is_assigned_once() -> None:
    retry = command("IMMEDIATE_RETRY")
    c = coordinator(retry)
    assert c.next_assignment("w1", "cuda", now_ms=1_000) is not None
    c.observe([retry])
    assert c.next_assignment("w1", "cuda", now_ms=1_000) is None
