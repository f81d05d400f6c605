"""One named scenario per rule of the circuits document (docs/circuits.md), each written
so that it fails when that rule alone is broken.

The older files (test_circuits.py, test_recovery.py, test_lost_workers_and_guard.py) hold
the first scenarios; this one adds those that were missing or that the defaults could
explain away (an ESCALATION at max_retries 3 that the ladder gives anyway). Which broken
rule each test catches was checked by mutating the core (docs/TESTING.md).
"""

from __future__ import annotations

import pytest
from histories import History, commands, core_settings, moves, run, transitions, without_alerts

from faultstream.events.config import CoreSettings
from faultstream.events.models import FailureType, Tick, WorkerEvent
from faultstream.processors.core import FleetCore
from faultstream.processors.core.circuit import CircuitParams
from faultstream.processors.core.ids import command_id, jitter, migration_command_id, transition_id
from faultstream.processors.core.recovery import retry_delay_s
from faultstream.processors.core.repeats import SEEN_CONTROL_IDS, SEEN_IDS_PER_WORKER


def crash(h: History, worker: str, times: int, ts: int, step: int = 0, **fields) -> int:
    """`times` WORKER_CRASH failures of `worker` from `ts` on; the ts of the last one."""
    for i in range(times):
        h.failure(worker, ts=ts + i * step, failure_type="WORKER_CRASH", **fields)
    return ts + (times - 1) * step


def view_after(h: History, settings: CoreSettings | None = None) -> dict:
    core = FleetCore(settings)
    run(h.records, core=core)
    return core.circuits_view()


def last_command(h: History, settings: CoreSettings | None = None):
    return commands(h.run(settings))[-1]


# --- what counts on which circuit ---------------------------------------------------------


def test_a_success_counts_on_its_worker_class_and_task_type_circuits() -> None:
    h = History()
    for failure_type in ("WORKER_CRASH", "HARDWARE_ERROR", "SOFTWARE_ERROR"):
        h.failure("w1", ts=1_000, failure_type=failure_type)
        h.failure("w1", ts=1_000, failure_type=failure_type)
    before = view_after(h)
    h.success("w1", ts=2_000)
    h.success("w1", ts=3_000)
    after = view_after(h)
    for section, circuit_id in (("workers", "w1"), ("hardware_classes", "cuda"),
                                ("task_types", "bert")):  # fmt: skip
        assert before[section][circuit_id]["health_percentage"] == 80.0  # 2 in a row
        assert after[section][circuit_id]["health_percentage"] == 100.0  # reset by success
        assert after[section][circuit_id]["total_successes"] == 2


DEFAULT_ATTRIBUTION = {
    "workers": {"WORKER_CRASH", "WORKER_DISCONNECTION", "BROWSER_FAILURE"},
    "hardware_classes": {"HARDWARE_ERROR", "RESOURCE_EXHAUSTION"},
}


@pytest.mark.parametrize("failure_type", list(FailureType))
def test_each_failure_counts_on_exactly_the_circuit_its_type_is_attributed_to(
    failure_type: FailureType,
) -> None:
    h = History()
    h.failure("w1", ts=1_000, failure_type=failure_type)
    view = view_after(h)
    counted = {
        section: view[section][circuit_id]["total_failures"]
        for section, circuit_id in (
            ("workers", "w1"),
            ("hardware_classes", "cuda"),
            ("task_types", "bert"),
        )
    }
    expected = next(
        (section for section, types in DEFAULT_ATTRIBUTION.items() if failure_type in types),
        "task_types",
    )
    assert counted == {section: int(section == expected) for section in counted}


def test_heartbeat_start_and_checkpoint_count_on_no_circuit_but_name_them() -> None:
    h = History()
    h.heartbeat("w1", ts=1_000)
    h.started("w1", ts=2_000, task_type="resnet")
    h.checkpoint("w1", ts=3_000, seq=1)
    view = view_after(h)
    assert set(view["task_types"]) == {"resnet"}  # a circuit appears when first named
    for section, circuit_id in (("workers", "w1"), ("hardware_classes", "cuda"),
                                ("task_types", "resnet")):  # fmt: skip
        fields = view[section][circuit_id]
        assert (fields["state"], fields["health_percentage"]) == ("CLOSED", 100.0)
        assert (fields["total_successes"], fields["total_failures"]) == (0, 0)


def test_a_worker_that_reports_another_hardware_class_moves_to_it() -> None:
    h = History()
    for worker in ("w1", "w2", "w3"):
        h.heartbeat(worker, ts=1_000)
    h.heartbeat("w1", ts=2_000, hardware_class="rocm")  # w1 has been moved to rocm
    h.failure("w1", ts=3_000, failure_type="HARDWARE_ERROR", hardware_class="rocm")
    h.failure("w2", ts=4_000, failure_type="WORKER_CRASH")  # a move within cuda
    view = view_after(h)
    assert view["hardware_classes"]["rocm"]["total_failures"] == 1
    assert view["hardware_classes"]["cuda"]["total_failures"] == 0
    assert last_command(h).target_worker_id == "w3"  # w1 is no longer a cuda worker
    h.failure("r2", ts=5_000, failure_type="WORKER_CRASH", hardware_class="rocm")
    assert last_command(h).target_worker_id == "w1"  # but a rocm one


# --- states and transitions ---------------------------------------------------------------


def test_reset_then_reopen_waits_the_new_timeout_not_the_stale_one() -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000, step=1_000)  # opens at 5_000: due at 65_000
    h.operator("RESET", "worker", "w1", ts=20_000)
    crash(h, "w1", 5, ts=30_000, step=1_000)  # opens again at 34_000: due at 94_000
    h.heartbeat("w1", ts=60_000)
    h.tick(65_000)  # the first opening's moment: stale since the RESET
    h.heartbeat("w1", ts=90_000)
    assert [m[3] for m in moves(h.run())] == ["OPEN", "CLOSED", "OPEN"]
    tick = h.tick(94_000)
    half_open = transitions(h.run())[-1]
    assert (half_open.to_state, half_open.ts, half_open.caused_by) == (
        "HALF_OPEN",
        94_000,
        tick.event_id,
    )


def test_reset_and_reopen_within_one_millisecond_half_open_once() -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000)
    h.operator("RESET", "worker", "w1", ts=1_000)
    crash(h, "w1", 5, ts=1_000)  # the same due moment as the stale one
    h.heartbeat("w1", ts=30_000)
    h.tick(61_000)
    assert [m[2:] for m in moves(h.run())] == [
        ("CLOSED", "OPEN"),
        ("OPEN", "CLOSED"),
        ("CLOSED", "OPEN"),
        ("OPEN", "HALF_OPEN"),
    ]


@pytest.mark.parametrize(
    ("kind", "circuit_id", "hardware_class", "failure_type"),
    [("task_type", "bert", "cuda", "TIMEOUT"), ("hardware_class", "cpu", "cpu", "TIMEOUT")],
)
def test_force_open_after_a_config_change_waits_the_new_recovery_timeout(
    kind: str, circuit_id: str, hardware_class: str, failure_type: str
) -> None:
    h = History(hardware_class=hardware_class)
    h.started("w1", ts=500)  # the circuits exist, with the old recovery_timeout_s
    h.config(1_000, {"circuits": {kind: {"recovery_timeout_s": 10}}})
    h.operator("FORCE_OPEN", kind, circuit_id, ts=2_000)
    failure = h.failure("w2", ts=3_000, failure_type=failure_type)
    outputs = h.run()
    forced = transitions(outputs)[-1]
    assert (forced.to_state, forced.reset_timeout_s) == ("FORCED_OPEN", 10.0)
    command = commands(outputs)[-1]
    assert (command.strategy, command.delay_s, command.caused_by) == (
        "DELAYED_RETRY",
        10.0,
        failure.event_id,
    )
    assert f"{kind} circuit {circuit_id} is FORCED_OPEN" in command.reason


