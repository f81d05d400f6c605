"""The tuner: grid parsing, the scoring function, guard rails, and its agreement with
plain per-configuration runs of the core (the specification)."""

from __future__ import annotations

import pytest
from histories import History, core_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultstream.cli import main
from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import InputRecord
from faultstream.processors.core import FleetCore
from faultstream.processors.offline.tune import (
    TunePolicy,
    Weights,
    expand_grid,
    nested,
    parse_bounds,
    parse_grid,
    run_grid,
    score_history,
    tune_every,
    tune_round,
)

FAST = core_settings(
    circuits={
        "worker": {"failure_threshold": 2, "recovery_timeout_s": 5, "guard_min_workers": 3},
        "hardware_class": {"failure_threshold": 2, "recovery_timeout_s": 7},
        "task_type": {"failure_threshold": 3, "recovery_timeout_s": 11},
    },
    recovery={"heartbeat_timeout_s": 4},
)
GRID = parse_grid(
    [
        "worker.failure_threshold=1,2,4",
        "worker.recovery_timeout_s=2,9",
        "task_type.failure_threshold=2,5",
    ]
)


def run_core(records: list[InputRecord], settings: CoreSettings) -> list:
    core = FleetCore(settings)
    return [out for record in records for out in core.process(record)]


# --- randomized histories, built with tests/histories.py ---------------------------------

step = st.tuples(
    st.sampled_from(["heartbeat", "started", "success", "failure", "failure", "tick"]),
    st.sampled_from(["w1", "w2", "w3", "w4"]),
    st.integers(0, 4_000),  # ts step
    st.sampled_from(["WORKER_CRASH", "HARDWARE_ERROR", "TIMEOUT", None]),
    st.sampled_from(["bert", "resnet"]),
)


def build(steps: list[tuple]) -> list[InputRecord]:
    history = History()
    ts = 1_000
    for kind, worker, delta, failure_type, task_type in steps:
        ts += delta
        if kind == "tick":
            history.tick(ts)
        elif kind == "heartbeat":
            history.heartbeat(worker, ts)
        elif kind == "failure":
            message = "CUDA out of memory" if failure_type is None else None
            history.failure(worker, ts, failure_type, task_type=task_type, message=message)
        else:
            getattr(history, kind)(worker, ts, task_type=task_type)
    return history.records


histories = st.lists(step, min_size=1, max_size=150).map(build)
checks = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@checks
@given(histories, st.sampled_from([1, 2]))
def test_tuner_scores_equal_a_plain_core_run_per_configuration(
    records: list[InputRecord], processes: int
) -> None:
    candidates, _ = expand_grid(GRID, FAST)
    results = run_grid(records, candidates, processes=processes)
    assert len(results) == len(candidates)
    for result in results:
        settings_ = result.candidate.settings
        expected = score_history(records, run_core(records, settings_), settings_)
        assert result.score == expected
        assert result.total == expected.total(Weights())
    totals = [r.total for r in results]
    assert totals == sorted(totals, reverse=True)


# --- the scoring function -----------------------------------------------------------------


def test_failures_and_successes_while_open_count_as_protected_and_withheld() -> None:
    h = History()
    h.failure("w1", 1_000, "WORKER_CRASH")
    h.failure("w1", 2_000, "WORKER_CRASH")  # opens worker:w1 (threshold 2)
    h.failure("w1", 3_000, "WORKER_CRASH")  # lands while open: protected
    h.success("w1", 4_000)  # refused capacity while open: withheld
    h.tick(7_500)  # half-open at 7 000 (timeout 5 s), before w1 is lost at 8 000
    score = score_history(h.records, run_core(h.records, FAST), FAST)
    assert score.protected == 1
    assert score.withheld == 1
    assert score.openings == 1
    assert score.detection_delay_s == 1.0  # first failure of the streak at 1 000, open at 2 000
    assert score.open_time_s == 5.0
    assert score.flapping == 0


def test_failure_in_half_open_counts_as_flapping() -> None:
    h = History()
    h.failure("w1", 1_000, "WORKER_CRASH")
    h.failure("w1", 2_000, "WORKER_CRASH")
    h.failure("w1", 8_000, "WORKER_CRASH")  # half-open at 7 000, then re-opens
    score = score_history(h.records, run_core(h.records, FAST), FAST)
    assert score.openings == 2
    assert score.flapping == 1


