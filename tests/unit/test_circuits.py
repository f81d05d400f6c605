"""Circuit states, backoff, due moments and operator actions (CIRCUITS.md, "Circuits")."""

from __future__ import annotations

import pickle

import pytest
from histories import History, core_settings, moves, run, transitions

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.health import circuit_health, fleet_aggregate
from faultstream.events.models import WorkerEvent
from faultstream.processors.core import FleetCore


def crashes(h: History, worker: str, count: int, start: int, step: int = 1_000) -> int:
    for i in range(count):
        h.failure(worker, ts=start + i * step, failure_type="WORKER_CRASH")
    return start + (count - 1) * step


def test_fifth_worker_crash_opens_worker_circuit() -> None:
    h = History()
    crashes(h, "w1", 4, start=1_000)
    assert transitions(h.run()) == []
    crashes(h, "w1", 1, start=5_000)
    [opened] = transitions(h.run())
    assert (opened.circuit_kind, opened.circuit_id) == ("worker", "w1")
    assert (opened.from_state, opened.to_state) == ("CLOSED", "OPEN")
    assert (opened.ts, opened.consecutive_failures, opened.trips) == (5_000, 5, 1)
    assert opened.health == 18.0 and opened.caused_by == "e5"


def test_success_resets_consecutive_failures() -> None:
    h = History()
    crashes(h, "w1", 4, start=1_000)
    h.success("w1", ts=5_000)
    crashes(h, "w1", 4, start=6_000)
    assert transitions(h.run()) == []


def test_first_open_waits_configured_timeout_not_doubled() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)  # opens at 5_000 with 60 s
    h.heartbeat("w1", ts=30_000)
    h.tick(64_999)
    assert moves(h.run()) == [("worker", "w1", "CLOSED", "OPEN")]
    h.tick(65_000)
    half_open = transitions(h.run())[-1]
    assert half_open.to_state == "HALF_OPEN" and half_open.reset_timeout_s == 60.0
    assert half_open.ts == 65_000 and half_open.caused_by == h.records[-1].event_id


def test_half_open_failure_reopens_with_longer_timeout() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)
    h.tick(65_000)
    h.failure("w1", ts=65_500, failure_type="WORKER_CRASH")
    reopened = transitions(h.run())[-1]
    assert (reopened.from_state, reopened.to_state) == ("HALF_OPEN", "OPEN")
    assert (reopened.trips, reopened.reset_timeout_s) == (2, 120.0)


def test_backoff_grows_by_factor_and_stops_at_max_reset_timeout() -> None:
    h = History()
    ts = crashes(h, "w1", 5, start=1_000)
    timeouts = [60.0]
    for _ in range(5):
        ts += int(timeouts[-1] * 1000)
        h.heartbeat("w1", ts=ts - 1)  # keeps it from being lost
        h.failure("w1", ts=ts, failure_type="WORKER_CRASH")  # half-opens, then fails
        timeouts.append(transitions(h.run())[-1].reset_timeout_s)
    assert timeouts == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]


def test_due_half_open_applies_before_the_revealing_outcome() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)
    h.heartbeat("w1", ts=40_000)
    revealing = h.success("w1", ts=70_000)
    outputs = h.run()
    half_open = transitions(outputs)[-1]
    assert (half_open.to_state, half_open.ts, half_open.caused_by) == (
        "HALF_OPEN",
        65_000,
        revealing.event_id,
    )
    core = FleetCore()
    run(h.records, core=core)
    assert core.circuits_view()["workers"]["w1"]["health_percentage"] == 50.0  # 1 success


def test_half_open_closes_after_success_threshold_and_resets_counters() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)
    h.heartbeat("w1", ts=40_000)
    for ts in (66_000, 67_000, 68_000):
        h.success("w1", ts=ts)
    closed = transitions(h.run())[-1]
    assert (closed.from_state, closed.to_state, closed.caused_by) == ("HALF_OPEN", "CLOSED", "e9")
    assert (closed.consecutive_failures, closed.trips, closed.reset_timeout_s) == (0, 0, 60.0)
    assert closed.health == 100.0


def test_outcomes_while_open_count_only_in_totals() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)
    h.success("w1", ts=6_000)
    h.failure("w1", ts=7_000, failure_type="WORKER_CRASH")
    core = FleetCore()
    outputs = run(h.records, core=core)
    assert moves(outputs) == [("worker", "w1", "CLOSED", "OPEN")]
    view = core.circuits_view()["workers"]["w1"]
    assert (view["state"], view["total_successes"], view["total_failures"]) == ("OPEN", 1, 6)