def test_force_open_of_an_open_circuit_keeps_its_current_backoff() -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000)  # trip 1: 60 s
    h.failure("w1", ts=61_000, failure_type="WORKER_CRASH")  # half-opens, fails: 120 s
    forced_by = h.operator("FORCE_OPEN", "worker", "w1", ts=62_000)
    h.operator("FORCE_OPEN", "worker", "w1", ts=63_000)  # already forced: nothing
    outputs = h.run()
    forced = transitions(outputs)[-1]
    assert (forced.from_state, forced.to_state, forced.reset_timeout_s) == (
        "OPEN",
        "FORCED_OPEN",
        120.0,
    )
    assert (forced.ts, forced.caused_by) == (62_000, forced_by.event_id)
    assert forced.reason == "operator FORCE_OPEN by alice"
    assert [m[3] for m in moves(outputs)] == ["OPEN", "HALF_OPEN", "OPEN", "FORCED_OPEN"]


def test_reset_of_a_forced_open_circuit_closes_it_and_counting_starts_over() -> None:
    h = History()
    h.operator("FORCE_OPEN", "worker", "w1", ts=1_000)
    reset = h.operator("RESET", "worker", "w1", ts=2_000)
    crash(h, "w1", 4, ts=3_000)  # 4 of 5: still CLOSED
    outputs = h.run()
    closed = transitions(outputs)[-1]
    assert (closed.from_state, closed.to_state, closed.caused_by) == (
        "FORCED_OPEN",
        "CLOSED",
        reset.event_id,
    )
    assert (closed.ts, closed.reason, closed.health) == (2_000, "operator RESET by alice", 100.0)
    assert len(transitions(outputs)) == 2


@pytest.mark.parametrize("probes", [3, 4])
def test_half_open_reports_how_many_probe_calls_are_allowed(probes: int) -> None:
    settings = core_settings(circuits={"worker": {"half_open_max_calls": probes}})
    h = History()
    crash(h, "w1", 5, ts=1_000)
    h.heartbeat("w1", ts=30_000)
    h.tick(61_000)
    half_open = transitions(h.run(settings))[-1]
    assert half_open.reason == f"reset_timeout elapsed; {probes} probe calls allowed"


@pytest.mark.parametrize("success_threshold", [1, 2])
def test_half_open_closes_at_the_success_that_reaches_success_threshold(
    success_threshold: int,
) -> None:
    settings = core_settings(circuits={"worker": {"success_threshold": success_threshold}})
    h = History()
    crash(h, "w1", 5, ts=1_000)
    h.heartbeat("w1", ts=30_000)
    successes = [h.success("w1", ts=62_000 + i * 1_000) for i in range(success_threshold)]
    closed = transitions(h.run(settings))[-1]
    assert (closed.from_state, closed.to_state) == ("HALF_OPEN", "CLOSED")
    assert (closed.ts, closed.caused_by) == (successes[-1].ts, successes[-1].event_id)
    assert closed.reason == "success_threshold reached"


def test_failure_while_half_open_reopens_naming_it() -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000)
    h.heartbeat("w1", ts=30_000)
    h.tick(61_000)
    failure = h.failure("w1", ts=62_000, failure_type="WORKER_CRASH")
    reopened = transitions(h.run())[-1]
    assert (reopened.from_state, reopened.to_state, reopened.ts) == ("HALF_OPEN", "OPEN", 62_000)
    assert reopened.caused_by == failure.event_id
    assert reopened.reason == "WORKER_CRASH; failed while half-open"


def test_open_health_counts_every_opening_of_the_circuits_life() -> None:
    settings = core_settings(circuits={"worker": {"success_threshold": 1}})
    h = History()
    ts = 1_000
    for _ in range(3):  # open, half-open, close: three times
        crash(h, "w1", 5, ts=ts)
        h.heartbeat("w1", ts=ts + 30_000)
        h.success("w1", ts=ts + 60_000)
        ts += 61_000
    crash(h, "w1", 5, ts=ts)
    opened = [t for t in transitions(h.run(settings)) if t.to_state == "OPEN"]
    assert [(t.trips, t.health) for t in opened] == [(1, 18.0), (1, 16.0), (1, 14.0), (1, 12.0)]


def test_due_moment_is_rounded_up_to_the_millisecond_not_to_the_nearest() -> None:
    settings = core_settings(circuits={"worker": {"recovery_timeout_s": 0.0014}})
    h = History()
    crash(h, "w1", 5, ts=5_000)  # due at 5_001.4
    h.tick(5_001)
    assert [m[3] for m in moves(h.run(settings))] == ["OPEN"]
    h.tick(5_002)
    assert transitions(h.run(settings))[-1].ts == 5_002


def test_due_moments_revealed_together_apply_in_the_order_they_fell_due() -> None:
    h = History()
    crash(h, "w2", 5, ts=1_000)  # due at 61_000
    crash(h, "w1", 5, ts=2_000)  # due at 62_000: later, though its id sorts first
    h.heartbeat("w1", ts=30_000)
    h.heartbeat("w2", ts=30_000)
    h.tick(59_000)
    tick = h.tick(70_000)
    half_opened = [t for t in transitions(h.run()) if t.to_state == "HALF_OPEN"]
    assert [(t.circuit_id, t.ts, t.caused_by) for t in half_opened] == [
        ("w2", 61_000, tick.event_id),
        ("w1", 62_000, tick.event_id),
    ]


@pytest.mark.parametrize("revealing", ["CONFIG_CHANGED", "OPERATOR"])
def test_a_control_record_reveals_what_fell_due_before_it(revealing: str) -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000)
    h.heartbeat("w1", ts=40_000)
    if revealing == "CONFIG_CHANGED":
        record = h.config(62_000, {"circuits": {"task_type": {"failure_threshold": 7}}})
    else:
        record = h.operator("RESET", "task_type", "bert", ts=62_000)  # closed: no record
    half_open = transitions(h.run())[-1]
    assert (half_open.to_state, half_open.ts, half_open.caused_by) == (
        "HALF_OPEN",
        61_000,
        record.event_id,
    )


def test_every_transition_carries_the_state_it_leads_to() -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000)
    h.heartbeat("w1", ts=30_000)
    h.success("w1", ts=62_000)
    outputs = h.run()
    opened, half_open = transitions(outputs)
    assert (opened.consecutive_failures, opened.trips, opened.reset_timeout_s) == (5, 1, 60.0)
    assert (opened.circuit_kind, opened.circuit_id, opened.health) == ("worker", "w1", 18.0)
    assert (half_open.consecutive_failures, half_open.trips, half_open.health) == (5, 1, 40.0)
    assert view_after(h)["workers"]["w1"]["health_percentage"] == 50.0  # one probe success


