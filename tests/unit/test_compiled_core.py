"""The compiled core (`processors/compiled/`) against the specification: for random
histories and settings, `replay_compiled` gives FleetCore's derived records, serialised
byte for byte the same; plus the hard spots as named scenarios."""

from __future__ import annotations

import importlib
import importlib.util
import random
from pathlib import Path

import pytest
from histories import History, commands, core_settings, figures, moves, transitions
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_tune_fast import core_settings as random_settings

from faultstream.events.config import CoreSettings
from faultstream.events.models import MAX_MILLIS, InputRecord, WorkerEvent, derived_to_json
from faultstream.processors.compiled import (
    UnsupportedHistory,
    encode_history,
    materialize,
    replay_compiled,
    run,
)
from faultstream.processors.core import FleetCore
from faultstream.processors.core import fleet as core_fleet

WORKERS = ["w1", "w2", "w3", "w4", "w5", "cuda", "c1", "c2"]  # "cuda" also names a class
CLASSES = ["cuda", "cuda", "cuda", "cuda", "rocm", "cpu", "cpu", "cpu"]
FAILURE_TYPES = [
    "WORKER_CRASH",
    "WORKER_DISCONNECTION",
    "BROWSER_FAILURE",
    "HARDWARE_ERROR",
    "RESOURCE_EXHAUSTION",
    "TIMEOUT",
    "SOFTWARE_ERROR",
    "PERSISTENT_ERROR",
    None,  # classified from the message
]
MESSAGES = ["CUDA out of memory", "cuda error 700", "browser crashed", "worker crash", "boom"]
BATCH_SIZES = [None, "64", "1", "x", " 8", "3"]
PRECISIONS = [None, "fp32", "fp16", "bf16", "int8"]
ATTRIBUTIONS = [
    {},
    {"worker": ["WORKER_CRASH"], "hardware_class": ["HARDWARE_ERROR", "WORKER_DISCONNECTION"]},
    {"worker": ["WORKER_CRASH", "BROWSER_FAILURE"], "hardware_class": []},  # disc. → task
]
CONFIGS = [
    {"recovery": {"heartbeat_timeout_s": 2}},
    {"recovery": {"heartbeat_timeout_s": 45.5}},
    {"recovery": {"heartbeat_timeout_s": 2.0003}},  # 2000.3 ms, rounded: not a whole ms
    {"recovery": {"max_retries": 1}},
    {"recovery": {"max_retries": 5}},
    {"circuits": {"worker": {"failure_threshold": 1}}},
    {"circuits": {"worker": {"max_open_fraction": 0.3, "guard_min_workers": 2}}},
    {"circuits": {"task_type": {"recovery_timeout_s": 1.7, "reset_timeout_factor": 1.3}}},
    {"circuits": {"hardware_class": {"success_threshold": 1, "failure_threshold": 2}}},
    {"circuits": {"worker": {"half_open_max_calls": 0}}},  # invalid: ignored
    {"circuits": {"attribution": ATTRIBUTIONS[1]}},
    {"circuits": {"attribution": ATTRIBUTIONS[2]}},
    {"alerts": {"open_longer_than_s": 3}},  # outages' clocks again, shorter or longer
    {"alerts": {"open_longer_than_s": 40}},
    {"alerts": {"open_longer_than_s": 0}},
    {"alerts": {"class_capacity_below": 0, "fleet_health_below": 95}},
    {"alerts": {"class_capacity_below": 80, "escalations": False}},
    {"alerts": {"clock_skew": False}},
    {"alerts": {"clock_skew": True}, "clock": {"max_skew_s": 1.5}},
    {"recovery": {"adaptive": True, "adaptive_min_samples": 2}},  # learned so far counts
    {"recovery": {"adaptive": False}},
    {"circuits": {"worker": {"failure_rate_threshold": 40, "minimum_number_of_calls": 3}}},
    {"circuits": {"task_type": {"slow_call_duration_s": 1, "minimum_number_of_calls": 2}}},
    {"circuits": {"hardware_class": {"sliding_window_type": "time", "sliding_window_size": 3}}},
    {"circuits": {"worker": {"failure_rate_threshold": 0, "slow_call_duration_s": 0}}},
    {"circuits": {"worker": {"outlier_stdev_factor": 0.5, "outlier_interval_s": 4}}},
    {"circuits": {"worker": {"outlier_stdev_factor": 0}}},
]

