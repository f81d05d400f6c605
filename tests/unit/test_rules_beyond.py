"""Decisions beyond consecutive failures (docs/circuits.md): one scenario per rule, each run
through `faultstream replay --config`, the way a user tunes them, and written to fail when
that rule alone is broken.

Failure-rate and slow-call windows, outlier workers, adaptive ladders; the alerts and the
load-balanced targets have theirs in test_alert_rules.py and test_core_rules.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from histories import History

from faultstream.cli import main

START = 1_764_355_200_000


def replay(tmp_path: Path, h: History, config: str, capsys) -> list[dict[str, Any]]:
    """The derived records of `h` replayed by the core under the TOML `config`, as JSON
    objects; replay's own choice of engine (the compiled twin where it is exact) must
    write the very same lines."""
    history, settings = tmp_path / "history.jsonl", tmp_path / "faultstream.toml"
    history.write_text("".join(record.model_dump_json() + "\n" for record in h.records))
    settings.write_text(config)
    outputs = []
    for engine in (["--engine", "core"], []):
        capsys.readouterr()
        assert main(["replay", "--input", str(history), "--config", str(settings), *engine]) == 0
        outputs.append(capsys.readouterr().out)
    core, chosen = outputs
    assert chosen == core
    return [json.loads(line) for line in core.splitlines()]


def opened(derived: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(circuit id, reason, caused_by) of each opening."""
    return [
        (d["circuit_id"], d["reason"], d["caused_by"])
        for d in derived
        if d["type"] == "circuit_state_changed" and d["to_state"] == "OPEN"
    ]


def outcomes(h: History, worker: str, pattern: str, ts: int, **fields: Any) -> list[str]:
    """One outcome a second from `ts`: S success, F a WORKER_CRASH; their event ids."""
    ids = []
    for i, outcome in enumerate(pattern):
        at = ts + i * 1_000
        if outcome == "S":
            ids.append(h.success(worker, at, task_id=f"{worker}-{i}", **fields).event_id)
        else:
            record = h.failure(worker, at, "WORKER_CRASH", task_id=f"{worker}-{i}", **fields)
            ids.append(record.event_id)
    return ids


RATE = """
[circuits.worker]
failure_rate_threshold = 50
sliding_window_size = 4
minimum_number_of_calls = 4
"""


# --- failure rate ---------------------------------------------------------------------------


def test_one_failure_in_two_opens_a_worker_that_never_fails_five_in_a_row(tmp_path, capsys) -> None:
    h = History()
    ids = outcomes(h, "w1", "SFSF", START)
    assert opened(replay(tmp_path, h, RATE, capsys)) == [
        ("w1", "WORKER_CRASH; failure_rate 2/4 ≥ 50%", ids[3])
    ]
    assert opened(replay(tmp_path, h, "", capsys)) == []  # the seed's rule alone: never


def test_the_rate_waits_for_the_minimum_number_of_calls(tmp_path, capsys) -> None:
    h = History()
    outcomes(h, "w1", "FSF", START)  # 2 of 3 failed, but 3 < minimum_number_of_calls
    assert opened(replay(tmp_path, h, RATE, capsys)) == []


def test_a_success_that_fills_the_window_can_open_it(tmp_path, capsys) -> None:
    h = History()
    ids = outcomes(h, "w1", "FFS", START)
    config = RATE.replace("= 4", "= 3").replace("= 50", "= 60")
    assert opened(replay(tmp_path, h, config, capsys)) == [("w1", "failure_rate 2/3 ≥ 60%", ids[2])]


def test_a_count_window_keeps_only_the_last_n_outcomes(tmp_path, capsys) -> None:
    h = History()
    outcomes(h, "w1", "FSSSSF", START)  # the first F has left a window of 4 by the last
    assert opened(replay(tmp_path, h, RATE, capsys)) == []


def test_a_time_window_keeps_only_the_last_n_seconds(tmp_path, capsys) -> None:
    config = RATE.replace("sliding_window_size = 4", 'sliding_window_type = "time"\n'
                          "sliding_window_size = 3")  # fmt: skip
    h = History()
    outcomes(h, "w1", "FFSSS", START)  # at the last, the window holds 3 s: S S S
    assert opened(replay(tmp_path, h, config, capsys)) == []
    h = History()
    ids = outcomes(h, "w1", "SFSF", START)  # at the last, the 3-s window holds F S F
    assert opened(replay(tmp_path, h, config.replace("= 4", "= 3"), capsys)) == [
        ("w1", "WORKER_CRASH; failure_rate 2/3 ≥ 50%", ids[3])
    ]


def test_both_rules_met_are_named_in_order(tmp_path, capsys) -> None:
    config = RATE + "failure_threshold = 2\n"
    h = History()
    ids = outcomes(h, "w1", "SSFF", START)
    assert opened(replay(tmp_path, h, config, capsys)) == [
        ("w1", "WORKER_CRASH; failure_threshold reached; failure_rate 2/4 ≥ 50%", ids[3])
    ]