def test_a_transitions_id_derives_from_its_cause_circuit_and_move() -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000)
    h.heartbeat("w1", ts=30_000)
    h.failure("w1", ts=62_000, failure_type="WORKER_CRASH")  # half-opens, then re-opens
    h.operator("FORCE_OPEN", "hardware_class", "w1", ts=63_000)  # a class named like it
    records = transitions(h.run())
    assert [(t.circuit_kind, t.from_state, t.to_state) for t in records] == [
        ("worker", "CLOSED", "OPEN"),
        ("worker", "OPEN", "HALF_OPEN"),
        ("worker", "HALF_OPEN", "OPEN"),
        ("hardware_class", "CLOSED", "FORCED_OPEN"),
    ]
    for t in records:
        assert t.event_id == transition_id(
            t.caused_by, t.circuit_kind.value, t.circuit_id, t.from_state, t.to_state, t.ts
        )


def test_one_input_revealing_the_same_move_twice_gives_each_its_own_id() -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000)  # due at 61_000
    h.heartbeat("w1", ts=40_000)  # lost at 70_000
    h.tick(200_000)  # the first input after a quiet spell (a processor outage, say)
    revealed = transitions(h.run())[1:]
    assert [(t.to_state, t.ts) for t in revealed] == [
        ("HALF_OPEN", 61_000),
        ("OPEN", 70_000),  # the disconnection fails the probe: 120 s
        ("HALF_OPEN", 190_000),
    ]
    assert len({t.event_id for t in revealed}) == 3


# --- repeats, memory and the view ---------------------------------------------------------


def test_the_last_ten_thousand_ids_of_a_worker_are_remembered_and_no_more() -> None:
    core = FleetCore()
    first = WorkerEvent(event_id="h0", kind="HEARTBEAT", ts=1, worker_id="w1",
                        hardware_class="cuda")  # fmt: skip
    core.process(first)
    for i in range(1, SEEN_IDS_PER_WORKER):
        core.process(first.model_copy(update={"event_id": f"h{i}", "ts": 1 + i}))
    now = core.now
    assert core.process(first.model_copy(update={"ts": 10**9})) == []  # still known
    assert core.now == now
    core.process(first.model_copy(update={"event_id": "one more", "ts": now}))
    worker = core._workers["w1"]
    assert len(worker.seen) == len(worker.seen_order) == SEEN_IDS_PER_WORKER  # bounded


def test_the_last_hundred_thousand_control_ids_are_remembered_and_no_more() -> None:
    core = FleetCore()
    for i in range(SEEN_CONTROL_IDS):
        core.process(Tick.model_construct(event_id=f"t{i}", ts=i, received_at=None))
    now = core.now
    assert core.process(Tick(event_id="t0", ts=10**9)) == []  # still known
    assert core.now == now
    core.process(Tick(event_id="one more", ts=now))
    assert len(core._control_seen) == len(core._control_order) == SEEN_CONTROL_IDS


def test_the_view_is_dated_at_now_with_its_aggregate_and_sections() -> None:
    h = History()
    crash(h, "w1", 5, ts=1_000)
    h.tick(7_000)
    view = view_after(h)
    assert set(view) == {"timestamp", "aggregate", "workers", "hardware_classes", "task_types"}
    assert view["timestamp"] == 7_000
    assert (view["aggregate"]["total_circuits"], view["aggregate"]["open_circuits"]) == (3, 1)


# --- decision time (at the core) ----------------------------------------------------------


def test_decisions_are_dated_by_received_at_and_a_late_record_at_now() -> None:
    h = History()
    h.heartbeat("w1", ts=5_000, received_at=9_000)
    future = h.failure("w2", ts=10**12, received_at=10_000, failure_type="TIMEOUT")
    late = h.failure("w3", ts=1_000, received_at=2_000, failure_type="TIMEOUT")
    core = FleetCore()
    outputs = run(h.records, core=core)
    assert core.now == 10_000
    assert [(c.caused_by, c.ts) for c in commands(outputs)] == [
        (future.event_id, 10_000),
        (late.event_id, 10_000),
    ]


def test_the_clock_starts_at_zero() -> None:
    h = History()
    h.failure("w1", ts=0, failure_type="TIMEOUT")
    assert last_command(h).ts == 0


# --- fleet guard --------------------------------------------------------------------------


def cuda_fleet(h: History, size: int, ts: int = 100) -> None:
    for i in range(1, size + 1):
        h.heartbeat(f"w{i}", ts=ts)


def test_forced_open_workers_count_as_open_for_the_fleet_guard() -> None:
    h = History()
    cuda_fleet(h, 4)
    h.operator("FORCE_OPEN", "worker", "w1", ts=500)
    h.operator("FORCE_OPEN", "worker", "w2", ts=500)
    crash(h, "w3", 5, ts=1_000)  # would make 3 of 4 open or forced open
    outputs = h.run()
    assert [m[3] for m in moves(outputs)] == ["FORCED_OPEN", "FORCED_OPEN"]
    assert commands(outputs)[-1].reason.startswith("fleet_guard; ")


def test_max_open_fraction_is_read_from_the_settings() -> None:
    settings = core_settings(circuits={"worker": {"max_open_fraction": 0.75}})
    h = History()
    cuda_fleet(h, 4)
    for worker in ("w1", "w2", "w3", "w4"):
        crash(h, worker, 5, ts=1_000)  # 3 of 4 is allowed now; 4 of 4 is not
    assert [m[1] for m in moves(h.run(settings))] == ["w1", "w2", "w3"]


def test_a_guarded_failure_keeps_its_plans_strategy_target_and_parameters() -> None:
    settings = core_settings(
        circuits={
            "attribution": {
                "worker": ["WORKER_CRASH", "WORKER_DISCONNECTION", "RESOURCE_EXHAUSTION"],
                "hardware_class": ["HARDWARE_ERROR"],
            }
        }
    )
    h = History()
    cuda_fleet(h, 4)
    crash(h, "w1", 5, ts=1_000)
    crash(h, "w2", 5, ts=1_000)
    crash(h, "w3", 4, ts=1_000)
    h.failure("w3", ts=2_000, failure_type="RESOURCE_EXHAUSTION",
              attributes={"batch_size": "8"})  # fmt: skip
    halved = last_command(h, settings)
    assert (halved.strategy, halved.parameters) == ("REDUCED_BATCH_SIZE", {"batch_size": "4"})
    assert halved.reason == "fleet_guard; RESOURCE_EXHAUSTION ladder rung 0"
    h.heartbeat("c1", ts=2_500, hardware_class="cpu")
    crash(h, "w3", 2, ts=3_000)  # the third guarded failure opens the cuda class
    moved = last_command(h, settings)
    assert (moved.strategy, moved.target_hardware_class, moved.target_worker_id) == (
        "DIFFERENT_HARDWARE_CLASS",
        "cpu",
        "c1",
    )
    assert moved.reason == "fleet_guard; hardware_class circuit cuda is OPEN"


# --- lost workers -------------------------------------------------------------------------