def test_hardware_errors_open_the_hardware_class_circuit() -> None:
    h = History()
    for i, worker in enumerate(["w1", "w2", "w3"]):
        h.failure(worker, ts=1_000 + i, failure_type="HARDWARE_ERROR")
    assert moves(h.run()) == [("hardware_class", "cuda", "CLOSED", "OPEN")]


def test_tenth_software_error_opens_the_task_type_circuit() -> None:
    h = History()
    for i in range(10):
        h.failure(f"w{i}", ts=1_000 + i, failure_type=None, message="KeyError: 'x'")
    assert moves(h.run()) == [("task_type", "bert", "CLOSED", "OPEN")]


def test_failure_without_type_is_classified_from_its_message() -> None:
    h = History()
    for i in range(3):
        h.failure(f"w{i}", ts=1_000 + i, failure_type=None, message="CUDA Out Of Memory")
    assert moves(h.run()) == [("hardware_class", "cuda", "CLOSED", "OPEN")]
    assert "RESOURCE_EXHAUSTION" in transitions(h.run())[0].reason


def test_attribution_mapping_is_configurable() -> None:
    settings = core_settings(
        circuits={"attribution": {"worker": ["TIMEOUT"], "hardware_class": []}}
    )
    h = History()
    for i in range(5):
        h.failure("w1", ts=1_000 + i, failure_type="TIMEOUT")
    assert moves(h.run(settings)) == [("worker", "w1", "CLOSED", "OPEN")]


def test_forced_open_never_half_opens_by_itself() -> None:
    h = History()
    h.operator("FORCE_OPEN", "hardware_class", "cuda", ts=1_000)  # before any event names it
    h.tick(10_000_000)
    assert moves(h.run()) == [("hardware_class", "cuda", "CLOSED", "FORCED_OPEN")]


def test_reset_closes_an_open_circuit_with_counters_at_zero() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)
    h.operator("RESET", "worker", "w1", ts=6_000)
    h.tick(200_000)  # the stale half-open moment must not fire
    closed = transitions(h.run())[-1]
    assert (closed.from_state, closed.to_state, closed.trips) == ("OPEN", "CLOSED", 0)
    assert "RESET by alice" in closed.reason
    assert len(transitions(h.run())) == 2


def test_reset_of_closed_circuit_zeroes_counters_and_emits_nothing() -> None:
    h = History()
    crashes(h, "w1", 4, start=1_000)
    h.operator("RESET", "worker", "w1", ts=5_000)
    crashes(h, "w1", 4, start=6_000)
    assert transitions(h.run()) == []


def test_due_moments_apply_in_order_ties_by_id_then_kind() -> None:
    one = {"failure_threshold": 1, "recovery_timeout_s": 60, "success_threshold": 1}
    settings = core_settings(
        circuits={"worker": one, "hardware_class": one, "task_type": one},
        recovery={"heartbeat_timeout_s": 1000},
    )
    h = History()
    h.failure("b", ts=1_000, failure_type="WORKER_CRASH", hardware_class="z")
    h.failure("c", ts=1_000, failure_type="HARDWARE_ERROR", hardware_class="a", task_type="y")
    h.failure("d", ts=1_000, failure_type="SOFTWARE_ERROR", hardware_class="x", task_type="a")
    h.failure("a", ts=1_000, failure_type="WORKER_CRASH", hardware_class="w")
    h.tick(61_000)
    half_opened = [m[:2] for m in moves(h.run(settings)) if m[3] == "HALF_OPEN"]
    assert half_opened == [
        ("worker", "a"),
        ("hardware_class", "a"),
        ("task_type", "a"),
        ("worker", "b"),
    ]


def test_due_transition_ts_is_its_due_moment_rounded_up() -> None:
    settings = core_settings(circuits={"worker": {"recovery_timeout_s": 0.0015}})
    h = History()
    crashes(h, "w1", 5, start=1_000)  # opens at 5_000, due at 5_001.5
    h.tick(5_001)
    assert [m[3] for m in moves(h.run(settings))] == ["OPEN"]
    h.tick(5_003)
    assert transitions(h.run(settings))[-1].ts == 5_002


def test_repeated_event_id_changes_nothing() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)
    core = FleetCore()
    run(h.records, core=core)
    before = core.snapshot()
    late_repeat = h.records[0].model_copy(update={"ts": 999_000})
    assert core.process(late_repeat) == []
    assert core.now == 5_000 and core.snapshot() == before