def test_repeated_event_counts_once_in_the_score() -> None:
    h = History()
    h.failure("w1", 1_000, "WORKER_CRASH")
    h.failure("w1", 2_000, "WORKER_CRASH")
    again = h.failure("w1", 3_000, "WORKER_CRASH")
    h.records.append(again)
    score = score_history(h.records, run_core(h.records, FAST), FAST)
    assert score.protected == 1


def test_weights_parse_names_and_reject_unknown_ones() -> None:
    assert Weights.parse("protection=2, flapping=0.5") == Weights(protection=2, flapping=0.5)
    with pytest.raises(ConfigError, match="--weights"):
        Weights.parse("speed=3")


# --- the grid -----------------------------------------------------------------------------


def test_grid_short_names_map_to_circuit_settings() -> None:
    assert nested({"worker.failure_threshold": 3, "recovery.max_retries": 1}) == {
        "circuits": {"worker": {"failure_threshold": 3}},
        "recovery": {"max_retries": 1},
    }


def test_unknown_grid_setting_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"worker\.failure_treshold"):
        parse_grid(["worker.failure_treshold=1,2"])


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e999"])
def test_non_finite_grid_values_are_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match=rf"--grid worker\.recovery_timeout_s: '{value}'.*finite"):
        parse_grid([f"worker.recovery_timeout_s=5,{value}"])


def test_a_non_finite_value_never_becomes_a_candidate() -> None:
    grid = {"worker.recovery_timeout_s": [5, float("inf"), float("nan")]}  # built by hand
    candidates, rejected = expand_grid(grid, CoreSettings())
    assert [c.changes["worker.recovery_timeout_s"] for c in candidates] == [5]
    assert len(rejected) == 2 and all("finite" in r.reason for r in rejected)


def test_grid_over_the_configuration_limit_is_refused_saying_how_many() -> None:
    axis = ",".join(str(v) for v in range(1, 101))
    items = [f"worker.failure_threshold={axis}", f"task_type.failure_threshold={axis}"]
    assert len(parse_grid(items)["worker.failure_threshold"]) == 100  # 10,000: at the limit
    with pytest.raises(
        ConfigError, match=r"20,000 configurations, more than the 10,000.*--max-configs"
    ):
        parse_grid([*items, "worker.success_threshold=1,2"])
    assert len(parse_grid([*items, "worker.success_threshold=1,2"], max_configs=20_000)) == 3


def test_two_million_configurations_are_refused_when_the_grid_is_parsed() -> None:
    axis = ",".join(str(v) for v in range(1, 1_001))
    with pytest.raises(ConfigError, match=r"--grid: 2,000,000 configurations"):
        parse_grid(
            [
                f"worker.failure_threshold={axis}",
                f"task_type.failure_threshold={axis}",
                "recovery.max_retries=1,2",
            ]
        )


def test_cli_default_limit_is_the_grids() -> None:
    from faultstream.cli import tune as tune_cli
    from faultstream.processors.offline.tune.grid import DEFAULT_MAX_CONFIGS

    assert tune_cli.DEFAULT_MAX_CONFIGS == DEFAULT_MAX_CONFIGS


@pytest.mark.parametrize("weight", ["nan", "inf"])
def test_non_finite_weights_are_refused(weight: str) -> None:
    with pytest.raises(ConfigError, match=r"--weights 'protection=.*finite"):
        Weights.parse(f"protection={weight}")


@pytest.mark.parametrize("bound", ["nan..5", "1..nan", "9..2"])
def test_a_bound_that_holds_nothing_is_refused(bound: str) -> None:
    with pytest.raises(ConfigError, match=r"--bound .*LOW <= HIGH"):
        parse_bounds([f"worker.failure_threshold={bound}"])


def test_an_infinite_bound_leaves_that_side_open() -> None:
    assert parse_bounds(["worker.failure_threshold=2..inf"]) == {
        "worker.failure_threshold": (2.0, float("inf"))
    }


def test_half_open_calls_below_success_threshold_are_reported_and_skipped() -> None:
    grid = parse_grid(["worker.success_threshold=2,4", "worker.half_open_max_calls=3"])
    candidates, rejected = expand_grid(grid, CoreSettings())
    assert [c.changes["worker.success_threshold"] for c in candidates] == [2]
    assert len(rejected) == 1
    assert "half_open_max_calls (3) must be at least success_threshold (4)" in rejected[0].reason