def test_a_lost_workers_disconnection_counts_on_its_class_when_attributed_there() -> None:
    settings = core_settings(
        circuits={
            "attribution": {
                "worker": ["WORKER_CRASH"],
                "hardware_class": ["HARDWARE_ERROR", "WORKER_DISCONNECTION"],
            },
            "hardware_class": {"failure_threshold": 1},
        }
    )
    h = History()
    h.heartbeat("w1", ts=1_000)
    tick = h.tick(40_000)
    core = FleetCore(settings)
    opened, *published = without_alerts(run(h.records, core=core))
    # Then the TICK's figures: the lost worker, and its class with the failure it took.
    assert [(f.circuit_id, f.total_failures, f.live, f.live_workers) for f in published] == [
        ("w1", 0, False, None),
        ("cuda", 1, None, 0),
    ]
    assert (opened.circuit_kind, opened.circuit_id, opened.to_state) == (
        "hardware_class",
        "cuda",
        "OPEN",
    )
    assert (opened.ts, opened.caused_by) == (31_000, tick.event_id)
    assert opened.reason == (
        "WORKER_DISCONNECTION: worker lost, silent over 30s; failure_threshold reached"
    )
    assert core.circuits_view()["workers"]["w1"]["total_failures"] == 0


def test_a_lost_workers_disconnection_counts_on_the_task_types_it_was_running() -> None:
    settings = core_settings(
        circuits={"attribution": {"worker": ["WORKER_CRASH"], "hardware_class": []}}
    )
    h = History()
    h.started("w1", ts=1_000, task_id="t1", task_type="bert")
    h.started("w1", ts=1_000, task_id="t2", task_type="resnet")
    h.started("w2", ts=1_000, task_id="t3", task_type="gpt")
    h.heartbeat("w2", ts=20_000)
    h.tick(40_000)  # w1 is lost; w2 is not
    view = view_after(h, settings)
    counted = {name: c["total_failures"] for name, c in view["task_types"].items()}
    assert counted == {"bert": 1, "resnet": 1, "gpt": 0}
    assert view["workers"]["w1"]["total_failures"] == 0


def test_a_lost_workers_tasks_escalate_at_the_configured_max_retries() -> None:
    settings = core_settings(recovery={"max_retries": 1})
    h = History()
    h.started("w1", ts=1_000, task_id="t0", attempt=0)
    h.started("w1", ts=1_000, task_id="t1", attempt=1)
    h.heartbeat("w2", ts=30_000)
    h.tick(40_000)
    moved, escalated = commands(h.run(settings))
    assert (moved.task_id, moved.strategy, moved.attempt) == ("t0", "DIFFERENT_WORKER", 1)
    assert moved.reason == "WORKER_DISCONNECTION: worker lost, silent over 30s"
    assert (escalated.task_id, escalated.strategy, escalated.attempt) == ("t1", "ESCALATION", 2)
    assert escalated.reason == (
        "WORKER_DISCONNECTION: worker lost, silent over 30s; attempt 1 reached max_retries 1"
    )
    assert escalated.target_worker_id is None and moved.target_worker_id == "w2"


def test_a_worker_is_lost_only_after_an_unrounded_fractional_timeout() -> None:
    settings = core_settings(recovery={"heartbeat_timeout_s": 0.0015})
    h = History()
    h.started("w1", ts=1_000)  # due at 1_001.5
    h.tick(1_001)
    assert commands(h.run(settings)) == []
    h.tick(1_002)  # 2 ms of silence: more than 1.5
    [command] = commands(h.run(settings))
    assert (command.ts, command.strategy) == (1_002, "DIFFERENT_WORKER")


def test_a_longer_heartbeat_timeout_applies_to_running_timers() -> None:
    h = History()
    h.started("w1", ts=1_000)
    h.config(2_000, {"recovery": {"heartbeat_timeout_s": 100}})
    h.tick(40_000)  # past the old 30 s
    assert commands(h.run()) == []
    h.tick(101_001)
    assert [c.ts for c in commands(h.run())] == [101_000]


def test_a_heartbeat_timeout_change_leaves_pending_half_open_moments_alone() -> None:
    h = History()
    h.heartbeat("w0", ts=500)
    crash(h, "w1", 5, ts=1_000)  # due at 61_000
    h.config(2_000, {"recovery": {"heartbeat_timeout_s": 100}})
    h.tick(61_000)
    assert [m[3] for m in moves(h.run())] == ["OPEN", "HALF_OPEN"]


# --- recovery commands: the rules and their order ------------------------------------------


def test_attempt_at_max_retries_one_escalates_where_the_ladder_would_not() -> None:
    settings = core_settings(recovery={"max_retries": 1})
    h = History()
    h.failure("w1", ts=1_000, failure_type="TIMEOUT", attempt=0)
    first = last_command(h, settings)
    h.failure("w1", ts=2_000, failure_type="TIMEOUT", attempt=1)  # the ladder: DELAYED_RETRY
    second = last_command(h, settings)
    assert (first.strategy, first.attempt) == ("IMMEDIATE_RETRY", 1)
    assert (second.strategy, second.attempt, second.delay_s) == ("ESCALATION", 2, 0.0)
    assert second.reason == "attempt 1 reached max_retries 1"


def test_attempt_at_max_retries_five_escalates_before_an_open_worker_circuit() -> None:
    settings = core_settings(recovery={"max_retries": 5})
    h = History()
    h.heartbeat("w2", ts=100)
    crash(h, "w1", 5, ts=1_000, attempt=4)  # opens w1: rule 2 applies below 5
    below = last_command(h, settings)
    h.failure("w1", ts=2_000, failure_type="WORKER_CRASH", attempt=5)
    at = last_command(h, settings)
    assert (below.strategy, below.reason) == ("DIFFERENT_WORKER", "worker circuit w1 is OPEN")
    assert (at.strategy, at.reason) == ("ESCALATION", "attempt 5 reached max_retries 5")


def test_max_retries_changed_at_run_time_applies_from_that_record_on() -> None:
    h = History()
    h.failure("w1", ts=1_000, failure_type="TIMEOUT", attempt=1)
    h.config(2_000, {"recovery": {"max_retries": 1}})
    h.failure("w1", ts=3_000, failure_type="TIMEOUT", attempt=1)
    assert [c.strategy for c in commands(h.run())] == ["DELAYED_RETRY", "ESCALATION"]


def test_a_config_change_keeps_every_circuits_counters() -> None:
    h = History()
    crash(h, "w1", 4, ts=1_000)  # 4 of 5
    h.config(2_000, {"circuits": {"worker": {"failure_threshold": 6}}})
    crash(h, "w1", 1, ts=3_000)  # 5 of 6
    assert moves(h.run()) == []
    opening = h.failure("w1", ts=4_000, failure_type="WORKER_CRASH")
    [opened] = transitions(h.run())
    assert (opened.caused_by, opened.consecutive_failures) == (opening.event_id, 6)


def open_class(h: History, hardware_class: str, ts: int) -> None:
    for i in range(3):  # the class threshold is 3
        h.failure(f"{hardware_class}-{i}", ts=ts, failure_type="HARDWARE_ERROR",
                  hardware_class=hardware_class)  # fmt: skip


def open_task_type(h: History, task_type: str, ts: int) -> None:
    for i in range(10):  # the task type threshold is 10
        h.failure(f"tt-{i}", ts=ts, failure_type="SOFTWARE_ERROR", task_type=task_type,
                  hardware_class="tpu")  # fmt: skip


def test_an_open_worker_circuit_wins_over_an_open_class_circuit() -> None:
    h = History()
    open_class(h, "cuda", ts=1_000)
    crash(h, "w1", 5, ts=2_000)
    command = last_command(h)
    assert (command.strategy, command.reason) == ("DIFFERENT_WORKER", "worker circuit w1 is OPEN")