def test_the_window_empties_when_the_circuit_closes(tmp_path, capsys) -> None:
    config = RATE + "recovery_timeout_s = 1\nsuccess_threshold = 1\nhalf_open_max_calls = 1\n"
    h = History()
    outcomes(h, "w1", "SFSF", START)  # opens; half-open at +4 s
    outcomes(h, "w1", "S", START + 10_000)  # closes: the window starts empty
    outcomes(h, "w1", "SSF", START + 20_000)  # 1 of 3 calls, below the minimum anyway
    ids = outcomes(h, "w1", "F", START + 30_000)  # S S F F: 2 of 4
    assert [reason for _, reason, _ in opened(replay(tmp_path, h, config, capsys))] == [
        "WORKER_CRASH; failure_rate 2/4 ≥ 50%",
        "WORKER_CRASH; failure_rate 2/4 ≥ 50%",
    ]
    assert opened(replay(tmp_path, h, config, capsys))[-1][2] == ids[0]


def test_an_operator_reset_empties_the_window(tmp_path, capsys) -> None:
    h = History()
    outcomes(h, "w1", "SFS", START)
    h.operator("RESET", "worker", "w1", START + 3_500)
    outcomes(h, "w1", "F", START + 4_000)  # would be 2 of 4 without the reset
    assert opened(replay(tmp_path, h, RATE, capsys)) == []


def test_the_fleet_guard_holds_back_a_rate_opening(tmp_path, capsys) -> None:
    config = RATE + "guard_min_workers = 2\nmax_open_fraction = 0.5\n"
    h = History()
    h.heartbeat("w2", START)
    h.operator("FORCE_OPEN", "worker", "w2", START)  # half of the 2 cuda workers open
    outcomes(h, "w1", "SFSF", START + 1_000)
    derived = replay(tmp_path, h, config, capsys)
    assert [c for c, _, _ in opened(derived)] == []
    failures = [d for d in derived if d["type"] == "recovery_command"]
    assert "fleet_guard" in failures[-1]["reason"]


def test_a_rate_rule_on_the_task_type_circuit(tmp_path, capsys) -> None:
    config = RATE.replace("[circuits.worker]", "[circuits.task_type]")
    h = History()
    for i, outcome in enumerate("SFSF"):
        worker = f"w{i}"  # four workers: no worker fails twice
        if outcome == "S":
            h.success(worker, START + i * 1_000, task_id=f"t{i}")
        else:
            h.failure(worker, START + i * 1_000, "TIMEOUT", task_id=f"t{i}")
    assert [(c, r) for c, r, _ in opened(replay(tmp_path, h, config, capsys))] == [
        ("bert", "TIMEOUT; failure_rate 2/4 ≥ 50%")
    ]


# --- slow calls -----------------------------------------------------------------------------

SLOW = """
[circuits.worker]
slow_call_duration_s = 10
slow_call_rate_threshold = 50
minimum_number_of_calls = 2
sliding_window_size = 10
"""


def timed_success(h: History, worker: str, task_id: str, start: int, seconds: float) -> str:
    h.started(worker, start, task_id=task_id)
    return h.success(worker, start + int(seconds * 1000), task_id=task_id).event_id


def test_a_throttled_worker_succeeding_slowly_opens_on_the_slow_call_rate(tmp_path, capsys) -> None:
    h = History()
    timed_success(h, "gpu1", "t1", START, 2)
    last = timed_success(h, "gpu1", "t2", START + 5_000, 12)  # 1 of 2 slow: 50 %
    assert opened(replay(tmp_path, h, SLOW, capsys)) == [("gpu1", "slow_call_rate 1/2 ≥ 50%", last)]


def test_a_success_just_under_the_duration_is_not_slow(tmp_path, capsys) -> None:
    h = History()
    timed_success(h, "gpu1", "t1", START, 2)
    timed_success(h, "gpu1", "t2", START + 5_000, 9.999)
    assert opened(replay(tmp_path, h, SLOW, capsys)) == []


def test_a_success_exactly_at_the_duration_is_slow(tmp_path, capsys) -> None:
    h = History()
    timed_success(h, "gpu1", "t1", START, 2)
    last = timed_success(h, "gpu1", "t2", START + 5_000, 10)
    assert opened(replay(tmp_path, h, SLOW, capsys)) == [("gpu1", "slow_call_rate 1/2 ≥ 50%", last)]


def test_successes_counted_before_the_slow_rule_was_on_are_not_slow(tmp_path, capsys) -> None:
    h = History()
    for n in range(3):  # 30 s each, while only the failure rate is on
        timed_success(h, "gpu1", f"t{n}", START + n * 40_000, 30)
    slow = {"slow_call_duration_s": 10, "slow_call_rate_threshold": 50}
    h.config(START + 200_000, {"circuits": {"worker": slow}})
    timed_success(h, "gpu1", "t3", START + 210_000, 1)
    assert opened(replay(tmp_path, h, RATE, capsys)) == []  # 0 of 4 slow, not 3 of 4


def test_a_success_without_its_start_is_not_slow(tmp_path, capsys) -> None:
    h = History()
    timed_success(h, "gpu1", "t1", START, 2)
    h.started("gpu1", START + 3_000, task_id="t2", attempt=1)  # another attempt's start
    h.success("gpu1", START + 30_000, task_id="t2", attempt=0)
    assert opened(replay(tmp_path, h, SLOW, capsys)) == []


def test_a_success_without_its_start_is_not_slow_even_at_one_millisecond(tmp_path, capsys) -> None:
    config = SLOW.replace("slow_call_duration_s = 10", "slow_call_duration_s = 0.001")
    h = History()
    h.success("gpu1", START, task_id="t1")  # no TASK_STARTED seen for either
    h.success("gpu1", START + 1_000, task_id="t2")
    assert opened(replay(tmp_path, h, config, capsys)) == []