step = st.tuples(
    st.sampled_from(
        [
            "heartbeat",
            "started",
            "started",
            "checkpoint",
            "success",
            "success",
            "failure",
            "failure",
            "failure",
            "class_failure",
            "tick",
            "silence",
            "operator",
            "config",
            "repeat",
            "late",
            "move",
            "skewed",
            "drift",
            "load",
            "retry",
            "retry",
            "timed",
            "timed",
        ]
    ),
    st.integers(0, len(WORKERS) - 1),
    st.integers(0, 3_000),  # ts step
    st.integers(0, len(FAILURE_TYPES) - 1),
    st.sampled_from(["bert", "resnet"]),
    st.integers(0, 2**16),  # a free choice for the step (message, attempt, operator, …)
)


def build(steps: list[tuple]) -> list[InputRecord]:
    """A history from steps: tasks started, checkpointed and finished (task ids shared
    across workers too), failures with attempts past max_retries and ladder attributes,
    silences that lose workers, whole classes failing (the fleet guard), operators,
    settings changes, repeated ids, late events, workers changing class."""
    h = History()
    ts = 1_000
    classes = dict(zip(WORKERS, CLASSES, strict=True))
    for kind, wi, delta, fi, task_type, choice in steps:
        ts += delta
        worker = WORKERS[wi]
        hw = classes[worker]
        failure_type = FAILURE_TYPES[fi]
        message = MESSAGES[choice % len(MESSAGES)] if failure_type is None else None
        task = f"t-{choice % 5}" if choice % 2 else f"t-{worker}-{choice % 3}"
        attempt = (choice >> 3) % 6
        if kind == "tick":
            h.tick(ts)
        elif kind == "silence":
            ts += 2_000 + choice % 50_000
            h.tick(ts)
        elif kind == "heartbeat":
            h.heartbeat(worker, ts, hardware_class=hw)
        elif kind == "started":
            h.started(
                worker, ts, hardware_class=hw, task_type=task_type, task_id=task, attempt=attempt
            )
        elif kind == "checkpoint":
            h.checkpoint(worker, ts, choice % 7, hardware_class=hw, task_id=task)
        elif kind == "success":
            h.success(worker, ts, hardware_class=hw, task_type=task_type, task_id=task)
        elif kind == "failure":
            attributes = {}
            batch, precision = BATCH_SIZES[choice % 6], PRECISIONS[(choice >> 5) % 5]
            if batch is not None:
                attributes["batch_size"] = batch
            if precision is not None:
                attributes["precision"] = precision
            h.failure(
                worker, ts, failure_type, hardware_class=hw, task_type=task_type,
                task_id=task, message=message, attempt=attempt, attributes=attributes,
            )  # fmt: skip
        elif kind == "class_failure":  # every worker of the class crashes at once
            for other in WORKERS:
                if classes[other] == hw:
                    h.failure(other, ts, "WORKER_CRASH", hardware_class=hw, task_type=task_type)
        elif kind == "operator":
            circuit_kind = ("worker", "hardware_class", "task_type")[choice % 3]
            circuit_id = (worker, hw, task_type)[choice % 3]
            action = "FORCE_OPEN" if choice % 5 < 2 else "RESET"
            h.operator(action, circuit_kind, circuit_id, ts)
        elif kind == "config":
            h.config(ts, CONFIGS[choice % len(CONFIGS)])
        elif kind == "repeat" and h.records:
            h.records.append(h.records[choice % len(h.records)])
        elif kind == "late":  # an event whose ts is behind the clock
            h.failure(worker, max(0, ts - choice % 8_000), failure_type or "TIMEOUT",
                      hardware_class=hw, task_type=task_type, message=message)  # fmt: skip
        elif kind == "skewed":  # a worker's clock far off: decisions run on received_at
            wild = (choice * 7_919_000_003) % MAX_MILLIS
            if choice % 2:
                h.heartbeat(worker, wild, hardware_class=hw, received_at=ts)
            else:
                h.failure(worker, wild, failure_type or "TIMEOUT", hardware_class=hw,
                          task_type=task_type, message=message, received_at=ts)  # fmt: skip
        elif kind == "move":  # the worker now reports another class
            classes[worker] = CLASSES[choice % len(CLASSES)]
            h.heartbeat(worker, ts, hardware_class=classes[worker])
        elif kind == "drift":  # a clock a few seconds off (or back within): clock_skew
            h.heartbeat(worker, max(0, ts + choice % 6_000 - 3_000), hardware_class=hw,
                        received_at=ts)  # fmt: skip
        elif kind == "retry":  # a failure, then its task's next attempt: a trial of the command
            first = choice % 3
            retried = ("RESOURCE_EXHAUSTION", "HARDWARE_ERROR", "TIMEOUT")[(choice >> 2) % 3]
            oom = {"batch_size": "8", "precision": "fp32"} if choice % 4 else {}
            h.failure(worker, ts, retried, hardware_class=hw, task_type=task_type, task_id=task,
                      attempt=first, attributes=oom)  # fmt: skip
            outcome = h.success if choice & 192 else h.failure
            outcome(worker, ts + 1, hardware_class=hw, task_type=task_type, task_id=task,
                    attempt=first + 1)  # fmt: skip
        elif kind == "burst":  # outcomes of every worker of the class: outlier samples
            for n, other in enumerate(WORKERS):
                if classes[other] == hw:
                    for k in range(3):
                        ok = (choice >> ((n * 3 + k) % 16)) & 1 or n % 3
                        outcome = h.success if ok else h.failure
                        outcome(other, ts + k, hardware_class=hw, task_type=task_type,
                                task_id=f"t-{other}-{k}")  # fmt: skip
        elif kind == "timed":  # a task attempt started and succeeded a while later: slow?
            h.started(worker, ts, hardware_class=hw, task_type=task_type, task_id=task,
                      attempt=attempt % 3)  # fmt: skip
            ts += choice % 4_000
            h.success(worker, ts, hardware_class=hw, task_type=task_type, task_id=task,
                      attempt=attempt % 3)  # fmt: skip
        elif kind == "load":  # several tasks started (or restarted) at once: unequal loads
            for n in range(1 + choice % 3):
                h.started(worker, ts, hardware_class=hw, task_type=task_type,
                          task_id=f"t-{((choice >> 2) + n * 3) % 5}", attempt=attempt)  # fmt: skip
    return h.records