def test_an_open_class_circuit_wins_over_an_open_task_type_circuit() -> None:
    h = History()
    open_task_type(h, "bert", ts=1_000)
    open_class(h, "cuda", ts=2_000)
    h.failure("w1", ts=3_000, failure_type="TIMEOUT")
    command = last_command(h)
    assert (command.strategy, command.target_hardware_class) == ("DIFFERENT_HARDWARE_CLASS", "cpu")
    assert command.reason == "hardware_class circuit cuda is OPEN"
    assert (command.task_type, command.delay_s) == ("bert", 0.0)


def test_on_cpu_an_open_class_delays_by_its_own_wait_not_the_task_types() -> None:
    h = History()
    open_task_type(h, "bert", ts=1_000)  # due at 301_000
    open_class(h, "cpu", ts=11_000)  # due at 131_000
    h.failure("c9", ts=21_000, failure_type="TIMEOUT", hardware_class="cpu")
    command = last_command(h)
    assert (command.strategy, command.delay_s) == ("DELAYED_RETRY", 110.0)
    assert command.reason == "hardware_class circuit cpu is OPEN"


def test_delay_until_half_open_keeps_a_wait_below_one_second() -> None:
    h = History()
    open_task_type(h, "bert", ts=1_000)  # due at 301_000
    h.failure("w1", ts=300_600, failure_type="TIMEOUT")
    command = last_command(h)
    assert (command.strategy, command.delay_s) == ("DELAYED_RETRY", 0.4)
    assert command.reason == "task_type circuit bert is OPEN"


# Rungs 0-3 of every ladder (docs/circuits.md, "Recovery commands"), through the core on a
# cuda worker with no attributes: the rungs that need one are skipped.
LADDER_TABLE = {
    "RESOURCE_EXHAUSTION": ["FALLBACK_CPU"] * 3,
    "HARDWARE_ERROR": ["DIFFERENT_WORKER", "DELAYED_RETRY", "FALLBACK_CPU"],
    "BROWSER_FAILURE": ["BROWSER_RESTART", "DIFFERENT_WORKER", "FALLBACK_CPU"],
    "TRANSIENT_ERROR": ["IMMEDIATE_RETRY", "DELAYED_RETRY", "DIFFERENT_WORKER"],
    "COMMUNICATION_ERROR": ["IMMEDIATE_RETRY", "DELAYED_RETRY", "DIFFERENT_WORKER"],
    "TIMEOUT": ["IMMEDIATE_RETRY", "DELAYED_RETRY", "DIFFERENT_WORKER"],
    "WORKER_CRASH": ["DIFFERENT_WORKER", "DIFFERENT_WORKER", "ESCALATION"],
    "WORKER_DISCONNECTION": ["DIFFERENT_WORKER", "DIFFERENT_WORKER", "ESCALATION"],
    "PERSISTENT_ERROR": ["ESCALATION"],
    "SOFTWARE_ERROR": ["DELAYED_RETRY", "DIFFERENT_WORKER", "ESCALATION"],
    "COORDINATOR_ERROR": ["DELAYED_RETRY", "DIFFERENT_WORKER", "ESCALATION"],
    "UNKNOWN": ["DELAYED_RETRY", "DIFFERENT_WORKER", "ESCALATION"],
}
PATIENT = core_settings(recovery={"max_retries": 10})


@pytest.mark.parametrize("failure_type", sorted(LADDER_TABLE))
def test_each_ladder_through_the_core_rung_by_rung(failure_type: str) -> None:
    rungs = LADDER_TABLE[failure_type]
    got = []
    for attempt in range(4):
        h = History()
        h.heartbeat("w2", ts=100)
        h.failure("w1", ts=1_000, failure_type=failure_type, attempt=attempt)
        got.append(last_command(h, PATIENT))
    assert [c.strategy for c in got] == [*rungs, *["ESCALATION"] * (4 - len(rungs))]
    for attempt, command in enumerate(got):
        if attempt < len(rungs):
            rung = 2 if failure_type == "RESOURCE_EXHAUSTION" else attempt  # 0, 1 skipped
            assert command.reason == f"{failure_type} ladder rung {rung}"
        else:
            assert command.strategy == "ESCALATION"
            assert command.reason == f"{failure_type} ladder exhausted at attempt {attempt}"
        assert command.target_worker_id == ("w2" if command.strategy == "DIFFERENT_WORKER"
                                            else None)  # fmt: skip
        assert command.target_hardware_class == (
            "cpu" if command.strategy == "FALLBACK_CPU" else None
        )
        assert (command.task_type, command.attempt) == ("bert", attempt + 1)
        if command.strategy == "DELAYED_RETRY":
            assert command.delay_s == retry_delay_s(attempt, command.caused_by)
        else:
            assert command.delay_s == 0.0


def test_fallback_cpu_through_the_core_on_a_cpu_worker_moves_within_cpu() -> None:
    h = History(hardware_class="cpu")
    h.heartbeat("c2", ts=100)
    h.failure("c1", ts=1_000, failure_type="HARDWARE_ERROR", attempt=2)
    command = last_command(h)
    assert (command.strategy, command.target_hardware_class, command.target_worker_id) == (
        "DIFFERENT_WORKER",
        None,
        "c2",
    )
    assert command.reason == "HARDWARE_ERROR ladder rung 2 (already on cpu)"


@pytest.mark.parametrize(("batch", "halved"), [("2", "1"), ("3", "1"), ("64", "32")])
def test_reduced_batch_size_halves_rounding_down_from_two_up(batch: str, halved: str) -> None:
    h = History()
    h.failure("w1", ts=1_000, failure_type="RESOURCE_EXHAUSTION", attributes={"batch_size": batch})
    command = last_command(h)
    assert (command.strategy, command.parameters) == ("REDUCED_BATCH_SIZE", {"batch_size": halved})
    assert command.reason == "RESOURCE_EXHAUSTION ladder rung 0"


@pytest.mark.parametrize(
    ("precision", "lowered"),
    [("fp32", "fp16"), ("fp16", "int8"), ("bf16", "int8"), ("int8", None), ("FP32", None)],
)
def test_reduced_precision_lowers_fp32_to_fp16_and_halves_to_int8(
    precision: str, lowered: str | None
) -> None:
    h = History()
    h.failure("w1", ts=1_000, failure_type="RESOURCE_EXHAUSTION", attempt=1,
              attributes={"precision": precision})  # fmt: skip
    command = last_command(h)
    if lowered is None:  # nothing lower to go to: the next rung
        assert (command.strategy, command.parameters) == ("FALLBACK_CPU", {})
        assert command.reason == "RESOURCE_EXHAUSTION ladder rung 2"
    else:
        assert (command.strategy, command.parameters) == (
            "REDUCED_PRECISION",
            {"precision": lowered},
        )
        assert command.reason == "RESOURCE_EXHAUSTION ladder rung 1"


# --- targets and checkpoints --------------------------------------------------------------


