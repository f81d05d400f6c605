"""Lost workers (heartbeat timeout) and the fleet guard (CIRCUITS.md)."""

from __future__ import annotations

from histories import History, commands, figures, moves, run, transitions, without_alerts

from faultstream.processors.core import FleetCore
from faultstream.processors.core.ids import migration_command_id


def test_silent_worker_task_migrated_with_checkpoint() -> None:
    h = History()
    h.started("w1", ts=1_000, task_id="t1", attempt=1)
    h.checkpoint("w1", ts=2_000, seq=7, task_id="t1")  # w1's newest event: due 32_000
    h.heartbeat("w2", ts=31_000)
    tick = h.tick(32_001)
    [command] = commands(h.run())
    assert (command.strategy, command.task_id, command.task_type) == (
        "DIFFERENT_WORKER",
        "t1",
        "bert",
    )
    assert (command.attempt, command.checkpoint_seq, command.target_worker_id) == (2, 7, "w2")
    assert (command.ts, command.caused_by, command.worker_id) == (32_000, tick.event_id, "w1")
    assert command.command_id == migration_command_id("w1", 32_000, "t1")


def test_worker_is_lost_only_when_more_than_timeout_silent() -> None:
    h = History()
    h.started("w1", ts=1_000)
    h.tick(31_000)  # exactly 30 s: not yet
    assert commands(h.run()) == []
    h.tick(31_001)
    assert len(commands(h.run())) == 1


def test_lost_worker_task_migrated_once_per_silence() -> None:
    h = History()
    h.started("w1", ts=1_000, task_id="t1")
    h.started("w1", ts=1_000, task_id="t2")
    h.tick(40_000)
    h.tick(90_000)
    assert [c.task_id for c in commands(h.run())] == ["t1", "t2"]


def test_finished_tasks_are_not_migrated() -> None:
    h = History()
    h.started("w1", ts=1_000, task_id="t1")
    h.success("w1", ts=2_000, task_id="t1")
    h.started("w1", ts=3_000, task_id="t2")
    h.failure("w1", ts=4_000, task_id="t2", failure_type="TIMEOUT")
    h.tick(60_000)
    assert [c.caused_by for c in commands(h.run())] == ["e4"]  # only the failure's own


def test_lost_worker_task_at_max_retries_escalates() -> None:
    h = History()
    h.started("w1", ts=1_000, attempt=3)
    h.tick(40_000)
    [command] = commands(h.run())
    assert (command.strategy, command.attempt) == ("ESCALATION", 4)


def test_lost_worker_counts_one_disconnection_on_its_worker_circuit() -> None:
    h = History()
    h.heartbeat("w1", ts=1_000)
    first = h.tick(40_000)
    h.tick(80_000)
    core = FleetCore()
    outputs = without_alerts(run(h.records, core=core))  # (cuda has no live worker left)
    assert transitions(outputs) == [] and commands(outputs) == []
    # Only the first TICK publishes figures (the worker lost, its class), the second none.
    assert [(f.circuit_id, f.caused_by, f.total_failures, f.live) for f in outputs] == [
        ("w1", first.event_id, 1, False),
        ("cuda", first.event_id, 0, None),
    ]
    assert figures(outputs) == outputs
    assert core.circuits_view()["workers"]["w1"]["total_failures"] == 1


def test_any_event_revives_a_lost_worker_and_it_can_be_lost_again() -> None:
    h = History()
    h.started("w1", ts=1_000, task_id="t1")
    h.tick(40_000)
    h.started("w1", ts=41_000, task_id="t2")  # alive again
    h.tick(71_000)  # exactly 30 s since: still alive
    h.tick(71_001)
    assert [(c.task_id, c.ts) for c in commands(h.run())] == [("t1", 31_000), ("t2", 71_000)]


def test_heartbeats_keep_a_worker_alive() -> None:
    h = History()
    h.started("w1", ts=1_000)
    for ts in range(20_000, 200_000, 20_000):
        h.heartbeat("w1", ts=ts)
    assert commands(h.run()) == []


def test_circuit_and_lost_worker_due_together_apply_circuit_first() -> None:
    h = History()
    for _ in range(5):
        h.failure("w1", ts=1_000, failure_type="WORKER_CRASH")  # opens; 60 s
    h.config(1_000, {"recovery": {"heartbeat_timeout_s": 60}})  # lost due also 61_000
    h.tick(61_001)
    assert moves(h.run())[1:] == [
        ("worker", "w1", "OPEN", "HALF_OPEN"),
        ("worker", "w1", "HALF_OPEN", "OPEN"),  # the disconnection fails the probe
    ]