@st.composite
def replay_settings(draw: st.DrawFn) -> CoreSettings:
    """Random circuit settings (test_tune_fast's) with random alert rules (0: off), clock
    skew limits, adaptive ladders (learning from a few trials, or not at all), and sliding
    windows of outcomes (failure-rate and slow-call rules, often off)."""
    core = draw(random_settings())

    def window() -> dict:
        minimum = draw(st.integers(1, 6))
        time_window = draw(st.booleans())
        return {
            "failure_rate_threshold": draw(st.sampled_from([0, 0, 25, 50, 66.6, 100])),
            "slow_call_duration_s": draw(st.sampled_from([0, 0, 0.5, 2.5])),
            "slow_call_rate_threshold": draw(st.sampled_from([10, 50, 100])),
            "minimum_number_of_calls": minimum,
            "sliding_window_type": "time" if time_window else "count",
            "sliding_window_size": draw(
                st.sampled_from([1, 4.5, 30]) if time_window else st.integers(minimum, 12)
            ),
        }

    outliers = {
        "outlier_stdev_factor": draw(st.sampled_from([0, 0, 0.5, 1.9])),
        "outlier_interval_s": draw(st.sampled_from([3, 10, 45.5])),
        "outlier_minimum_hosts": draw(st.integers(1, 4)),
        "outlier_request_volume": draw(st.integers(1, 4)),
    }
    return core.merged(
        {
            "circuits": {
                "worker": window() | outliers,
                "hardware_class": window(),
                "task_type": window(),
            },
            "recovery": {
                "adaptive": draw(st.booleans()),
                "adaptive_min_samples": draw(st.integers(1, 4)),
            },
            "alerts": {
                "class_capacity_below": draw(st.sampled_from([0, 25, 50, 66.7, 100])),
                "open_longer_than_s": draw(st.sampled_from([0, 1, 4.5, 30, 900])),
                "escalations": draw(st.booleans()),
                "fleet_health_below": draw(st.sampled_from([0, 50, 70, 88.88, 99.5, 100])),
                "clock_skew": draw(st.booleans()),
            },
            "clock": {"max_skew_s": draw(st.sampled_from([0.5, 2, 120]))},
        }
    )