def test_the_target_is_never_a_lost_worker_nor_one_whose_circuit_is_not_closed() -> None:
    h = History()
    h.heartbeat("a-lost", ts=1_000)
    h.heartbeat("b-open", ts=35_000)
    h.operator("FORCE_OPEN", "worker", "b-open", ts=35_000)
    h.heartbeat("c-live", ts=35_000)
    h.failure("w1", ts=35_000, failure_type="WORKER_CRASH")  # a-lost went silent at 31_000
    assert last_command(h).target_worker_id == "c-live"


def test_the_target_is_the_healthiest_closed_worker_then_the_first_by_id() -> None:
    settings = core_settings(circuits={"worker": {"failure_threshold": 10}})
    h = History()
    for worker, failures in (("a", 2), ("b", 1), ("c", 1), ("d", 2)):
        h.heartbeat(worker, ts=100)
        crash(h, worker, failures, ts=200, attempt=3)  # escalated: nothing moves anywhere
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH")
    assert last_command(h, settings).target_worker_id == "b"  # 90: b and c; b by id


def test_workers_at_the_health_floor_tie_and_the_first_by_id_wins() -> None:
    settings = core_settings(circuits={"worker": {"failure_threshold": 10}})
    h = History()
    for worker, failures in (("a", 4), ("b", 3)):  # both at health 70
        h.heartbeat(worker, ts=100)
        crash(h, worker, failures, ts=200, attempt=3)
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH")
    assert last_command(h, settings).target_worker_id == "a"


# --- load-balanced targets ------------------------------------------------------------------


def test_the_target_has_the_fewest_tasks_in_flight_before_health() -> None:
    settings = core_settings(circuits={"worker": {"failure_threshold": 10}})
    h = History()
    h.started("a", ts=100, task_id="a1")  # a: fully healthy, one task running
    h.heartbeat("b", ts=100)
    crash(h, "b", 2, ts=200, attempt=3)  # b: health 80, idle
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH", task_id="t1")
    assert last_command(h, settings).target_worker_id == "b"


def test_moves_pile_on_no_worker_each_counts_until_it_starts() -> None:
    h = History()
    for worker in ("a", "b", "c"):
        h.heartbeat(worker, ts=100)
    for i in range(3):
        h.failure("w1", ts=1_000 + i, failure_type="WORKER_CRASH", task_id=f"t{i}")
    assert [c.target_worker_id for c in commands(h.run())] == ["a", "b", "c"]
    # t0 starts on c, not on a where it was sent: a is free again, c carries it.
    h.started("c", ts=2_000, task_id="t0", attempt=1)
    h.failure("w1", ts=3_000, failure_type="WORKER_CRASH", task_id="t3")
    assert last_command(h).target_worker_id == "a"


def test_with_every_idle_worker_gone_the_search_passes_over_lost_and_open_ones() -> None:
    h = History()
    h.heartbeat("a-lost", ts=1_000)  # idle, silent from 1_000: lost at 31_000
    h.heartbeat("b-open", ts=1_000)
    h.operator("FORCE_OPEN", "worker", "b-open", ts=1_000)  # idle, but open
    for worker in ("c", "d"):
        h.started(worker, ts=1_000, task_id=f"{worker}1")
    for worker in ("b-open", "c", "d"):
        h.heartbeat(worker, ts=20_000)
    h.started("w1", ts=35_000, task_id="w1-a")
    h.started("w1", ts=35_000, task_id="w1-b")
    h.failure("w1", ts=35_000, failure_type="WORKER_CRASH", task_id="w1-a")
    assert last_command(h).target_worker_id == "c"  # one task, as d; c by id


def busy_class(h: History, busy: tuple[str, ...]) -> None:
    """Each of `busy` runs one task; g runs three, and fails them one by one (a move each)."""
    for worker in busy:
        h.started(worker, ts=1_000, task_id=f"{worker}1")
    for n in range(3):
        h.started("g", ts=1_000, task_id=f"g{n}")


def test_every_worker_tied_at_the_fewest_tasks_stays_a_candidate() -> None:
    h = History()
    busy_class(h, ("c", "d", "e"))
    h.failure("g", ts=2_000, failure_type="WORKER_CRASH", task_id="g0")  # -> c (then 2)
    h.failure("g", ts=2_001, failure_type="WORKER_CRASH", task_id="g1")  # d, e at 1: d
    assert [c.target_worker_id for c in commands(h.run())] == ["c", "d"]


def test_the_healthiest_of_the_workers_tied_at_the_fewest_tasks_wins() -> None:
    h = History()
    crash(h, "c", 1, ts=500, attempt=3)  # escalated: c is CLOSED, at health 90
    busy_class(h, ("c", "d", "e"))
    h.failure("g", ts=2_000, failure_type="WORKER_CRASH", task_id="g0")  # -> d (then 2)
    h.failure("g", ts=2_001, failure_type="WORKER_CRASH", task_id="g1")  # c 90, e 100: e
    targets = [c.target_worker_id for c in commands(h.run()) if c.strategy != "ESCALATION"]
    assert targets == ["d", "e"]


def test_a_worker_closed_again_with_fewer_tasks_is_the_next_target() -> None:
    h = History()
    h.heartbeat("b", ts=500)
    h.operator("FORCE_OPEN", "worker", "b", ts=500)  # idle, but open
    busy_class(h, ("c", "d"))
    h.failure("g", ts=2_000, failure_type="WORKER_CRASH", task_id="g0")  # -> c
    h.operator("RESET", "worker", "b", ts=2_500)  # b takes tasks again, with none
    h.failure("g", ts=3_000, failure_type="WORKER_CRASH", task_id="g1")
    assert [c.target_worker_id for c in commands(h.run())] == ["c", "b"]


def test_a_worker_whose_task_ends_joins_those_tied_at_the_fewest() -> None:
    h = History()
    busy_class(h, ("c", "d", "e"))
    h.started("g", ts=1_000, task_id="g3")  # g stays above the fewest as it fails
    h.started("h", ts=1_000, task_id="h1")
    h.started("h", ts=1_000, task_id="h2")
    h.failure("g", ts=2_000, failure_type="WORKER_CRASH", task_id="g0")  # -> c (then 2)
    h.success("h", ts=2_500, task_id="h1")  # h runs one, as d and e
    h.failure("g", ts=3_000, failure_type="WORKER_CRASH", task_id="g1")
    assert [c.target_worker_id for c in commands(h.run())] == ["c", "d"]


def test_a_target_that_received_a_move_and_started_another_task_is_not_at_the_fewest() -> None:
    h = History()
    busy_class(h, ("c", "d", "e"))
    h.failure("g", ts=2_000, failure_type="WORKER_CRASH", task_id="g0")  # -> c
    h.started("c", ts=2_500, task_id="c2")  # c: two running and one on its way
    h.failure("g", ts=3_000, failure_type="WORKER_CRASH", task_id="g1")
    assert [c.target_worker_id for c in commands(h.run())] == ["c", "d"]


def test_a_failed_worker_first_by_id_still_gets_its_task_a_target() -> None:
    h = History()
    for worker in ("a", "a", "b", "c"):  # a runs two tasks, b and c one each
        h.started(worker, ts=1_000, task_id=f"{worker}{len(h.records)}")
    h.failure("a", ts=2_000, failure_type="WORKER_CRASH", task_id="a0")
    assert last_command(h).target_worker_id == "b"