def test_a_circuit_a_success_opened_half_opens_after_its_timeout(tmp_path, capsys) -> None:
    h = History()
    timed_success(h, "gpu1", "t1", START, 2)
    slow = timed_success(h, "gpu1", "t2", START + 5_000, 12)  # opens at START + 17 s
    h.tick(START + 80_000)
    derived = replay(tmp_path, h, SLOW, capsys)
    moves = [(d["to_state"], d["ts"]) for d in derived if d["type"] == "circuit_state_changed"]
    assert moves == [("OPEN", START + 17_000), ("HALF_OPEN", START + 77_000)]
    assert opened(derived)[0][2] == slow


def test_a_guarded_success_opens_nothing_and_still_counts_everywhere(tmp_path, capsys) -> None:
    config = SLOW + "guard_min_workers = 2\nmax_open_fraction = 0.5\n"
    h = History()
    h.heartbeat("w2", START)
    h.operator("FORCE_OPEN", "worker", "w2", START)  # half of the 2 cuda workers open
    timed_success(h, "w1", "t1", START, 2)
    timed_success(h, "w1", "t2", START + 5_000, 12)  # the slow-call rate is met: guarded
    h.tick(START + 20_000)
    derived = replay(tmp_path, h, config, capsys)
    assert opened(derived) == []
    counted = {
        d["circuit_id"]: d["total_successes"] for d in derived if d["type"] == "circuit_figures"
    }
    assert (counted["w1"], counted["cuda"], counted["bert"]) == (2, 2, 2)


def test_slowness_is_measured_on_the_brokers_clock(tmp_path, capsys) -> None:
    h = History()
    timed_success(h, "gpu1", "t1", START, 2)
    h.started("gpu1", START + 5_000, task_id="t2", received_at=START + 5_000)
    # Its own clock says 1 s; the broker saw 20 s pass.
    h.success("gpu1", START + 6_000, task_id="t2", received_at=START + 25_000)
    assert [c for c, _, _ in opened(replay(tmp_path, h, SLOW, capsys))] == ["gpu1"]


# --- outlier workers ------------------------------------------------------------------------