def test_values_outside_a_bound_are_skipped() -> None:
    grid = parse_grid(["worker.failure_threshold=1,5,30"])
    candidates, rejected = expand_grid(grid, CoreSettings(), {"worker.failure_threshold": (2, 20)})
    assert [c.changes["worker.failure_threshold"] for c in candidates] == [5]
    assert len(rejected) == 2


# --- rounds and guard rails ---------------------------------------------------------------


def flaky_history(n_failures: int = 12) -> list[InputRecord]:
    """w1 crashes every 3 s and never recovers; the others succeed."""
    h = History()
    for i in range(n_failures):
        h.failure("w1", 1_000 + 3_000 * i, "WORKER_CRASH")
        h.success("w2", 1_500 + 3_000 * i)
    return h.records


def test_round_proposes_the_winning_changes_only() -> None:
    policy = TunePolicy(grid=parse_grid(["worker.failure_threshold=2,50"]), min_events=1)
    outcome = tune_round(flaky_history(), CoreSettings(), policy)
    assert outcome.best.candidate.changes == {"worker.failure_threshold": 2}
    assert outcome.proposal == {"circuits": {"worker": {"failure_threshold": 2}}}


def test_small_history_proposes_nothing() -> None:
    policy = TunePolicy(grid=parse_grid(["worker.failure_threshold=2,50"]), min_events=1_000)
    outcome = tune_round(flaky_history(), CoreSettings(), policy)
    assert outcome.proposal is None
    assert "too small" in outcome.reason


def test_improvement_below_the_minimum_proposes_nothing() -> None:
    policy = TunePolicy(
        grid=parse_grid(["worker.failure_threshold=2,50"]), min_events=1, min_improvement=1e9
    )
    outcome = tune_round(flaky_history(), CoreSettings(), policy)
    assert outcome.proposal is None
    assert "below the minimum" in outcome.reason


def test_settings_changed_by_tune_in_history_are_the_current_ones() -> None:
    records = flaky_history()
    h = History()
    h._next = 1_000
    h.config(500, {"circuits": {"worker": {"failure_threshold": 2}}})
    history = h.records + records
    policy = TunePolicy(grid=parse_grid(["worker.failure_threshold=2,50"]), min_events=1)
    outcome = tune_round(history, CoreSettings(), policy)
    assert outcome.current.candidate.changes == {"worker.failure_threshold": 2}
    assert outcome.proposal is None


def test_at_most_one_tune_change_per_period() -> None:
    records = flaky_history()
    h = History()
    h._next = 1_000
    change = h.config(30_000, {"recovery": {"max_retries": 3}})
    history = [*records, change.model_copy(update={"actor": "tune"})]
    policy = TunePolicy(
        grid=parse_grid(["worker.failure_threshold=2,50"]), min_events=1, period_ms=3_600_000
    )
    outcome = tune_round(history, CoreSettings(), policy)
    assert outcome.proposal is None
    assert "this period" in outcome.reason


def test_every_loop_applies_each_round_and_sleeps_between_them() -> None:
    applied: list[dict] = []
    slept: list[float] = []
    policy = TunePolicy(grid=parse_grid(["worker.failure_threshold=2,50"]), min_events=1)
    changes = tune_every(
        flaky_history,
        CoreSettings(),
        policy,
        applied.append,
        lambda outcome: None,
        period_s=3600,
        max_rounds=2,
        sleep=slept.append,
    )
    assert changes == 2 and len(applied) == 2
    assert slept == [3600]


def test_tune_command_prints_current_and_best(tmp_path, capsys) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in flaky_history()))
    code = main(
        [
            "tune",
            "--input",
            str(path),
            "--grid",
            "worker.failure_threshold=2,50",
            "--min-events",
            "1",
            "--processes",
            "1",
        ]
    )
    out = capsys.readouterr()
    assert code == 0
    assert "current" in out.out and "best" in out.out
    assert "propose: improvement" in out.out
    assert "3/3" in out.err  # the progress bar reached the end (current + 2)


def test_tune_command_rejects_a_bad_grid_in_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text("")
    code = main(["tune", "--input", str(path), "--grid", "worker.failure_threshold"])
    assert code == 2
    assert "--grid" in capsys.readouterr().err