def test_config_change_applies_to_next_opening_not_to_an_open_circuit() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)  # open with 60 s
    h.config(6_000, {"circuits": {"worker": {"recovery_timeout_s": 10, "failure_threshold": 2}}})
    h.heartbeat("w1", ts=30_000)
    h.tick(64_999)
    assert [m[3] for m in moves(h.run())] == ["OPEN"]
    h.success("w2", ts=65_000)
    h.failure("w2", ts=65_001, failure_type="WORKER_CRASH")
    h.failure("w2", ts=65_002, failure_type="WORKER_CRASH")
    last = transitions(h.run())[-1]
    assert (last.circuit_id, last.to_state, last.reset_timeout_s) == ("w2", "OPEN", 10.0)


def test_invalid_config_change_in_history_is_ignored() -> None:
    core = FleetCore()
    h = History()
    h.config(1_000, {"circuits": {"worker": {"half_open_max_calls": 1}}})
    assert run(h.records, core=core) == []
    assert core.settings == CoreSettings()


def test_half_open_max_calls_below_success_threshold_is_refused() -> None:
    with pytest.raises(ConfigError, match="half_open_max_calls"):
        core_settings(circuits={"hardware_class": {"half_open_max_calls": 1}})


@pytest.mark.parametrize(
    "setting", ["failure_threshold", "recovery_timeout_s", "reset_timeout_factor"]
)
def test_non_positive_circuit_setting_is_refused(setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        core_settings(circuits={"worker": {setting: 0}})


def test_transition_ids_are_deterministic_and_distinct() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)
    h.tick(65_000)
    first, second = transitions(h.run()), transitions(h.run())
    assert [t.event_id for t in first] == [t.event_id for t in second]
    assert len({t.event_id for t in first}) == 2


def test_snapshot_restore_continues_identically() -> None:
    h = History()
    crashes(h, "w1", 5, start=1_000)
    h.started("w2", ts=6_000)
    later = History()
    later._next = 100
    later.tick(70_000)
    later.failure("w1", ts=71_000, failure_type="WORKER_CRASH")
    core = FleetCore()
    run(h.records, core=core)
    restored = FleetCore.restore(core.snapshot())
    assert run(later.records, core=restored) == run(later.records, core=core)


def test_restored_core_still_ignores_repeats_of_ids_seen_before_the_snapshot() -> None:
    h = History()
    h.heartbeat("w1", ts=500)
    h.failure("w2", ts=1_100, failure_type="TIMEOUT")
    # Ids of several lengths and scripts: they are stored joined, and split on restore.
    first = WorkerEvent(event_id="naïve-✓-\U0001d523", kind="FAILURE", ts=1_000, worker_id="w1",
                        hardware_class="cuda", task_id="t", task_type="bert",
                        failure_type="WORKER_CRASH")  # fmt: skip
    core = FleetCore()
    run([*h.records, first], core=core)
    restored = FleetCore.restore(core.snapshot())
    assert restored.process(first) == []  # a redelivery after a restart changes nothing
    worker = restored._workers["w1"]
    assert list(worker.seen_order) == list(core._workers["w1"].seen_order)
    assert worker.seen == core._workers["w1"].seen and len(worker.seen) == 2


def test_snapshot_of_another_version_is_refused() -> None:
    data = pickle.dumps((1, {}), protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match="snapshot: version 1, expected 6"):
        FleetCore.restore(data)
    with pytest.raises(ValueError, match="snapshot: unreadable by this version"):
        FleetCore.restore(b"\x80\x05not a pickle")


def test_health_formulas_of_each_state() -> None:
    assert circuit_health("CLOSED", 0) == 100.0
    assert circuit_health("CLOSED", 2) == 80.0
    assert circuit_health("CLOSED", 9) == 70.0
    assert circuit_health("HALF_OPEN", half_open_successes=1) == 50.0
    assert circuit_health("HALF_OPEN", half_open_successes=5) == 60.0
    assert circuit_health("OPEN", total_trips=3) == 14.0
    assert circuit_health("OPEN", total_trips=30) == 0.0
    assert circuit_health("FORCED_OPEN") == 0.0


def test_fleet_aggregate_counts_forced_open_as_open() -> None:
    figures = fleet_aggregate(
        [("CLOSED", 100.0), ("OPEN", 18.0), ("FORCED_OPEN", 0.0), ("HALF_OPEN", 40.0)]
    )
    assert (figures["open_circuits"], figures["half_open_circuits"]) == (2, 1)
    assert figures["overall_health"] == 100 - (2 + 0.4) / 4 * 100
    assert figures["average_health"] == 39.5