def core_lines(records: list[InputRecord], core: CoreSettings | None = None) -> list[str]:
    fleet = FleetCore(core)
    return [derived_to_json(out) for record in records for out in fleet.process(record)]


def compiled_lines(records: list[InputRecord], core: CoreSettings | None = None) -> list[str]:
    return [derived_to_json(out) for out in replay_compiled(records, core)]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=10, max_size=150).map(build), replay_settings())
def test_compiled_replay_equals_fleet_core_byte_for_byte(
    records: list[InputRecord], core: CoreSettings
) -> None:
    expected = core_lines(records, core)
    try:
        got = compiled_lines(records, core)
    except UnsupportedHistory as exc:  # only ever for a rounding tie the kernel cannot tell
        assert "rounding" in str(exc)
        event("unsupported: rounding tie")
        return
    assert got == expected


def test_fleet_guard_redirects_a_class_wide_crash_to_the_class_circuit() -> None:
    h = History()
    for worker in ("w1", "w2", "w3", "w4"):
        h.heartbeat(worker, 1_000)
    for n in range(6):  # w1, w2 open at the 5th; then half the class is open
        for worker in ("w1", "w2", "w3", "w4"):
            h.failure(worker, 2_000 + n, "WORKER_CRASH")
    outputs = replay_compiled(h.records, core_settings())
    assert any("fleet_guard" in c.reason for c in commands(outputs))
    assert ("hardware_class", "cuda", "CLOSED", "OPEN") in moves(outputs)
    assert compiled_lines(h.records) == core_lines(h.records)


def test_lost_worker_tasks_migrate_to_a_live_worker_with_their_checkpoint() -> None:
    h = History()
    h.heartbeat("w2", 1_000)
    h.started("w1", 1_000, task_id="t-a")
    h.started("w1", 1_000, task_id="t-b", attempt=3)  # at max_retries: escalated
    h.checkpoint("w1", 1_500, 7, task_id="t-a")
    h.heartbeat("w2", 20_000)
    h.tick(40_000)  # w1 silent over 30 s
    outputs = replay_compiled(h.records)
    migrated = {c.task_id: c for c in commands(outputs)}
    assert migrated["t-a"].strategy == "DIFFERENT_WORKER"
    assert migrated["t-a"].target_worker_id == "w2"
    assert migrated["t-a"].checkpoint_seq == 7
    assert migrated["t-b"].strategy == "ESCALATION"
    assert compiled_lines(h.records) == core_lines(h.records)


def test_cpu_class_open_delays_the_retry_until_it_half_opens() -> None:
    h = History(hardware_class="cpu")
    for n in range(3):
        h.failure("c1", 1_000 + n, "HARDWARE_ERROR")
    h.failure("c1", 5_000, "TIMEOUT")
    last = commands(replay_compiled(h.records))[-1]
    assert last.strategy == "DELAYED_RETRY"
    assert last.delay_s == 116.002  # 120 s from the opening at 1,002 ms, asked at 5,000
    assert compiled_lines(h.records) == core_lines(h.records)