def test_in_a_search_the_health_floor_ties_and_the_first_by_id_wins() -> None:
    settings = core_settings(circuits={"worker": {"failure_threshold": 10}})
    h = History()
    crash(h, "c", 4, ts=100, attempt=3)  # health 70 (4 failures), escalated: no moves
    crash(h, "d", 3, ts=100, attempt=3)  # health 70 (3 failures)
    busy_class(h, ("c", "d"))
    h.failure("g", ts=2_000, failure_type="WORKER_CRASH", task_id="g0")
    assert last_command(h, settings).target_worker_id == "c"


def test_in_a_large_idle_class_the_first_fully_healthy_worker_wins() -> None:
    h = History()
    crash(h, "n00", 1, ts=100, attempt=3)  # idle, health 90
    for n in range(1, 40):
        h.heartbeat(f"n{n:02d}", ts=100)  # idle, health 100
    h.failure("z", ts=2_000, failure_type="WORKER_CRASH", task_id="z0")
    assert last_command(h).target_worker_id == "n01"


def test_a_finished_task_no_longer_counts_on_the_worker_it_was_sent_to() -> None:
    h = History()
    for worker in ("a", "b"):
        h.heartbeat(worker, ts=100)
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH", task_id="t0")  # -> a
    h.success("w1", ts=1_500, task_id="t0", attempt=1)  # finished after all, on w1
    h.failure("w1", ts=2_000, failure_type="WORKER_CRASH", task_id="t1")
    assert [c.target_worker_id for c in commands(h.run())] == ["a", "a"]


def test_a_lost_workers_tasks_spread_over_targets_in_start_order() -> None:
    settings = core_settings(recovery={"heartbeat_timeout_s": 30})
    h = History()
    for worker in ("a", "b"):
        h.heartbeat(worker, ts=1_000)
    for task_id in ("t9", "t1", "t5"):  # start order, not id order
        h.started("w1", ts=1_000, task_id=task_id)
    h.started("w1", ts=1_001, task_id="t9", attempt=0)  # started again: now the newest
    for ts in (20_000, 40_000):  # a and b stay live; w1 is lost at 31 s
        for worker in ("a", "b"):
            h.heartbeat(worker, ts=ts)
    moved = commands(h.run(settings))
    assert [(c.task_id, c.target_worker_id) for c in moved] == [
        ("t1", "a"),
        ("t5", "b"),
        ("t9", "a"),
    ]


def test_a_move_after_a_retry_in_place_still_carries_the_checkpoint() -> None:
    h = History()
    h.checkpoint("w1", ts=1_000, seq=4, task_id="t1")
    h.failure("w1", ts=2_000, failure_type="TIMEOUT", task_id="t1")  # IMMEDIATE_RETRY
    h.failure("w1", ts=3_000, failure_type="WORKER_CRASH", task_id="t1", attempt=1)
    retried, moved = commands(h.run())
    assert (retried.strategy, retried.checkpoint_seq) == ("IMMEDIATE_RETRY", None)
    assert (moved.strategy, moved.checkpoint_seq) == ("DIFFERENT_WORKER", 4)


def test_an_escalated_task_is_given_up_and_its_checkpoint_forgotten() -> None:
    h = History()
    h.checkpoint("w1", ts=1_000, seq=4, task_id="t1")
    h.failure("w1", ts=2_000, failure_type="PERSISTENT_ERROR", task_id="t1")
    h.failure("w1", ts=3_000, failure_type="WORKER_CRASH", task_id="t1")
    escalated, moved = commands(h.run())
    assert escalated.strategy == "ESCALATION"
    assert (moved.strategy, moved.checkpoint_seq) == ("DIFFERENT_WORKER", None)


# --- the shared formulas, pinned apart from the compiled twin -------------------------------
# processors/compiled reuses CircuitParams.backoff_s and the recovery planning, so the
# byte-for-byte comparison with it cannot see a change in them: these fix their values.


@pytest.mark.parametrize(
    ("recovery", "factor", "cap", "waits"),
    [
        (60.0, 2.0, 600.0, [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]),
        (120.0, 1.5, 1800.0, [120.0, 180.0, 270.0, 405.0, 607.5, 911.25]),
        (300.0, 1.2, 400.0, [300.0, 360.0, 400.0, 400.0]),
        (10.0, 1.0, 600.0, [10.0, 10.0, 10.0]),
        (5.0, 3.0, 4.0, [4.0, 4.0]),
    ],
)
def test_backoff_is_the_configured_wait_times_the_factor_per_trip_up_to_the_cap(
    recovery: float, factor: float, cap: float, waits: list[float]
) -> None:
    params = CircuitParams(5, recovery, factor, cap, 3, 3)
    assert [params.backoff_s(trips) for trips in range(1, len(waits) + 1)] == waits


def test_retry_delays_and_jitter_keep_their_values_across_versions() -> None:
    # A replay after an upgrade must give the same bytes: these are today's values.
    assert [jitter(e) for e in ("e1", "e2", "e3")] == [0.013227, 0.063139, -0.099322]
    assert [retry_delay_s(a, "e1") for a in range(7)] == [
        2.026, 4.053, 8.106, 16.212, 32.423, 60.794, 60.794
    ]  # fmt: skip
    assert [retry_delay_s(0, e) for e in ("e2", "e3")] == [2.126, 1.801]


def test_jitter_spreads_over_both_sides_of_the_base_delay() -> None:
    values = [jitter(f"event-{i}") for i in range(400)]
    assert all(-0.2 <= v <= 0.2 for v in values)
    assert min(values) < -0.15 and max(values) > 0.15
    assert 150 < sum(v > 0 for v in values) < 250


def test_derived_ids_keep_their_values_across_versions() -> None:
    # Consumers drop a repeated command_id and the projector a repeated event_id; an
    # upgraded decider re-processing from an offset must give the very same ids.
    assert transition_id("e5", "worker", "w1", "CLOSED", "OPEN", 1_000) == "cst-f422bb0eef4a885d"
    assert command_id("e5") == "cmd-9347a9035864fe08"
    assert migration_command_id("w1", 32_000, "t1") == "mig-d8be8ea6d16aa4cb"


def test_every_part_of_a_derived_id_matters() -> None:
    base = ("e5", "worker", "w1", "CLOSED", "OPEN", 1_000)
    ids = {transition_id(*base)}
    for i, other in enumerate(("e6", "task_type", "w2", "HALF_OPEN", "FORCED_OPEN", 1_001)):
        ids.add(transition_id(*base[:i], other, *base[i + 1 :]))
    assert len(ids) == 7
    migrations = {
        migration_command_id(*parts)
        for parts in (("w1", 1, "t1"), ("w2", 1, "t1"), ("w1", 2, "t1"), ("w1", 1, "t2"))
    }
    assert len(migrations) == 4
    assert command_id("e5") != command_id("e6")


# --- class membership and load, edge by edge ------------------------------------------------


def test_a_busier_worker_between_does_not_hide_an_idle_one_after_it() -> None:
    h = History()
    h.started("a", ts=100, task_id="a1")  # a: 1 in flight
    h.started("b", ts=100, task_id="b1")  # b: 2 in flight
    h.started("b", ts=100, task_id="b2")
    h.heartbeat("c", ts=100)  # c: idle, last by id
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH", task_id="t1")
    assert last_command(h).target_worker_id == "c"


