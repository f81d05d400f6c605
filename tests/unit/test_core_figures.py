"""The core publishes what it counts: at each TICK, one `circuit_figures` record per circuit
whose figures changed since the last TICK (issue #13; docs/architecture.md, "One truth").
One test per marking rule; test_core_properties.py checks that at
every TICK of random histories the published figures are the core's views."""

from __future__ import annotations

from hashlib import blake2b

from histories import History, figures, run

from faultstream.events.models import CircuitFigures, Operator, WorkerEvent
from faultstream.processors.core import FleetCore
from faultstream.processors.core.ids import figures_id


def published(outputs: list) -> list[tuple[str, str]]:
    """(kind, id) of each circuit_figures among `outputs`, in their order."""
    return [(f.circuit_kind.value, f.circuit_id) for f in figures(outputs)]


def by_id(outputs: list) -> dict[str, CircuitFigures]:
    return {f.circuit_id: f for f in figures(outputs)}


THREE = [("worker", "w1"), ("hardware_class", "cuda"), ("task_type", "bert")]


def test_a_tick_after_an_outcome_publishes_the_three_circuits_it_counted_on() -> None:
    h = History()
    h.success("w1", ts=1_000)
    tick = h.tick(2_000)
    core = FleetCore()
    outputs = run(h.records, core=core)
    assert published(outputs) == THREE
    w1, cuda, bert = figures(outputs)
    assert (w1.event_id, w1.ts, w1.caused_by) == (
        figures_id(tick.event_id, "worker", "w1"),
        2_000,
        tick.event_id,
    )
    assert (w1.state, w1.total_successes, w1.total_failures, w1.health) == ("CLOSED", 1, 0, 100.0)
    assert (w1.hardware_class, w1.live, w1.available) == ("cuda", True, True)
    assert (w1.workers, w1.live_workers, w1.available_workers) == (None, None, None)
    assert (cuda.workers, cuda.live_workers, cuda.available_workers) == (1, 1, 1)
    assert (cuda.hardware_class, cuda.live, cuda.available) == (None, None, None)
    assert (bert.total_successes, bert.workers, bert.hardware_class) == (1, None, None)
    # Once more: a success counts on all three again, so all three are published again.
    seen = len(h.records)
    h.success("w1", ts=3_000, task_id="t-2")
    h.tick(4_000)
    more = run(h.records[seen:], core=core)
    assert published(more) == THREE
    assert [f.total_successes for f in figures(more)] == [2, 2, 2]


def test_a_failure_publishes_only_the_circuit_it_counted_on() -> None:
    h = History()
    h.success("w1", ts=1_000)
    h.tick(2_000)
    core = FleetCore()
    run(h.records, core=core)
    seen = len(h.records)
    h.failure("w1", ts=3_000, failure_type="TIMEOUT")  # counts on the task type
    h.tick(4_000)
    outputs = run(h.records[seen:], core=core)
    assert published(outputs) == [("task_type", "bert")]
    assert figures(outputs)[0].consecutive_failures == 1


def test_a_tick_with_nothing_changed_publishes_nothing() -> None:
    h = History()
    h.success("w1", ts=1_000)
    h.tick(2_000)
    h.heartbeat("w1", ts=3_000)  # alive already: nothing it shows changes
    h.started("w1", ts=3_500, task_id="t-9")  # its task type circuit exists already
    h.config(3_600, {"circuits": {"worker": {"failure_threshold": 7}}})
    later = h.tick(4_000)
    core = FleetCore()
    run(h.records[:-1], core=core)
    assert core.process(later) == []


def test_a_lost_worker_publishes_its_circuit_and_its_class_with_the_capacity_counts() -> None:
    h = History()
    h.heartbeat("w1", ts=1_000)
    h.heartbeat("w2", ts=1_000)
    h.tick(2_000)
    h.heartbeat("w2", ts=30_000)
    lost_at = h.tick(40_000)  # w1 silent since 1 s: lost at 31 s
    h.heartbeat("w1", ts=41_000)  # and back
    back = h.tick(42_000)
    core = FleetCore()
    outputs = run(h.records, core=core)
    at_loss = [f for f in figures(outputs) if f.caused_by == lost_at.event_id]
    assert published(at_loss) == [("worker", "w1"), ("hardware_class", "cuda")]
    w1, cuda = at_loss
    assert (w1.live, w1.available, w1.total_failures) == (False, False, 1)
    assert (cuda.workers, cuda.live_workers, cuda.available_workers) == (2, 1, 1)
    revived = [f for f in figures(outputs) if f.caused_by == back.event_id]
    assert [(f.circuit_id, f.live, f.available, f.live_workers) for f in revived] == [
        ("w1", True, True, None),
        ("cuda", None, None, 2),
    ]


