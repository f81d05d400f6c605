"""Recovery commands: rules 1-5, ladders, delays, targets, checkpoints (CIRCUITS.md)."""

from __future__ import annotations

import pytest
from histories import History, commands, core_settings

from faultstream.processors.core.ids import command_id
from faultstream.processors.core.recovery import ladder_plan, retry_delay_s

# Class circuits that do not open in these scenarios, so the ladders show.
PATIENT_CLASSES = core_settings(circuits={"hardware_class": {"failure_threshold": 50}})


def last_command(h: History, settings=PATIENT_CLASSES):
    return commands(h.run(settings))[-1]


def test_oom_ladder_halves_batch_then_lowers_precision_then_cpu() -> None:
    h = History()
    h.heartbeat("c1", ts=500, hardware_class="cpu")
    attrs = {"batch_size": "8", "precision": "fp32"}
    h.failure("g1", ts=1_000, failure_type="RESOURCE_EXHAUSTION", attributes=attrs)
    first = last_command(h)
    attrs = {"batch_size": "4", "precision": "fp32"}
    h.failure("g1", ts=2_000, failure_type="RESOURCE_EXHAUSTION", attempt=1, attributes=attrs)
    second = last_command(h)
    attrs = {"batch_size": "4", "precision": "fp16"}
    h.failure("g1", ts=3_000, failure_type="RESOURCE_EXHAUSTION", attempt=2, attributes=attrs)
    third = last_command(h)
    assert (first.strategy, first.parameters, first.attempt) == (
        "REDUCED_BATCH_SIZE",
        {"batch_size": "4"},
        1,
    )
    assert (second.strategy, second.parameters) == ("REDUCED_PRECISION", {"precision": "fp16"})
    assert (third.strategy, third.target_hardware_class, third.target_worker_id) == (
        "FALLBACK_CPU",
        "cpu",
        "c1",
    )


def test_batch_size_rung_that_cannot_apply_moves_to_precision() -> None:
    plan = ladder_plan("RESOURCE_EXHAUSTION", 0, "e1", "cuda", {"batch_size": "1"})
    assert plan.strategy == "FALLBACK_CPU"  # no precision either: on to the third rung
    plan = ladder_plan(
        "RESOURCE_EXHAUSTION", 0, "e1", "cuda", {"batch_size": "x", "precision": "bf16"}
    )
    assert (plan.strategy, plan.parameters) == ("REDUCED_PRECISION", {"precision": "int8"})


def test_batch_size_of_digits_int_refuses_is_no_batch_size_not_a_crash() -> None:
    # "²" passes str.isdigit, and int() raises on it: bad input must never stop the core.
    plan = ladder_plan("RESOURCE_EXHAUSTION", 0, "e1", "cuda", {"batch_size": "²"})
    assert plan.strategy == "FALLBACK_CPU"
    plan = ladder_plan("RESOURCE_EXHAUSTION", 0, "e1", "cuda", {"batch_size": " ٣٢ "})
    assert plan.parameters == {"batch_size": "16"}  # Arabic-Indic 32: int() reads it


def test_fallback_cpu_on_a_cpu_worker_becomes_different_worker() -> None:
    plan = ladder_plan("HARDWARE_ERROR", 2, "e1", "cpu", {})
    assert (plan.strategy, plan.target_hardware_class) == ("DIFFERENT_WORKER", None)


def test_past_the_last_rung_escalates() -> None:
    assert ladder_plan("PERSISTENT_ERROR", 0, "e1", "cuda", {}).strategy == "ESCALATION"
    assert ladder_plan("TIMEOUT", 3, "e1", "cuda", {}).strategy == "ESCALATION"


@pytest.mark.parametrize(
    ("failure_type", "rungs"),
    [
        ("HARDWARE_ERROR", ["DIFFERENT_WORKER", "DELAYED_RETRY", "FALLBACK_CPU"]),
        ("BROWSER_FAILURE", ["BROWSER_RESTART", "DIFFERENT_WORKER", "FALLBACK_CPU"]),
        ("TIMEOUT", ["IMMEDIATE_RETRY", "DELAYED_RETRY", "DIFFERENT_WORKER"]),
        ("WORKER_CRASH", ["DIFFERENT_WORKER", "DIFFERENT_WORKER", "ESCALATION"]),
        ("SOFTWARE_ERROR", ["DELAYED_RETRY", "DIFFERENT_WORKER", "ESCALATION"]),
    ],
)
def test_ladder_rung_is_the_failed_attempt(failure_type: str, rungs: list[str]) -> None:
    got = [ladder_plan(failure_type, n, "e1", "cuda", {}).strategy for n in range(3)]
    assert got == rungs


def test_attempt_at_max_retries_escalates() -> None:
    h = History()
    h.failure("w1", ts=1_000, failure_type="TIMEOUT", attempt=3)
    command = last_command(h)
    assert (command.strategy, command.attempt) == ("ESCALATION", 4)