def test_a_worker_that_moves_class_leaves_its_old_classs_capacity() -> None:
    settings = core_settings(
        alerts={"class_capacity_below": 50, "open_longer_than_s": 0, "escalations": False,
                "fleet_health_below": 0, "clock_skew": False}
    )  # fmt: skip
    h = History()
    h.heartbeat("w1", ts=1_000)
    h.heartbeat("w2", ts=1_000)
    h.heartbeat("w1", ts=2_000, hardware_class="rocm")  # cuda: w2 alone
    h.operator("FORCE_OPEN", "worker", "w2", ts=3_000)
    fired = [o for o in h.run(settings) if o.__class__.__name__ == "Alert"]
    assert [(a.subject_id, a.message) for a in fired] == [
        ("cuda", "0 of 1 live cuda workers available, below 50%")
    ]


def test_in_flight_counts_started_tasks_and_moves_not_yet_started() -> None:
    from faultstream.processors.core.workers import in_flight

    h = History()
    h.started("a", ts=100, task_id="a1")  # a and b: one task running each
    h.started("b", ts=100, task_id="b1")
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH", task_id="t1")
    h.failure("w1", ts=1_001, failure_type="WORKER_CRASH", task_id="t2")
    core = FleetCore()
    out = run(h.records, core=core)
    targets = [c.target_worker_id for c in commands(out)]
    assert targets == ["a", "b"]  # a by id at 1 each, then b (1) before a (2)
    assert (in_flight(core._workers["a"]), in_flight(core._workers["b"])) == (2, 2)


# --- adaptive ladders: which measured rung wins (recovery.py adaptive_plan) ------------------

OOM_ATTRIBUTES = {"batch_size": "8", "precision": "fp32"}
RUNGS = ("REDUCED_BATCH_SIZE", "REDUCED_PRECISION", "FALLBACK_CPU")


def adaptive_choice(*measured: tuple[int, int]):
    """The plan of a first RESOURCE_EXHAUSTION on cuda (rungs: smaller batch, lower precision,
    cpu) given (successes, trials) measured for its first rungs (none for the others), with
    adaptive_min_samples 2."""
    from faultstream.processors.core.circuit import Circuit
    from faultstream.processors.core.recovery import plan_failure

    params = CircuitParams(5, 30.0, 2.0, 300.0, 3, 3)
    learned = {
        ("RESOURCE_EXHAUSTION", "cuda", strategy): [trials, successes]
        for strategy, (successes, trials) in zip(
            RUNGS, (*measured, (0, 0), (0, 0))[:3], strict=True
        )
    }
    return plan_failure(
        failure_type=FailureType.RESOURCE_EXHAUSTION, attempt=0, max_retries=3, event_id="e1",
        hardware_class="cuda", attributes=OOM_ATTRIBUTES, worker=Circuit(0, "g1", params),
        hardware=Circuit(1, "cuda", params), task_type=Circuit(2, "train", params), now=0,
        learned=learned, min_samples=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("measured", "chosen"),
    [
        # best (s + 1) / (t + 2) among the rungs with at least 2 trials
        (((0, 4), (0, 2)), "REDUCED_PRECISION"),  # 1/6 < 1/4: the static rung is worse
        (((1, 2), (0, 2), (0, 2)), "REDUCED_BATCH_SIZE"),  # 2/4 beats 1/4 and 1/4
        (((2, 2), (0, 2), (3, 3)), "FALLBACK_CPU"),  # 4/5 beats 3/4: found after a worse one
        (((1, 2), (1, 3)), "REDUCED_BATCH_SIZE"),  # 2/4 beats 2/5
        (((0, 2), (1, 5)), "REDUCED_PRECISION"),  # 2/7 beats 1/4, by a little
        (((1, 2), (0, 3)), "REDUCED_BATCH_SIZE"),  # 2/4 beats 1/5
        (((0, 2), (1, 2)), "REDUCED_PRECISION"),  # 2/4 beats 1/4
        (((0, 2), (0, 2)), "REDUCED_BATCH_SIZE"),  # a tie: ladder order
        (((0, 2), (1, 1), (2, 2)), "FALLBACK_CPU"),  # a rung under the minimum is skipped
    ],
)
def test_the_adaptive_rung_is_the_best_estimate_ties_to_ladder_order(measured, chosen) -> None:
    plan = adaptive_choice(*measured)
    assert plan.strategy == chosen
    assert plan.reason.endswith(
        f"-> {chosen}; RESOURCE_EXHAUSTION ladder rung {RUNGS.index(chosen)}"
    )


def test_an_adaptive_choice_keeps_its_rungs_parameters_and_target() -> None:
    precision = adaptive_choice((0, 2), (2, 2))
    assert (precision.parameters, precision.target_hardware_class) == ({"precision": "fp16"}, None)
    cpu = adaptive_choice((0, 2), (0, 2), (2, 2))
    assert (cpu.parameters, cpu.target_hardware_class) == ({}, "cpu")


def test_the_static_ladder_names_its_exhaustion_and_the_failures_own_delay() -> None:
    from faultstream.processors.core.recovery import Plan, ladder_plan

    assert ladder_plan(FailureType.PERSISTENT_ERROR, 1, "e1", "cuda", {}) == Plan(
        "ESCALATION", "PERSISTENT_ERROR ladder exhausted at attempt 1"
    )
    plan = ladder_plan(FailureType.TIMEOUT, 1, "e7", "cuda", {})
    assert (plan.strategy, plan.delay_s) == ("DELAYED_RETRY", retry_delay_s(1, "e7"))
    assert plan.delay_s != retry_delay_s(1, "None")


def test_a_moved_task_that_starts_counts_once_on_its_target() -> None:
    h = History()
    h.started("a", ts=100, task_id="a1")  # a and b: one task running each
    h.started("b", ts=100, task_id="b1")
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH", task_id="t0")  # -> a (by id)
    h.started("a", ts=2_000, task_id="t0", attempt=1)  # arrived: a runs 2, b 1
    h.failure("w1", ts=3_000, failure_type="WORKER_CRASH", task_id="t1")
    assert [c.target_worker_id for c in commands(h.run())] == ["a", "b"]


def test_a_moved_task_that_starts_leaves_its_targets_moves() -> None:
    h = History()
    h.started("a", ts=100, task_id="a1")  # a runs one task, b two
    h.started("b", ts=100, task_id="b1")
    h.started("b", ts=100, task_id="b2")
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH", task_id="t0")  # -> a
    h.started("a", ts=2_000, task_id="t0", attempt=1)  # a runs two now, as b: a by id
    h.failure("w1", ts=3_000, failure_type="WORKER_CRASH", task_id="t1")
    assert [c.target_worker_id for c in commands(h.run())] == ["a", "a"]


def test_a_task_moved_again_before_it_starts_leaves_its_first_target() -> None:
    h = History()
    h.started("p", ts=100, task_id="r1")  # p busy, q idle
    h.heartbeat("q", ts=100)
    h.started("b", ts=100, task_id="t0")  # t0 runs on b ...
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH", task_id="t0")  # ... and moves: q
    h.success("p", ts=2_000, task_id="r1")  # p idle again
    for worker in ("p", "q", "w1"):
        h.heartbeat(worker, ts=20_000)
    h.tick(31_000)  # b lost: t0 migrates off it, to p; q no longer expects it
    h.failure("w1", ts=32_000, failure_type="WORKER_CRASH", task_id="t9")
    assert [c.target_worker_id for c in commands(h.run())] == ["q", "p", "q"]