def test_a_class_opening_marks_its_members_available() -> None:
    h = History()
    h.started("w1", ts=1_000)  # its task type circuit: created (and published) here
    h.heartbeat("w2", ts=1_000)
    h.tick(2_000)
    for n in range(3):  # the class circuit's threshold
        h.failure("w1", ts=3_000 + n, task_id=f"t{n}", failure_type="HARDWARE_ERROR")
    tick = h.tick(4_000)
    core = FleetCore()
    outputs = run(h.records, core=core)
    at_tick = [f for f in figures(outputs) if f.caused_by == tick.event_id]
    # w2 did nothing, but the class it belongs to opened: it is no longer available.
    assert published(at_tick) == [
        ("worker", "w1"),
        ("worker", "w2"),
        ("hardware_class", "cuda"),
    ]
    assert [f.available for f in at_tick[:2]] == [False, False]
    assert (at_tick[2].state, at_tick[2].available_workers, at_tick[2].live_workers) == (
        "OPEN",
        0,
        2,
    )


def test_a_worker_opening_marks_its_class_capacity() -> None:
    h = History()
    h.started("w1", ts=1_000)
    h.heartbeat("w2", ts=1_000)
    h.tick(2_000)
    for n in range(5):  # counted on w1's circuit only, and it opens
        h.failure("w1", ts=3_000 + n, task_id=f"t{n}", failure_type="WORKER_CRASH")
    tick = h.tick(4_000)
    outputs = run(h.records)
    at_tick = [f for f in figures(outputs) if f.caused_by == tick.event_id]
    assert published(at_tick) == [("worker", "w1"), ("hardware_class", "cuda")]
    w1, cuda = at_tick
    assert (w1.state, w1.available) == ("OPEN", False)
    assert (cuda.total_failures, cuda.available_workers) == (0, 1)


def test_an_operator_reset_of_a_closed_circuit_publishes_its_zeroed_counters() -> None:
    h = History()
    h.failure("w1", ts=1_000, failure_type="WORKER_CRASH")
    h.failure("w1", ts=1_001, task_id="t2", failure_type="WORKER_CRASH")
    h.tick(2_000)
    core = FleetCore()
    assert by_id(run(h.records, core=core))["w1"].health == 80.0
    reset = Operator(
        event_id="op1", ts=3_000, action="RESET", circuit_kind="worker", circuit_id="w1",
        actor="ops",
    )  # fmt: skip
    assert core.process(reset) == []  # CLOSED already: no transition, but counters zeroed
    outputs = core.process(h.tick(4_000))
    assert published(outputs) == [("worker", "w1")]
    assert (outputs[0].consecutive_failures, outputs[0].health) == (0, 100.0)


def test_a_worker_moving_class_publishes_it_and_both_classes() -> None:
    h = History()
    h.heartbeat("w1", ts=1_000)
    h.heartbeat("w2", ts=1_000, hardware_class="cpu")
    h.tick(2_000)
    h.heartbeat("w1", ts=3_000, hardware_class="cpu")
    tick = h.tick(4_000)
    outputs = run(h.records)
    at_tick = [f for f in figures(outputs) if f.caused_by == tick.event_id]
    assert [(f.circuit_id, f.hardware_class, f.workers) for f in at_tick] == [
        ("w1", "cpu", None),
        ("cpu", None, 2),
        ("cuda", None, 0),
    ]


def test_figures_follow_what_the_tick_revealed_in_kind_rank_then_id_order() -> None:
    h = History()
    for worker in ("w2", "w10", "w1"):
        h.success(worker, ts=1_000, task_type="zeta")
    h.success("w1", ts=1_000, task_id="t-a", task_type="alpha", hardware_class="rocm")
    outputs = run([*h.records, h.tick(2_000)])
    assert published(outputs) == [
        ("worker", "w1"),
        ("worker", "w10"),
        ("worker", "w2"),
        ("hardware_class", "cuda"),
        ("hardware_class", "rocm"),
        ("task_type", "alpha"),
        ("task_type", "zeta"),
    ]


def test_figures_come_after_the_records_of_the_due_moments_the_tick_revealed() -> None:
    h = History()
    for n in range(5):
        h.failure("w1", ts=1_000 + n, task_id=f"t{n}", failure_type="WORKER_CRASH")
    h.tick(2_000)
    tick = h.tick(70_000)  # half-opens w1 (60 s), and w1 is lost (30 s)
    outputs = run(h.records)
    at_tick = [o for o in outputs if o.caused_by == tick.event_id]
    kinds = [type(o).__name__ for o in at_tick]
    assert kinds[-2:] == ["CircuitFigures", "CircuitFigures"]
    assert "CircuitFigures" not in kinds[:-2] and len(kinds) > 2
    w1 = by_id(at_tick)["w1"]
    assert (w1.state, w1.live) == ("HALF_OPEN", False)