def test_shorter_heartbeat_timeout_applies_to_running_timers() -> None:
    h = History()
    h.started("w1", ts=1_000)
    h.config(2_000, {"recovery": {"heartbeat_timeout_s": 5}})
    h.tick(6_001)
    assert [c.ts for c in commands(h.run())] == [6_000]


def cuda_fleet(h: History, size: int) -> None:
    for i in range(1, size + 1):
        h.heartbeat(f"w{i}", ts=100)


def crash(h: History, worker: str, times: int, ts: int) -> None:
    for _ in range(times):
        h.failure(worker, ts=ts, failure_type="WORKER_CRASH")


def test_fleet_guard_counts_failure_on_hardware_class() -> None:
    h = History()
    cuda_fleet(h, 4)
    crash(h, "w1", 5, ts=1_000)  # 1 of 4 open
    crash(h, "w2", 5, ts=1_000)  # 2 of 4 open: exactly half is still allowed
    crash(h, "w3", 5, ts=1_000)  # 3 of 4 would be more than half: guarded
    core = FleetCore()
    outputs = run(h.records, core=core)
    assert [m[:2] for m in moves(outputs)] == [("worker", "w1"), ("worker", "w2")]
    view = core.circuits_view()
    assert view["workers"]["w3"]["state"] == "CLOSED"
    assert view["workers"]["w3"]["total_failures"] == 4  # the guarded one not counted here
    assert view["hardware_classes"]["cuda"]["total_failures"] == 1
    assert "fleet_guard" in commands(outputs)[-1].reason


def test_guarded_failures_can_open_the_hardware_class_circuit() -> None:
    h = History()
    cuda_fleet(h, 4)
    crash(h, "w1", 5, ts=1_000)
    crash(h, "w2", 5, ts=1_000)
    crash(h, "w3", 7, ts=1_000)  # 3 guarded failures: the class opens (threshold 3)
    opened = transitions(h.run())[-1]
    assert (opened.circuit_kind, opened.circuit_id, opened.to_state) == (
        "hardware_class",
        "cuda",
        "OPEN",
    )
    assert opened.reason.startswith("fleet_guard")


def test_fleet_guard_ignores_classes_smaller_than_guard_min_workers() -> None:
    h = History()
    cuda_fleet(h, 3)
    for worker in ("w1", "w2", "w3"):
        crash(h, worker, 5, ts=1_000)
    assert [m[1] for m in moves(h.run())] == ["w1", "w2", "w3"]


def test_fleet_guard_holds_a_half_open_circuit_too() -> None:
    h = History()
    cuda_fleet(h, 4)
    crash(h, "w1", 5, ts=1_000)
    crash(h, "w2", 5, ts=1_000)
    crash(h, "w3", 4, ts=1_000)
    for w in ("w1", "w2", "w3", "w4"):
        h.heartbeat(w, ts=60_000)
    h.tick(61_000)  # w1, w2 half-open
    crash(h, "w3", 1, ts=61_000)  # w3 opens: 1 of 4 open
    crash(h, "w1", 1, ts=61_000)  # w1 re-opens: 2 of 4
    crash(h, "w2", 1, ts=61_000)  # would be 3 of 4: guarded, stays HALF_OPEN
    core = FleetCore()
    run(h.records, core=core)
    assert core.circuits_view()["workers"]["w2"]["state"] == "HALF_OPEN"


def test_fleet_guard_counts_only_live_workers() -> None:
    h = History()
    cuda_fleet(h, 4)
    h.heartbeat("w5", ts=100)
    for w in ("w1", "w2", "w3", "w4"):
        h.heartbeat(w, ts=20_000)
    h.tick(40_000)  # w5 is lost: 4 live workers remain
    crash(h, "w1", 5, ts=40_000)
    crash(h, "w2", 5, ts=40_000)
    crash(h, "w3", 5, ts=40_000)  # 3 of 4 live would be open (3 of 5 known would not)
    assert [m[1] for m in moves(h.run())] == ["w1", "w2"]


def test_a_worker_silent_exactly_the_timeout_holds_back_nothing_else_due() -> None:
    h = History()
    for i in range(5):
        h.failure("x", ts=21_000, failure_type="WORKER_CRASH", task_id=f"x{i}")  # x opens
    h.heartbeat("x", ts=50_000)
    h.started("w1", ts=51_000)  # silent for exactly 30 s at 81_000: not lost yet
    h.heartbeat("x", ts=75_000)
    h.tick(81_000)  # x half-opens at 81_000 too; w1's timer sorts first ("w1" < "x")
    revealed = [(t.circuit_id, t.to_state, t.ts) for t in transitions(h.run())]
    assert revealed == [("x", "OPEN", 21_000), ("x", "HALF_OPEN", 81_000)]