def test_due_moment_tie_half_opens_circuits_in_id_then_kind_order() -> None:
    h = History(hardware_class="cuda")
    threshold_one = core_settings(
        circuits={
            "worker": {"failure_threshold": 1, "recovery_timeout_s": 10},
            "hardware_class": {"failure_threshold": 1, "recovery_timeout_s": 10},
        }
    )
    h.failure("cuda", 1_000, "WORKER_CRASH")  # worker circuit "cuda" opens at 1,000
    h.failure("b", 1_000, "HARDWARE_ERROR", hardware_class="cuda")  # class "cuda" too
    h.tick(11_000)
    half_opened = [
        m for m in moves(replay_compiled(h.records, threshold_one)) if m[3] == "HALF_OPEN"
    ]
    assert half_opened == [
        ("worker", "cuda", "OPEN", "HALF_OPEN"),
        ("hardware_class", "cuda", "OPEN", "HALF_OPEN"),
    ]
    assert compiled_lines(h.records, threshold_one) == core_lines(h.records, threshold_one)


def test_config_changed_mid_history_applies_from_that_record_on() -> None:
    h = History()
    h.failure("w1", 1_000, "TIMEOUT")
    h.config(2_000, {"circuits": {"task_type": {"failure_threshold": 2}}})
    h.config(2_500, {"recovery": {"heartbeat_timeout_s": 5}})
    h.config(2_600, {"circuits": {"worker": {"half_open_max_calls": 0}}})  # invalid: ignored
    h.failure("w1", 3_000, "TIMEOUT")
    h.started("w1", 3_100, task_id="t-next")
    h.tick(9_000)  # w1 lost under the new 5 s timeout, its started task migrated
    outputs = replay_compiled(h.records)
    assert ("task_type", "bert", "CLOSED", "OPEN") in moves(outputs)
    assert commands(outputs)[-1].reason.endswith("silent over 5s")
    assert compiled_lines(h.records) == core_lines(h.records)


def test_figures_at_a_tick_name_every_circuit_a_class_transition_touched() -> None:
    h = History(hardware_class="cuda")
    for worker in ("w2", "w1", "w3"):
        h.started(worker, 1_000, task_id=f"t-{worker}")
    h.tick(1_500)  # every circuit is new: all published, workers first, each kind by id
    h.operator("FORCE_OPEN", "hardware_class", "cuda", 2_000)
    h.tick(2_500)  # the class and each member (no longer available)
    h.tick(3_000)  # nothing changed: nothing published
    outputs = replay_compiled(h.records)
    published = [(f.caused_by, f.circuit_kind.value, f.circuit_id) for f in figures(outputs)]
    first, second = h.records[3].event_id, h.records[5].event_id
    assert published == [
        (first, "worker", "w1"),
        (first, "worker", "w2"),
        (first, "worker", "w3"),
        (first, "hardware_class", "cuda"),
        (first, "task_type", "bert"),
        (second, "worker", "w1"),
        (second, "worker", "w2"),
        (second, "worker", "w3"),
        (second, "hardware_class", "cuda"),
    ]
    members = [f for f in figures(outputs) if f.caused_by == second]
    assert [f.available for f in members[:3]] == [False, False, False]
    assert (members[3].workers, members[3].live_workers, members[3].available_workers) == (3, 3, 0)
    assert compiled_lines(h.records) == core_lines(h.records)


def test_a_longer_heartbeat_timeout_mid_history_spares_a_worker_the_old_one_lost() -> None:
    h = History()
    h.heartbeat("w1", 1_000)
    h.heartbeat("w2", 1_000)
    h.config(5_000, {"recovery": {"heartbeat_timeout_s": 60}})
    h.heartbeat("w2", 45_000)  # past w1's old due moment (31 s), short of its new one
    h.config(50_000, {"recovery": {"heartbeat_timeout_s": 10}})
    h.heartbeat("w2", 55_000)  # past w1's due moment again (11 s): lost at this input
    one_failure = core_settings(circuits={"worker": {"failure_threshold": 1}})
    lost = transitions(replay_compiled(h.records, one_failure))
    assert [(t.circuit_id, t.ts) for t in lost] == [("w1", 50_000)]
    assert lost[0].reason.endswith("silent over 10s; failure_threshold reached")
    assert compiled_lines(h.records, one_failure) == core_lines(h.records, one_failure)


