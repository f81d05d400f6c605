"""Capacity per hardware class (processors/core/view.py `capacity_view`), the headline of
the dashboard: a worker is available when it is live, its own circuit is CLOSED and its
hardware class's circuit is neither OPEN nor FORCED_OPEN. Each scenario is driven through
a real FleetCore, so the states are the ones the core's rules reach."""

from __future__ import annotations

from histories import History, run

from faultstream.processors.core import FleetCore

# Defaults: a worker circuit opens after 5 failures in a row, a hardware class after 3;
# a worker is lost after 30 s of silence; the fleet guard needs 4 live workers in a class.


def core_after(h: History) -> FleetCore:
    core = FleetCore()
    run(h.records, core=core)
    return core


def test_every_worker_closed_and_live_is_available() -> None:
    h = History()
    for worker in ("c1", "c2", "c3"):
        h.heartbeat(worker, ts=1_000)
    assert core_after(h).capacity_view() == {
        "cuda": {"state": "CLOSED", "workers": 3, "live": 3, "available": 3},
    }


def test_an_open_worker_circuit_takes_its_worker_out_but_not_its_class() -> None:
    h = History()
    for worker in ("c1", "c2", "c3"):  # three: below guard_min_workers, no guard
        h.heartbeat(worker, ts=1_000)
    for i in range(5):
        h.failure("c1", ts=2_000 + i, failure_type="WORKER_CRASH")
    core = core_after(h)
    assert core.circuits_view()["workers"]["c1"]["state"] == "OPEN"
    assert core.capacity_view()["cuda"] == {
        "state": "CLOSED", "workers": 3, "live": 3, "available": 2,
    }  # fmt: skip
    assert core.workers_view()["c1"]["available"] is False
    assert core.workers_view()["c2"]["available"] is True


def test_an_open_class_circuit_takes_every_worker_of_the_class_out() -> None:
    h = History(hardware_class="rocm")
    for worker in ("r1", "r2"):
        h.heartbeat(worker, ts=1_000)
    for i in range(3):
        h.failure("r1", ts=2_000 + i, failure_type="HARDWARE_ERROR")
    h.heartbeat("c1", ts=3_000, hardware_class="cuda")
    capacity = core_after(h).capacity_view()
    # The worker circuits are still CLOSED and both workers live: the class alone counts.
    assert capacity == {
        "cuda": {"state": "CLOSED", "workers": 1, "live": 1, "available": 1},
        "rocm": {"state": "OPEN", "workers": 2, "live": 2, "available": 0},
    }


def test_a_half_open_class_lets_its_workers_take_probes() -> None:
    h = History(hardware_class="rocm")
    h.heartbeat("r1", ts=1_000)
    for i in range(3):
        h.failure("r1", ts=2_000 + i, failure_type="HARDWARE_ERROR")
    h.heartbeat("r1", ts=2_002 + 120_000)  # the class's recovery_timeout_s is 120
    core = core_after(h)
    assert core.capacity_view()["rocm"] == {
        "state": "HALF_OPEN", "workers": 1, "live": 1, "available": 1,
    }  # fmt: skip


def test_a_half_open_worker_circuit_is_not_available() -> None:
    h = History()
    for i in range(5):
        h.failure("c1", ts=1_000 + i, failure_type="WORKER_CRASH")
    h.heartbeat("c1", ts=1_004 + 60_000)  # the worker's recovery_timeout_s is 60
    core = core_after(h)
    assert core.workers_view()["c1"]["state"] == "HALF_OPEN"
    assert core.capacity_view()["cuda"]["available"] == 0
    assert core.capacity_view()["cuda"]["live"] == 1


def test_a_lost_worker_is_neither_live_nor_available() -> None:
    h = History()
    h.heartbeat("c1", ts=1_000)
    h.heartbeat("c2", ts=1_000)
    h.heartbeat("c2", ts=40_000)  # c1 silent for 39 s: lost (heartbeat_timeout_s 30)
    core = core_after(h)
    assert core.capacity_view()["cuda"] == {
        "state": "CLOSED", "workers": 2, "live": 1, "available": 1,
    }  # fmt: skip
    assert core.workers_view()["c1"]["status"] == "lost"
    # Heard from again: live and available once more.
    h.heartbeat("c1", ts=41_000)
    assert core_after(h).capacity_view()["cuda"]["available"] == 2


def test_a_forced_open_class_without_workers_is_listed_with_none() -> None:
    h = History()
    h.heartbeat("c1", ts=1_000)
    h.operator("FORCE_OPEN", "hardware_class", "tpu", ts=2_000)
    h.operator("FORCE_OPEN", "hardware_class", "cuda", ts=2_000)
    assert core_after(h).capacity_view() == {
        "cuda": {"state": "FORCED_OPEN", "workers": 1, "live": 1, "available": 0},
        "tpu": {"state": "FORCED_OPEN", "workers": 0, "live": 0, "available": 0},
    }


def test_a_worker_counts_in_the_class_it_reported_last() -> None:
    h = History()
    h.heartbeat("m1", ts=1_000, hardware_class="cuda")
    h.heartbeat("m1", ts=2_000, hardware_class="rocm")
    capacity = core_after(h).capacity_view()
    assert capacity["cuda"]["workers"] == 0
    assert capacity["rocm"] == {"state": "CLOSED", "workers": 1, "live": 1, "available": 1}


def test_the_workers_view_gives_each_workers_figures_on_the_brokers_clock() -> None:
    h = History()
    h.heartbeat("slow", ts=1_000_000, received_at=605_000)  # its clock 395 s fast
    h.heartbeat("c2", ts=615_000)
    assert core_after(h).workers_view() == {
        "c2": {"hardware_class": "cuda", "status": "live", "last_seen": 615_000,
               "silent_s": 0.0, "state": "CLOSED", "health_percentage": 100.0,
               "available": True},
        "slow": {"hardware_class": "cuda", "status": "live", "last_seen": 605_000,
                 "silent_s": 10.0, "state": "CLOSED", "health_percentage": 100.0,
                 "available": True},
    }  # fmt: skip