OUTLIER = """
[circuits.worker]
outlier_stdev_factor = 1.9
outlier_interval_s = 60
outlier_minimum_hosts = 5
outlier_request_volume = 10
"""
MINUTE = 60_000
BOUNDARY = (START // MINUTE + 1) * MINUTE  # the first interval boundary after START


def fleet_minute(
    h: History, flaky_failures: int, hosts: int = 6, others: int = 0, flaky: int = 0
) -> None:
    """`hosts` workers with 10 outcomes each, 5 s apart, in the minute before BOUNDARY; the
    `flaky`-th (w0) fails `flaky_failures` of its tasks, every other odd worker `others`
    (task failures: the worker circuits count none)."""
    at = BOUNDARY - MINUTE
    for n in range(10):
        for w in range(hosts):
            worker = f"w{w}"
            failures = flaky_failures if w == flaky else others * (w % 2)
            if n < failures:
                h.failure(worker, at + n * 5_000, "TIMEOUT", task_id=f"{worker}-{n}")
            else:
                h.success(worker, at + n * 5_000, task_id=f"{worker}-{n}")


def test_a_worker_failing_one_task_in_three_is_ejected_at_the_boundary(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=3)
    tick = h.tick(BOUNDARY)
    derived = replay(tmp_path, h, OUTLIER, capsys)
    [(worker, reason, caused_by)] = opened(derived)
    assert (worker, caused_by) == ("w0", tick.event_id)
    assert reason.startswith("outlier: success rate 70.0% below")
    [opening] = [d for d in derived if d["type"] == "circuit_state_changed"]
    assert opening["ts"] == BOUNDARY
    assert opened(replay(tmp_path, h, "", capsys)) == []  # the seed's rule alone: never


def test_the_worst_worker_is_ejected_wherever_its_id_sorts(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=3, flaky=5)  # w5, the last by id
    h.tick(BOUNDARY)
    assert [c for c, _, _ in opened(replay(tmp_path, h, OUTLIER, capsys))] == ["w5"]


def test_an_outlier_needs_the_minimum_hosts_and_volume(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=3, hosts=5)
    h.tick(BOUNDARY)
    assert [c for c, _, _ in opened(replay(tmp_path, h, OUTLIER, capsys))] == ["w0"]
    config = OUTLIER.replace("outlier_minimum_hosts = 5", "outlier_minimum_hosts = 6")
    assert opened(replay(tmp_path, h, config, capsys)) == []
    config = OUTLIER.replace("outlier_request_volume = 10", "outlier_request_volume = 11")
    assert opened(replay(tmp_path, h, config, capsys)) == []


def test_outlier_counts_restart_at_every_boundary(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=3)
    h.operator("FORCE_OPEN", "worker", "w0", BOUNDARY - 1)  # not CLOSED: not ejected
    h.operator("RESET", "worker", "w0", BOUNDARY + 1)
    h.tick(BOUNDARY + MINUTE)  # the next interval had no outcomes
    assert opened(replay(tmp_path, h, OUTLIER, capsys)) == []


def test_a_mild_spread_ejects_no_one(tmp_path, capsys) -> None:
    h = History()
    # 80 % among 90 % and 100 %: within 1.9 stdev of the mean. (One worker apart from
    # identical others is always sqrt(n - 1) stdev below: that one is ejected, however mild.)
    fleet_minute(h, flaky_failures=2, others=1)
    h.tick(BOUNDARY)
    derived = replay(tmp_path, h, OUTLIER, capsys)
    assert opened(derived) == []


# --- adaptive ladders -----------------------------------------------------------------------

ADAPTIVE = """
[recovery]
adaptive = true
adaptive_min_samples = 2
"""
OOM = {"batch_size": "8", "precision": "fp32"}


def first_rung_never_works(h: History, tasks: int, ts: int) -> None:
    """RESOURCE_EXHAUSTION on cuda: the smaller batch fails again, the lower precision works."""
    for t in range(tasks):
        at, task = ts + t * 10_000, f"train-{t}"
        h.failure("g1", at, "RESOURCE_EXHAUSTION", task_id=task, attributes=OOM)
        h.failure("g1", at + 1_000, "RESOURCE_EXHAUSTION", task_id=task, attempt=1,
                  attributes=OOM)  # fmt: skip
        h.success("g1", at + 2_000, task_id=task, attempt=2)


def last_command(derived: list[dict[str, Any]]) -> dict[str, Any]:
    return [d for d in derived if d["type"] == "recovery_command"][-1]


def test_the_ladder_learns_that_its_first_rung_never_works_here(tmp_path, capsys) -> None:
    h = History()
    first_rung_never_works(h, tasks=2, ts=START)
    h.failure("g1", START + 60_000, "RESOURCE_EXHAUSTION", task_id="next", attributes=OOM)
    command = last_command(replay(tmp_path, h, ADAPTIVE, capsys))
    assert command["strategy"] == "REDUCED_PRECISION"
    assert command["reason"] == (
        "adaptive: REDUCED_BATCH_SIZE 0/2, REDUCED_PRECISION 2/2, FALLBACK_CPU 0/0 "
        "-> REDUCED_PRECISION; RESOURCE_EXHAUSTION ladder rung 1"
    )
    static = last_command(replay(tmp_path, h, "", capsys))
    assert (static["strategy"], static["reason"]) == (
        "REDUCED_BATCH_SIZE",
        "RESOURCE_EXHAUSTION ladder rung 0",
    )


def test_the_static_rung_is_explored_until_it_has_the_minimum(tmp_path, capsys) -> None:
    h = History()
    first_rung_never_works(h, tasks=2, ts=START)
    h.failure("g1", START + 60_000, "RESOURCE_EXHAUSTION", task_id="next", attributes=OOM)
    config = ADAPTIVE.replace("= 2", "= 3")
    command = last_command(replay(tmp_path, h, config, capsys))
    assert (command["strategy"], "adaptive" in command["reason"]) == ("REDUCED_BATCH_SIZE", False)


def test_learning_is_per_hardware_class(tmp_path, capsys) -> None:
    h = History()
    first_rung_never_works(h, tasks=2, ts=START)
    h.failure("r1", START + 60_000, "RESOURCE_EXHAUSTION", task_id="next", attributes=OOM,
              hardware_class="rocm")  # fmt: skip
    command = last_command(replay(tmp_path, h, ADAPTIVE, capsys))
    assert (command["strategy"], "adaptive" in command["reason"]) == ("REDUCED_BATCH_SIZE", False)


def test_a_working_static_rung_is_kept_and_said_so(tmp_path, capsys) -> None:
    h = History()
    for t in range(2):  # the smaller batch works
        h.failure("g1", START + t * 10_000, "RESOURCE_EXHAUSTION", task_id=f"t{t}",
                  attributes=OOM)  # fmt: skip
        h.success("g1", START + t * 10_000 + 1_000, task_id=f"t{t}", attempt=1)
    h.failure("g1", START + 60_000, "RESOURCE_EXHAUSTION", task_id="next", attributes=OOM)
    command = last_command(replay(tmp_path, h, ADAPTIVE, capsys))
    assert command["strategy"] == "REDUCED_BATCH_SIZE"
    assert command["reason"].startswith("adaptive: REDUCED_BATCH_SIZE 2/2, ")
    assert "-> REDUCED_BATCH_SIZE; RESOURCE_EXHAUSTION ladder rung 0" in command["reason"]


@pytest.mark.parametrize(
    "setting",
    [
        "[circuits.worker]\nfailure_rate_threshold = 101",
        "[circuits.worker]\nslow_call_rate_threshold = 0",
        "[circuits.worker]\nfailure_rate_threshold = 50\nsliding_window_size = 10",
        "[circuits.worker]\nsliding_window_size = 2.5",
        "[circuits.worker]\noutlier_stdev_factor = -1",
        "[recovery]\nadaptive_min_samples = 0",
        "[alerts]\nclass_capacity_below = 120",
    ],
)
def test_settings_out_of_range_are_refused_naming_the_setting(tmp_path, capsys, setting) -> None:
    h = History()
    h.heartbeat("w1", START)
    history, settings = tmp_path / "history.jsonl", tmp_path / "faultstream.toml"
    history.write_text(h.records[0].model_dump_json() + "\n")
    settings.write_text(setting)
    assert main(["replay", "--input", str(history), "--config", str(settings)]) != 0
    name = setting.split("\n")[-1].split(" = ")[0]
    assert name in capsys.readouterr().err


# --- load-balanced targets and alerts, through replay too -------------------------------------


def test_moves_spread_over_idle_workers_instead_of_piling_on_the_first(tmp_path, capsys) -> None:
    h = History()
    for worker in ("cpu-01", "cpu-02", "cpu-03"):
        h.heartbeat(worker, START, hardware_class="cpu")
    for i in range(6):
        h.failure("w1", START + i, "WORKER_CRASH", task_id=f"t{i}", hardware_class="cpu")
    targets = [
        d["target_worker_id"]
        for d in replay(tmp_path, h, "", capsys)
        if d["type"] == "recovery_command"
    ]
    assert targets == ["cpu-01", "cpu-02", "cpu-03"] * 2


def test_an_alert_rule_set_in_the_configuration_file(tmp_path, capsys) -> None:
    h = History()
    h.heartbeat("w1", START)
    h.operator("FORCE_OPEN", "worker", "w1", START + 1)
    h.tick(START + 61_000)
    config = "[alerts]\nopen_longer_than_s = 60\nclass_capacity_below = 0\nfleet_health_below = 0\n"
    alerts = [
        (d["rule"], d["subject_kind"], d["subject_id"], d["ts"])
        for d in replay(tmp_path, h, config, capsys)
        if d["type"] == "alert"
    ]
    assert alerts == [("open_longer_than_s", "worker", "w1", START + 60_001)]


def test_commands_whose_task_never_ran_again_are_forgotten_oldest_first(monkeypatch) -> None:
    from faultstream.processors.core import FleetCore, fleet

    monkeypatch.setattr(fleet, "AWAITED_COMMANDS", 2)
    h = History()
    for task in ("t1", "t2", "t3"):  # three commands await their attempt 1
        h.failure("g1", START, "TIMEOUT", task_id=task)
    for task in ("t1", "t2", "t3"):
        h.success("g1", START + 1_000, task_id=task, attempt=1)
    core = FleetCore()
    for record in h.records:
        core.process(record)
    # t1's command was forgotten: only t2's and t3's outcomes became trials.
    assert core._learned == {("TIMEOUT", "cuda", "IMMEDIATE_RETRY"): [2, 2]}


def test_a_newer_command_for_the_same_attempt_is_the_last_forgotten(monkeypatch) -> None:
    from faultstream.processors.core import FleetCore, fleet

    monkeypatch.setattr(fleet, "AWAITED_COMMANDS", 2)
    h = History()
    h.failure("g1", START, "TIMEOUT", task_id="t1")
    h.failure("g1", START, "TIMEOUT", task_id="t2")
    h.failure("g1", START + 1, "TIMEOUT", task_id="t1")  # t1 planned again: now the newest
    h.failure("g1", START + 2, "TIMEOUT", task_id="t3")  # one too many: t2 is forgotten
    h.success("g1", START + 1_000, task_id="t1", attempt=1)
    h.failure("g1", START + 1_000, "TIMEOUT", task_id="t2", attempt=1)
    core = FleetCore()
    for record in h.records:
        core.process(record)
    assert core._learned == {("TIMEOUT", "cuda", "IMMEDIATE_RETRY"): [1, 1]}  # t1's only


# --- the windows' counts, edge by edge (each written to fail when that detail alone breaks) ---


def mixed(h: History, worker: str, pattern: str, ts: int, step_ms: int = 1_000) -> list[str]:
    """One outcome every `step_ms` from `ts`: S a quick success, s a success that took over
    20 s (its start is sent first), F a WORKER_CRASH, . nothing; their event ids."""
    for i, outcome in enumerate(pattern):
        if outcome == "s":
            h.started(worker, ts - 20_000, task_id=f"{worker}-{i}")
    ids = []
    for i, outcome in enumerate(pattern):
        at, task = ts + i * step_ms, f"{worker}-{i}"
        if outcome == "F":
            ids.append(h.failure(worker, at, "WORKER_CRASH", task_id=task).event_id)
        elif outcome in "Ss":
            ids.append(h.success(worker, at, task_id=task).event_id)
    return ids


SLOW_COUNT = """
[circuits.worker]
slow_call_duration_s = 10
slow_call_rate_threshold = 50
sliding_window_size = 4
minimum_number_of_calls = 4
"""
TIME = 'sliding_window_type = "time"\nsliding_window_size = 3\nminimum_number_of_calls = 3\n'
TIME_RATE = "[circuits.worker]\nfailure_rate_threshold = 50\n" + TIME
TIME_SLOW = "[circuits.worker]\nslow_call_duration_s = 10\nslow_call_rate_threshold = 50\n" + TIME


def test_a_count_window_forgets_exactly_one_failure_per_eviction(tmp_path, capsys) -> None:
    h = History()
    # F S S S | F evicts the F (1 of 4) | S | F: S F S F, 2 of 4 at the last and not before.
    ids = outcomes(h, "w1", "FSSSFSF", START)
    assert opened(replay(tmp_path, h, RATE, capsys)) == [
        ("w1", "WORKER_CRASH; failure_rate 2/4 ≥ 50%", ids[6])
    ]


def test_a_count_window_forgets_exactly_one_slow_call_per_eviction(tmp_path, capsys) -> None:
    h = History()
    ids = mixed(h, "w1", "sSSSsSs", START + 60_000)  # S s S s at the last: 2 of 4
    assert opened(replay(tmp_path, h, SLOW_COUNT, capsys)) == [
        ("w1", "slow_call_rate 2/4 ≥ 50%", ids[6])
    ]
    h = History()
    mixed(h, "w1", "sSSSSSs", START + 60_000)  # the first s is gone: S S S s, 1 of 4
    assert opened(replay(tmp_path, h, SLOW_COUNT, capsys)) == []


def test_a_time_window_forgets_exactly_the_failures_that_age_out(tmp_path, capsys) -> None:
    h = History()
    outcomes(h, "w1", "FSSSSF", START)  # the 3-s window holds S S F at the last: 1 of 3
    assert opened(replay(tmp_path, h, TIME_RATE, capsys)) == []
    h = History()
    ids = outcomes(h, "w1", "FSSFSF", START)  # F S F at the last: 2 of 3, never before
    assert opened(replay(tmp_path, h, TIME_RATE, capsys)) == [
        ("w1", "WORKER_CRASH; failure_rate 2/3 ≥ 50%", ids[5])
    ]


def test_a_time_window_forgets_exactly_the_slow_calls_that_age_out(tmp_path, capsys) -> None:
    h = History()
    mixed(h, "w1", "sSSSSs", START + 60_000)  # S S s at the last: 1 of 3
    assert opened(replay(tmp_path, h, TIME_SLOW, capsys)) == []
    h = History()
    ids = mixed(h, "w1", "SsSs", START + 60_000)  # a quick success ages out: s S s, 2 of 3
    assert opened(replay(tmp_path, h, TIME_SLOW, capsys)) == [
        ("w1", "slow_call_rate 2/3 ≥ 50%", ids[3])
    ]
    h = History()
    ids = mixed(h, "w1", "sSSsSs", START + 60_000)  # s S s at the last, never before
    assert opened(replay(tmp_path, h, TIME_SLOW, capsys)) == [
        ("w1", "slow_call_rate 2/3 ≥ 50%", ids[5])
    ]


BOTH = """
[circuits.worker]
failure_rate_threshold = {failure}
slow_call_duration_s = 10
slow_call_rate_threshold = {slow}
sliding_window_size = 3
minimum_number_of_calls = 3
"""


@pytest.mark.parametrize(
    ("failure", "slow", "pattern", "reason"),
    [
        # 2 of 3 is 66.7 %: below 67 %, named only for the rule it meets
        (67, 33, "FFs", "slow_call_rate 1/3 ≥ 33%"),
        (33, 67, "Fss", "failure_rate 1/3 ≥ 33%"),
        (50, 30, "FsF", "WORKER_CRASH; failure_rate 2/3 ≥ 50%; slow_call_rate 1/3 ≥ 30%"),
    ],
)
def test_each_rate_is_named_only_when_met_to_the_percent(
    tmp_path, capsys, failure, slow, pattern, reason
) -> None:
    h = History()
    ids = mixed(h, "w1", pattern, START + 60_000)
    config = BOTH.format(failure=failure, slow=slow)
    assert opened(replay(tmp_path, h, config, capsys)) == [("w1", reason, ids[2])]


def test_a_one_percent_rate_and_a_one_millisecond_slow_call_are_rules_too(tmp_path, capsys) -> None:
    h = History()
    ids = outcomes(h, "w1", "SSSF", START)
    config = RATE.replace("= 50", "= 1")
    assert opened(replay(tmp_path, h, config, capsys)) == [
        ("w1", "WORKER_CRASH; failure_rate 1/4 ≥ 1%", ids[3])
    ]
    h = History()
    timed_success(h, "gpu1", "t1", START, 0)
    last = timed_success(h, "gpu1", "t2", START + 5_000, 0.005)
    config = SLOW.replace("slow_call_duration_s = 10", "slow_call_duration_s = 0.001")
    assert opened(replay(tmp_path, h, config, capsys)) == [
        ("gpu1", "slow_call_rate 1/2 ≥ 50%", last)
    ]


# The fleet guard asks whether one more failure would meet a window rule before counting it:
# w2 is forced open, so half the cuda class is out and a "yes" sends w1's failure to the class.
GUARD = "guard_min_workers = 2\nmax_open_fraction = 0.5\n"


def guarded(derived: list[dict[str, Any]]) -> list[bool]:
    """For each command, whether the fleet guard counted its failure on the class."""
    return ["fleet_guard" in d["reason"] for d in derived if d["type"] == "recovery_command"]


@pytest.mark.parametrize(
    ("config", "pattern", "step_ms", "expected"),
    [
        # count window of 4, minimum 4
        (RATE, "F", 1_000, [False]),  # 1 call: below the minimum, whatever the rate
        (RATE, "SSSFF", 1_000, [False, True]),  # S S F F once the first S leaves: 2 of 4
        (RATE.replace("= 50", "= 60"), "FSSSF", 1_000, [False, False]),  # the F leaves: 1 of 4
        (RATE.replace("= 50", "= 60"), "SFFSF", 1_000, [False, False, True]),  # F F S F: 3 of 4
        # time window of 3 s, minimum 3
        (TIME_RATE.replace("= 50", "= 60"), "SFSF", 1_000, [False, True]),  # F S F: 2 of 3
        (TIME_RATE.replace("= 50", "= 60"), "S.S.FS..F", 500, [False, True]),  # two age out
        # the slow-call rule: a failure can complete the minimum (or age quick successes out)
        (SLOW_COUNT.replace("= 4", "= 3"), "ssF", 1_000, [True]),  # s s F: 2 of 3 slow
        (SLOW_COUNT.replace("= 4", "= 3"), "sSSF", 1_000, [False]),  # the s leaves: 0 of 3
        (TIME_SLOW.replace("calls = 3", "calls = 2"), "SSs.F", 1_000, [True]),  # s F: 1 of 2
    ],
)
def test_the_guard_question_counts_the_window_the_failure_would_make(
    tmp_path, capsys, config, pattern, step_ms, expected
) -> None:
    h = History()
    h.heartbeat("w2", START)
    h.operator("FORCE_OPEN", "worker", "w2", START)
    mixed(h, "w1", pattern, START + 21_000, step_ms)  # slow starts at +1 s; w2 stays live
    assert guarded(replay(tmp_path, h, config + GUARD, capsys)) == expected


def test_an_adaptive_ladder_with_no_rung_left_escalates_naming_it(tmp_path, capsys) -> None:
    h = History()
    h.failure("g1", START, "PERSISTENT_ERROR", task_id="t1", attempt=1)  # its ladder: 1 rung
    command = last_command(replay(tmp_path, h, ADAPTIVE, capsys))
    assert (command["strategy"], command["reason"]) == (
        "ESCALATION",
        "PERSISTENT_ERROR ladder exhausted at attempt 1",
    )


def test_the_outlier_limit_is_the_mean_less_factor_population_stdevs(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=3)  # 70 % among five at 100 %: mean 95 %, stdev 11.2 %
    h.tick(BOUNDARY)
    [(_, reason, _)] = opened(replay(tmp_path, h, OUTLIER, capsys))
    assert reason == "outlier: success rate 70.0% below 73.8% (mean 95.0% of 6 cuda workers)"


def eight_hosts_two_flaky(h: History) -> None:
    """w0 fails 5 of its 10 tasks, w1 4, w2-w7 none, in the minute before BOUNDARY."""
    at = BOUNDARY - MINUTE
    for n in range(10):
        for w in range(8):
            worker = f"w{w}"
            if n < {0: 5, 1: 4}.get(w, 0):
                h.failure(worker, at + n * 5_000, "TIMEOUT", task_id=f"{worker}-{n}")
            else:
                h.success(worker, at + n * 5_000, task_id=f"{worker}-{n}")


def test_outliers_are_ejected_worst_first_and_one_not_closed_shields_no_other(
    tmp_path, capsys
) -> None:
    config = OUTLIER.replace("= 1.9", "= 1.0")  # limit 69.1 %: w0 at 50 %, w1 at 60 %
    h = History()
    eight_hosts_two_flaky(h)
    h.tick(BOUNDARY)
    assert [c for c, _, _ in opened(replay(tmp_path, h, config, capsys))] == ["w0", "w1"]
    h = History()
    eight_hosts_two_flaky(h)
    h.operator("FORCE_OPEN", "worker", "w0", BOUNDARY - 1)  # still in the sample
    h.tick(BOUNDARY)
    [(worker, reason, _)] = opened(replay(tmp_path, h, config, capsys))
    assert (worker, reason) == (
        "w1",
        "outlier: success rate 60.0% below 69.1% (mean 88.8% of 8 cuda workers)",
    )


def test_the_fleet_guard_holds_back_an_outlier_ejection(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=3)
    for worker in ("w1", "w2", "w3"):  # half the class open: ejecting w0 would leave 2 of 6
        h.operator("FORCE_OPEN", "worker", worker, BOUNDARY - 1)
    h.tick(BOUNDARY)
    assert opened(replay(tmp_path, h, OUTLIER + "guard_min_workers = 4\n", capsys)) == []


def class_minute(h: History, prefix: str, hardware_class: str, failures: list[int], at: int):
    """Workers `prefix`0, 1, … of `hardware_class` with 10 outcomes each, 5 s apart from
    `at`; worker i fails the first failures[i] of its tasks."""
    for n in range(10):
        for w, failed in enumerate(failures):
            worker, task = f"{prefix}{w}", f"{prefix}{w}-{n}-{at}"
            if n < failed:
                h.failure(worker, at + n * 5_000, "TIMEOUT", task_id=task,
                          hardware_class=hardware_class)  # fmt: skip
            else:
                h.success(worker, at + n * 5_000, task_id=task, hardware_class=hardware_class)


def test_a_fleet_failing_alike_ejects_no_one(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=0)  # all at 100 %: every rate equals the limit
    h.tick(BOUNDARY)
    assert opened(replay(tmp_path, h, OUTLIER, capsys)) == []


def test_every_hardware_class_is_judged_on_its_own(tmp_path, capsys) -> None:
    h = History()
    class_minute(h, "c", "cpu", [0], BOUNDARY - MINUTE)  # cpu: one host, too few
    fleet_minute(h, flaky_failures=3)
    h.tick(BOUNDARY)
    assert [c for c, _, _ in opened(replay(tmp_path, h, OUTLIER, capsys))] == ["w0"]
    h = History()
    class_minute(h, "c", "cpu", [3, 0, 0, 0, 0, 0], BOUNDARY - MINUTE)
    fleet_minute(h, flaky_failures=3)
    h.tick(BOUNDARY)
    assert [c for c, _, _ in opened(replay(tmp_path, h, OUTLIER, capsys))] == ["c0", "w0"]


def test_each_interval_is_judged_on_its_own_outcomes(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=0)  # a clean minute: judged, no one ejected
    class_minute(h, "w", "cuda", [3, 0, 0, 0, 0, 0], BOUNDARY)  # the next one: w0 at 70 %
    tick = h.tick(BOUNDARY + MINUTE)
    assert opened(replay(tmp_path, h, OUTLIER, capsys)) == [
        (
            "w0",
            "outlier: success rate 70.0% below 73.8% (mean 95.0% of 6 cuda workers)",
            tick.event_id,
        )
    ]


def test_a_new_interval_drops_the_boundary_of_the_old_one(tmp_path, capsys) -> None:
    config = OUTLIER + "\n[recovery]\nheartbeat_timeout_s = 300\n"
    h = History()
    h.heartbeat("w0", START)  # the rule's first boundary: START + 60 s
    h.config(START + 1, {"circuits": {"worker": {"outlier_interval_s": 120}}})
    # From +30 s to +75 s: across the old boundary, within the new interval.
    class_minute(h, "w", "cuda", [3, 0, 0, 0, 0, 0], START + 30_000)
    tick = h.tick(START + 120_000)
    assert opened(replay(tmp_path, h, config, capsys)) == [
        (
            "w0",
            "outlier: success rate 70.0% below 73.8% (mean 95.0% of 6 cuda workers)",
            tick.event_id,
        )
    ]


OUTLIER_ON = {
    "outlier_stdev_factor": 1.0,
    "outlier_interval_s": 60,
    "outlier_minimum_hosts": 5,
    "outlier_request_volume": 10,
}


def test_outlier_ejection_switched_on_at_run_time_judges_from_the_next_boundary(
    tmp_path, capsys
) -> None:
    h = History()
    h.heartbeat("w0", START)
    h.config(START + 1, {"circuits": {"worker": OUTLIER_ON}})  # off until now
    fleet_minute(h, flaky_failures=3)
    tick = h.tick(BOUNDARY)
    assert [(c, by) for c, _, by in opened(replay(tmp_path, h, "", capsys))] == [
        ("w0", tick.event_id)
    ]


@pytest.mark.parametrize(
    ("factor", "change"),
    [
        (1.9, {"outlier_stdev_factor": 0}),
        (1.0, {"outlier_stdev_factor": 0}),  # a factor of 1 was on too
        (1.9, {"outlier_stdev_factor": 0, "outlier_interval_s": 30}),  # off, whatever else
    ],
)
def test_outlier_ejection_switched_off_before_its_boundary_ejects_no_one(
    tmp_path, capsys, factor, change
) -> None:
    h = History()
    fleet_minute(h, flaky_failures=3)
    h.config(BOUNDARY - 1, {"circuits": {"worker": change}})
    h.tick(BOUNDARY)
    config = OUTLIER.replace("= 1.9", f"= {factor}")
    assert opened(replay(tmp_path, h, config, capsys)) == []


def test_a_new_factor_keeps_the_interval_and_its_counts(tmp_path, capsys) -> None:
    h = History()
    fleet_minute(h, flaky_failures=3)
    h.config(BOUNDARY - 1, {"circuits": {"worker": {"outlier_stdev_factor": 1.8}}})
    h.tick(BOUNDARY)
    assert [reason for _, reason, _ in opened(replay(tmp_path, h, OUTLIER, capsys))] == [
        "outlier: success rate 70.0% below 74.9% (mean 95.0% of 6 cuda workers)"
    ]


def test_outlier_counts_start_from_nothing_when_switched_back_on(tmp_path, capsys) -> None:
    h = History()
    h.heartbeat("w0", START)
    h.config(START + 1, {"circuits": {"worker": {"outlier_stdev_factor": 0}}})
    h.config(START + 2, {"circuits": {"worker": {"outlier_stdev_factor": 1.9}}})
    fleet_minute(h, flaky_failures=3)
    h.tick(BOUNDARY)
    assert [reason for _, reason, _ in opened(replay(tmp_path, h, OUTLIER, capsys))] == [
        "outlier: success rate 70.0% below 73.8% (mean 95.0% of 6 cuda workers)"
    ]


def test_a_boundary_is_judged_before_anything_else_due_that_millisecond(tmp_path, capsys) -> None:
    h = History()
    outcomes = [
        (BOUNDARY - MINUTE + n * 5_000, f"w{w}", False) for n in range(10) for w in range(5)
    ]
    # A0 (its id sorts before every w) fails 3 of 10, the last 30 s before the boundary:
    # it is lost at the boundary's very millisecond, but was live for its interval.
    outcomes += [(BOUNDARY - 57_000 + n * 3_000, "A0", n < 3) for n in range(10)]
    for i, (at, worker, failed) in enumerate(sorted(outcomes)):
        if failed:
            h.failure(worker, at, "TIMEOUT", task_id=f"t{i}")
        else:
            h.success(worker, at, task_id=f"t{i}")
    tick = h.tick(BOUNDARY + 1)
    assert [
        (c, r.split(" below")[0], by) for c, r, by in opened(replay(tmp_path, h, OUTLIER, capsys))
    ] == [("A0", "outlier: success rate 70.0%", tick.event_id)]