def test_bench_history_replays_identically() -> None:
    path = Path(__file__).resolve().parents[2] / "bench" / "histories.py"
    spec = importlib.util.spec_from_file_location("bench_histories", path)
    bench = importlib.util.module_from_spec(spec)  # not tests/histories.py, same name
    spec.loader.exec_module(bench)
    records = bench.fleet_history(events=20_000)
    assert compiled_lines(records) == core_lines(records)


def test_encode_run_materialize_equals_replay_compiled() -> None:
    records = build([("failure", n % 8, 500, n % 9, "bert", n * 37) for n in range(60)])
    encoded = encode_history(records)
    split = [derived_to_json(o) for o in materialize(run(encoded, log_capacity=1), encoded)]
    assert split == compiled_lines(records) == core_lines(records)


def test_checkpoint_seq_beyond_int64_is_refused_at_the_door() -> None:
    with pytest.raises(ValidationError, match="checkpoint_seq"):
        WorkerEvent(
            event_id="e1", kind="CHECKPOINT", ts=1, worker_id="w1", hardware_class="cuda",
            task_id="t", checkpoint_seq=2**63,
        )  # fmt: skip


def test_commands_planned_alike_do_not_share_their_parameters() -> None:
    h = History()
    for n in range(2):  # the same plan twice: looked up the second time
        h.failure(f"w{n}", 1_000 + n, "RESOURCE_EXHAUSTION", attributes={"batch_size": "8"})
    first, second = commands(replay_compiled(h.records))
    assert first.parameters == second.parameters == {"batch_size": "4"}
    assert first.parameters is not second.parameters
    assert compiled_lines(h.records) == core_lines(h.records)


def test_moves_go_to_the_least_loaded_worker_in_start_order() -> None:
    h = History()
    for worker, tasks in (("w2", 2), ("w3", 1), ("w4", 0)):
        for n in range(tasks):
            h.started(worker, 1_000, task_id=f"t-{worker}-{n}")
        h.heartbeat(worker, 1_000)
    for task in ("t-a", "t-b", "t-c"):
        h.started("w1", 1_000, task_id=task)
    h.started("w1", 2_000, task_id="t-a")  # restarted: last in start order now
    for worker in ("w2", "w3", "w4"):
        h.heartbeat(worker, 20_000)
    h.tick(40_000)  # w1 lost: t-b to w4 (none in flight), t-c to w3 (1 each, w3 by id), t-a
    h.started("w4", 41_000, task_id="t-b")  # t-b arrives: in flight on w4 as started
    h.failure("w4", 42_000, "WORKER_CRASH", task_id="t-w4-x")
    outputs = replay_compiled(h.records)
    moved = [(c.task_id, c.target_worker_id) for c in commands(outputs)]
    assert moved[:3] == [("t-b", "w4"), ("t-c", "w3"), ("t-a", "w4")]
    assert compiled_lines(h.records) == core_lines(h.records)