def test_open_worker_circuit_sends_task_to_the_healthiest_other_worker() -> None:
    h = History()
    h.heartbeat("w3", ts=100)
    h.heartbeat("w2", ts=100)
    h.failure("w2", ts=200, failure_type="WORKER_CRASH", attempt=3)  # w2 is less healthy: 90
    for i in range(5):  # escalated, then moved: only the last one names a target
        h.failure("w1", ts=1_000 + i, failure_type="WORKER_CRASH", attempt=3 if i < 4 else 0)
    command = last_command(h)
    assert (command.strategy, command.target_worker_id) == ("DIFFERENT_WORKER", "w3")
    assert "worker circuit w1 is OPEN" in command.reason


def test_target_worker_ties_break_by_id() -> None:
    h = History()
    for worker in ("w9", "w4", "w7"):
        h.heartbeat(worker, ts=100)
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH")
    assert last_command(h).target_worker_id == "w4"


def test_no_target_worker_when_none_is_eligible() -> None:
    h = History()
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH")
    assert last_command(h).target_worker_id is None


def test_open_hardware_class_moves_task_to_cpu() -> None:
    h = History()
    h.heartbeat("c1", ts=100, hardware_class="cpu")
    h.operator("FORCE_OPEN", "hardware_class", "cuda", ts=500)
    h.failure("g1", ts=1_000, failure_type="TIMEOUT")
    command = last_command(h)
    assert (command.strategy, command.target_hardware_class, command.target_worker_id) == (
        "DIFFERENT_HARDWARE_CLASS",
        "cpu",
        "c1",
    )


def test_open_cpu_class_delays_until_it_half_opens() -> None:
    h = History(hardware_class="cpu")
    for i in range(3):
        h.failure(f"c{i}", ts=1_000, failure_type="HARDWARE_ERROR")  # opens cpu, 120 s
    h.failure("c3", ts=31_000, failure_type="TIMEOUT")
    command = commands(h.run())[-1]
    assert (command.strategy, command.delay_s) == ("DELAYED_RETRY", 90.0)


def test_forced_open_cpu_class_delays_by_its_reset_timeout() -> None:
    h = History(hardware_class="cpu")
    h.operator("FORCE_OPEN", "hardware_class", "cpu", ts=500)
    h.failure("c1", ts=1_000, failure_type="TIMEOUT")
    assert (last_command(h).strategy, last_command(h).delay_s) == ("DELAYED_RETRY", 120.0)


def test_open_task_type_circuit_delays_until_it_half_opens() -> None:
    h = History()
    for i in range(10):
        h.failure(f"w{i}", ts=1_000, failure_type="SOFTWARE_ERROR")  # opens bert, 300 s
    h.failure("w10", ts=101_000, failure_type="TIMEOUT")
    command = commands(h.run())[-1]
    assert (command.strategy, command.delay_s) == ("DELAYED_RETRY", 200.0)
    assert "task_type circuit bert is OPEN" in command.reason


def test_delayed_retry_is_jittered_from_event_id_within_twenty_percent() -> None:
    for attempt, base in [(0, 2.0), (1, 4.0), (4, 32.0), (5, 60.0), (40, 60.0)]:
        delays = {retry_delay_s(attempt, f"e{i}") for i in range(200)}
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert len(delays) > 100  # really jittered
    assert retry_delay_s(2, "same") == retry_delay_s(2, "same")


def test_command_id_derives_from_the_failure_event_id() -> None:
    h = History()
    failure = h.failure("w1", ts=1_000, failure_type="TIMEOUT")
    command = last_command(h)
    assert command.command_id == command_id(failure.event_id)
    assert command.caused_by == failure.event_id


def test_moving_command_carries_the_newest_checkpoint_across_workers() -> None:
    h = History()
    h.heartbeat("w2", ts=100)
    h.checkpoint("w1", ts=1_000, seq=3, task_id="t1")
    h.checkpoint("w3", ts=1_500, seq=7, task_id="t1")  # resumed elsewhere, further on
    h.checkpoint("w1", ts=1_600, seq=5, task_id="t1")  # an older one arriving late
    h.failure("w1", ts=2_000, failure_type="WORKER_CRASH", task_id="t1")
    assert last_command(h).checkpoint_seq == 7


def test_checkpoint_is_forgotten_after_success() -> None:
    h = History()
    h.checkpoint("w1", ts=1_000, seq=3, task_id="t1")
    h.success("w1", ts=1_500, task_id="t1")
    h.failure("w1", ts=2_000, failure_type="WORKER_CRASH", task_id="t1")
    assert last_command(h).checkpoint_seq is None


def test_non_moving_command_carries_no_checkpoint_or_target() -> None:
    h = History()
    h.heartbeat("w2", ts=100)
    h.checkpoint("w1", ts=1_000, seq=3, task_id="t1")
    h.failure("w1", ts=2_000, failure_type="TIMEOUT", task_id="t1")
    command = last_command(h)
    assert (command.strategy, command.checkpoint_seq, command.target_worker_id) == (
        "IMMEDIATE_RETRY",
        None,
        None,
    )


def test_each_failure_yields_exactly_one_command() -> None:
    h = History()
    failures = [
        h.failure(f"w{i % 3}", ts=1_000 + i, failure_type=ft, attempt=i % 4)
        for i, ft in enumerate(["TIMEOUT", "HARDWARE_ERROR", "WORKER_CRASH"] * 5)
    ]
    caused = [c.caused_by for c in commands(h.run())]
    assert caused == [f.event_id for f in failures]