def test_a_repeated_tick_yields_nothing_and_keeps_the_marks() -> None:
    h = History()
    h.success("w1", ts=1_000)
    tick = h.tick(2_000)
    core = FleetCore()
    run(h.records, core=core)
    core.process(WorkerEvent(
        event_id="late", kind="SUCCESS", ts=2_500, worker_id="w1", hardware_class="cuda",
        task_id="t2", task_type="bert",
    ))  # fmt: skip
    assert core.process(tick) == []  # seen before: ignored entirely
    outputs = core.process(h.tick(3_000))
    assert published(outputs) == THREE
    assert [f.total_successes for f in outputs] == [2, 2, 2]


def test_snapshot_and_restore_keep_the_marks() -> None:
    h = History()
    h.success("w1", ts=1_000)
    core = FleetCore()
    run(h.records, core=core)
    restored = FleetCore.restore(core.snapshot())
    tick = h.tick(2_000)
    assert restored.process(tick) == core.process(tick)
    assert published(restored.process(h.tick(3_000))) == []


def test_the_issue_13_fleet_publishes_what_the_core_counts() -> None:
    """Five cuda workers each failing WORKER_CRASH five times: the fleet guard counts the
    fifth failures of w3, w4 and w5 on the class. The figures say what the core says."""
    h = History()
    for worker in ("w1", "w2", "w3", "w4", "w5"):
        h.heartbeat(worker, ts=1_000)
    for worker in ("w1", "w2", "w3", "w4", "w5"):
        for n in range(5):
            h.failure(worker, ts=2_000, task_id=f"{worker}-{n}", failure_type="WORKER_CRASH")
    core = FleetCore()
    outputs = run([*h.records, h.tick(3_000)], core=core)
    shown = by_id(outputs)
    assert (shown["w3"].total_failures, shown["cuda"].total_failures) == (4, 3)
    view = core.circuits_view()
    for circuit_id, row in view["workers"].items():
        assert (shown[circuit_id].total_failures, shown[circuit_id].state) == (
            row["total_failures"],
            row["state"],
        )
    assert shown["cuda"].total_failures == view["hardware_classes"]["cuda"]["total_failures"]
    # Three failures open the class: none of its five live workers is available.
    assert (shown["cuda"].state, shown["cuda"].available_workers) == ("OPEN", 0)
    assert shown["cuda"].live_workers == 5


def test_a_circuit_is_published_at_the_first_tick_after_it_is_created() -> None:
    h = History()
    h.heartbeat("w1", ts=1_000)
    h.tick(2_000)
    h.started("w1", ts=3_000, task_type="llama")  # a new task type circuit, nothing counted
    tick = h.tick(4_000)
    core = FleetCore()
    outputs = run(h.records, core=core)
    at_tick = [f for f in figures(outputs) if f.caused_by == tick.event_id]
    assert [(f.circuit_id, f.total_successes, f.health) for f in at_tick] == [("llama", 0, 100.0)]
    # A worker circuit an operator names before its worker is ever seen: no worker figures.
    force = Operator(
        event_id="op1", ts=5_000, action="FORCE_OPEN", circuit_kind="worker", circuit_id="w9",
        actor="ops",
    )  # fmt: skip
    core.process(force)
    (w9,) = core.process(h.tick(6_000))
    assert (w9.circuit_id, w9.state, w9.health) == ("w9", "FORCED_OPEN", 0.0)
    assert (w9.hardware_class, w9.live, w9.available) == (None, None, None)


def test_a_class_forced_open_before_any_worker_reports_it_counts_none() -> None:
    h = History()
    h.operator("FORCE_OPEN", "hardware_class", "rocm", ts=1_000)
    h.tick(2_000)
    (rocm,) = figures(run(h.records))
    assert (rocm.circuit_kind, rocm.circuit_id, rocm.state) == (
        "hardware_class",
        "rocm",
        "FORCED_OPEN",
    )
    assert (rocm.workers, rocm.live_workers, rocm.available_workers) == (0, 0, 0)


def test_a_figures_id_is_the_hash_of_its_tick_kind_and_circuit() -> None:
    h = History()
    h.heartbeat("w1", ts=1_000)
    tick = h.tick(2_000)
    ids = {(f.circuit_kind, f.circuit_id): f.event_id for f in figures(run(h.records))}
    text = f"{tick.event_id}\x1fworker\x1fw1".encode()
    assert ids["worker", "w1"] == "fig-" + blake2b(text, digest_size=8).hexdigest()
    assert len(set(ids.values())) == len(ids) == 2  # w1 and cuda, each its own