def test_each_alert_rule_fires_and_resolves_as_the_core_does() -> None:
    fast = core_settings(
        circuits={
            "worker": {"failure_threshold": 1, "recovery_timeout_s": 5, "success_threshold": 1}
        },
        alerts={"open_longer_than_s": 10, "fleet_health_below": 90, "class_capacity_below": 60},
        clock={"max_skew_s": 2},
    )
    h = History()
    for worker in ("w1", "w2"):
        h.heartbeat(worker, 1_000)
    h.failure("w1", 2_000, "WORKER_CRASH", attempt=3)  # w1 opens (1 of 2 available): the
    # class below 60 %, the fleet's health below 90, the task escalated
    h.heartbeat("w2", 2_500, received_at=6_000)  # w2's clock 3.5 s behind
    h.heartbeat("w2", 7_000)  # back within
    h.tick(15_000)  # w1 half-open since 7 s: still no CLOSED for 10 s
    h.success("w1", 16_000)  # closes w1: all resolve
    h.config(17_000, {"alerts": {"open_longer_than_s": 1}})
    h.failure("w2", 18_000, "WORKER_CRASH")
    h.heartbeat("w1", 25_000)  # w2 not CLOSED for 1 s
    outputs = replay_compiled(h.records, fast)
    fired = {(a.rule, a.state) for a in outputs if type(a).__name__ == "Alert"}
    for rule in ("class_capacity_below", "open_longer_than_s", "escalations", "clock_skew"):
        assert {(rule, "FIRING"), (rule, "RESOLVED")} <= fired, rule
    assert ("fleet_health_below", "FIRING") in fired
    assert compiled_lines(h.records, fast) == core_lines(h.records, fast)


def test_outlier_ejection_ejects_the_worst_worker_of_a_class() -> None:
    ejecting = core_settings(
        circuits={
            "worker": {
                "outlier_stdev_factor": 1,
                "outlier_interval_s": 10,
                "outlier_minimum_hosts": 3,
                "outlier_request_volume": 4,
            }
        }
    )
    h = History()
    for n in range(8):  # w4 fails half its tasks; the others none
        for worker in ("w1", "w2", "w3", "w4"):
            if worker == "w4" and n % 2:
                h.failure(worker, 1_000 + 500 * n, "TIMEOUT")
            else:
                h.success(worker, 1_000 + 500 * n)
    h.tick(10_500)  # the boundary at 10 s judged
    h.config(11_000, {"circuits": {"worker": {"outlier_interval_s": 7}}})
    h.tick(30_000)
    opened = [t for t in transitions(replay_compiled(h.records, ejecting)) if "outlier" in t.reason]
    assert [t.circuit_id for t in opened] == ["w4"]
    assert compiled_lines(h.records, ejecting) == core_lines(h.records, ejecting)


ejecting_step = st.tuples(
    st.sampled_from(
        ["burst", "burst", "burst", "success", "failure", "tick", "silence", "config", "move"]
    ),
    st.integers(0, len(WORKERS) - 1),
    st.integers(0, 3_000),
    st.integers(0, len(FAILURE_TYPES) - 1),
    st.sampled_from(["bert", "resnet"]),
    st.integers(0, 2**16),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ejecting_step, min_size=10, max_size=100).map(build), replay_settings())
def test_outlier_ejection_replay_equals_fleet_core(
    records: list[InputRecord], core: CoreSettings
) -> None:
    """Histories where whole classes report outcomes together: outlier samples to judge."""
    core = core.merged({"circuits": {"worker": {"outlier_stdev_factor": 0.8}}})
    expected = core_lines(records, core)
    try:
        got = compiled_lines(records, core)
    except UnsupportedHistory as exc:
        assert "rounding" in str(exc)
        return
    assert got == expected


def test_window_rules_open_on_slow_successes_and_a_failure_rate() -> None:
    windows = core_settings(
        circuits={
            "task_type": {"slow_call_duration_s": 1, "minimum_number_of_calls": 3},
            "worker": {"failure_rate_threshold": 50, "minimum_number_of_calls": 4},
        }
    )
    h = History()
    for n in range(3):  # three slow calls of bert: its circuit opens on the third success
        h.started("w1", 1_000 + 3_000 * n, task_id=f"t-{n}")
        h.success("w1", 2_500 + 3_000 * n, task_id=f"t-{n}")
    h.failure("w2", 12_000, "WORKER_CRASH", task_type="resnet")
    h.success("w2", 12_500, task_type="resnet")
    h.failure("w2", 13_000, "WORKER_CRASH", task_type="resnet")  # 2 of 3: too few calls
    h.failure("w2", 13_500, "WORKER_CRASH", task_type="resnet")  # 3 of 4 ≥ 50 %
    reasons = [t.reason for t in transitions(replay_compiled(h.records, windows))]
    assert reasons[0] == "slow_call_rate 3/3 ≥ 100%"
    assert reasons[1] == "WORKER_CRASH; failure_rate 3/4 ≥ 50%"
    assert compiled_lines(h.records, windows) == core_lines(h.records, windows)


learning_step = st.tuples(
    st.sampled_from(["retry", "retry", "retry", "success", "started", "silence", "failure"]),
    st.integers(0, len(WORKERS) - 1),
    st.integers(0, 3_000),
    st.integers(0, len(FAILURE_TYPES) - 1),
    st.sampled_from(["bert", "resnet"]),
    st.integers(0, 2**16),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(learning_step, min_size=10, max_size=150).map(build), replay_settings())
def test_adaptive_ladders_replay_equals_fleet_core(
    records: list[InputRecord], core: CoreSettings
) -> None:
    """Histories of failures and their tasks' next attempts: trials the ladders learn from."""
    core = core.merged({"recovery": {"adaptive": True}})
    expected = core_lines(records, core)
    try:
        got = compiled_lines(records, core)
    except UnsupportedHistory as exc:
        assert "rounding" in str(exc)
        return
    assert got == expected


def test_adaptive_ladder_picks_the_rung_that_succeeded() -> None:
    learning = core_settings(recovery={"adaptive": True, "adaptive_min_samples": 1})
    h = History()
    oom = {"batch_size": "8", "precision": "fp32"}
    h.failure("w1", 1_000, "RESOURCE_EXHAUSTION", task_id="t-a", attributes=oom)  # batch
    h.failure("w1", 2_000, "RESOURCE_EXHAUSTION", task_id="t-a", attempt=1, attributes=oom)
    h.success("w1", 3_000, task_id="t-a", attempt=2)  # precision: 1/1, batch: 0/1
    h.failure("w1", 4_000, "RESOURCE_EXHAUSTION", task_id="t-b", attributes=oom)
    outputs = replay_compiled(h.records, learning)
    last = commands(outputs)[-1]
    assert last.strategy == "REDUCED_PRECISION" and "adaptive" in last.reason
    assert compiled_lines(h.records, learning) == core_lines(h.records, learning)


def test_commands_awaiting_their_outcome_past_the_bound_are_forgotten_alike(monkeypatch) -> None:
    learning = core_settings(recovery={"adaptive": True, "adaptive_min_samples": 1})
    oom = {"batch_size": "8"}
    h = History()
    h.failure("w1", 1_000, "RESOURCE_EXHAUSTION", task_id="t-a", attributes=oom)
    h.failure("w1", 2_000, "RESOURCE_EXHAUSTION", task_id="t-b", attributes=oom)
    h.success("w1", 3_000, task_id="t-a", attempt=1)  # a trial, unless t-a was forgotten
    h.failure("w1", 4_000, "RESOURCE_EXHAUSTION", task_id="t-c", attributes=oom)
    learned = commands(replay_compiled(h.records, learning))[-1]
    assert "adaptive" in learned.reason
    monkeypatch.setattr(core_fleet, "AWAITED_COMMANDS", 1)  # read by both engines
    forgot = commands(replay_compiled(h.records, learning))[-1]
    assert "adaptive" not in forgot.reason  # t-a's command was forgotten for t-b's
    assert compiled_lines(h.records, learning) == core_lines(h.records, learning)
    rng = random.Random(7)
    kinds = ["retry", "failure", "failure", "failure", "started", "success", "silence"]
    steps = [
        (rng.choice(kinds), rng.randrange(len(WORKERS)), rng.randrange(3_000),
         rng.randrange(len(FAILURE_TYPES)), rng.choice(["bert", "resnet"]), rng.randrange(2**16))
        for _ in range(400)
    ]  # fmt: skip
    records = build(steps)
    monkeypatch.setattr(core_fleet, "AWAITED_COMMANDS", 2)
    assert compiled_lines(records, learning) == core_lines(records, learning)
