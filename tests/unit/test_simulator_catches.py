"""Which rule caught a scripted incident: the first derived record about its subject whose
reason names a rule, as the demo reports it and the incidents bench measures it."""

from __future__ import annotations

from pathlib import Path

import pytest

from faultstream.cli import main
from faultstream.cli.demo_report import IncidentReport, format_catch, format_report
from faultstream.events.models import (
    Alert,
    CircuitStateChanged,
    DerivedRecord,
    RecoveryCommand,
    RecoveryStrategy,
)
from faultstream.processors.simulator import EPOCH_MS
from faultstream.processors.simulator.catches import first_catch, rules_named, signals_of
from faultstream.processors.simulator.incidents import IncidentState
from faultstream.processors.simulator.scenario import IncidentSpec

MINUTE = 60_000
START = EPOCH_MS + 5 * MINUTE
CLASSES = {"cpu-01": "cpu", "cpu-03": "cpu", "rocm-02": "rocm", "cuda-05": "cuda"}


def _flaky() -> IncidentState:
    spec = IncidentSpec("flaky worker", "flaky_worker", 5 * MINUTE, 45 * MINUTE, "cpu",
                        worker="cpu-03")  # fmt: skip
    return IncidentState(spec, started_at=START, workers=["cpu-03"])


def _rung() -> IncidentState:
    spec = IncidentSpec(
        "batch cuts", "first_rung_fails", 5 * MINUTE, 55 * MINUTE, "rocm", "resnet-train",
        fails_on=RecoveryStrategy.REDUCED_BATCH_SIZE,
    )  # fmt: skip
    return IncidentState(spec, started_at=START)


def _opened(ts: int, worker: str, reason: str) -> CircuitStateChanged:
    return CircuitStateChanged(
        event_id=f"c-{ts}", ts=ts, circuit_kind="worker", circuit_id=worker,
        from_state="CLOSED", to_state="OPEN", reason=reason, consecutive_failures=2,
        trips=1, reset_timeout_s=60, health=18, caused_by="e",
    )  # fmt: skip


def _command(ts: int, worker: str, strategy: str, reason: str) -> RecoveryCommand:
    return RecoveryCommand(
        command_id=f"k-{ts}", ts=ts, task_id="task-1", task_type="resnet-train",
        worker_id=worker, strategy=strategy, attempt=1, delay_s=0, reason=reason,
        caused_by="e",
    )  # fmt: skip


def _alert(ts: int, rule: str, kind: str, subject: str, state: str = "FIRING") -> Alert:
    return Alert(
        alert_id=f"a-{ts}", ts=ts, rule=rule, subject_kind=kind, subject_id=subject,
        severity="warning", state=state, message="m", caused_by="e",
    )  # fmt: skip


def _catch(state: IncidentState, records: list[DerivedRecord]):
    return first_catch(state, signals_of(records, CLASSES))


def test_reason_names_every_rule_it_lists() -> None:
    assert rules_named("WORKER_CRASH; failure_threshold reached; failure_rate 40%") == (
        "failure_threshold", "failure_rate"
    )  # fmt: skip
    assert rules_named("WORKER_CRASH ladder rung 0") == ()


def test_flaky_worker_is_caught_by_the_first_rule_naming_record_on_it() -> None:
    records = [
        _opened(START - MINUTE, "cpu-03", "WORKER_CRASH; failure_threshold reached"),  # before
        _opened(START + MINUTE, "cpu-01", "WORKER_CRASH; failure_rate 40% >= 30%"),  # another
        _command(START + MINUTE, "cpu-03", "DIFFERENT_WORKER", "WORKER_CRASH ladder rung 0"),
        # adaptive ladders learn per class, not about this worker
        _command(START + 90_000, "cpu-03", "DIFFERENT_WORKER", "adaptive: WORKER_CRASH"),
        _opened(START + 150_000, "cpu-03", "WORKER_CRASH; failure_rate 40% >= 30%"),
        _opened(START + 200_000, "cpu-03", "outlier: success rate 60% below 80%"),
    ]
    catch = _catch(_flaky(), records)
    assert catch is not None
    assert (catch.rule, catch.delay_ms) == ("failure_rate", 150_000)
    assert catch.what == "circuit worker:cpu-03 OPEN"


def test_records_out_of_order_still_give_the_earliest_catch() -> None:
    records = [
        _opened(START + 200_000, "cpu-03", "outlier: success rate 60% below 80%"),
        _alert(START + 100_000, "clock_skew", "worker", "cpu-03"),
    ]
    catch = _catch(_flaky(), records)
    assert catch is not None and (catch.rule, catch.delay_ms) == ("clock_skew", 100_000)


def test_nothing_naming_a_rule_on_it_while_it_lasts_is_not_caught() -> None:
    records = [
        _command(START + MINUTE, "cpu-03", "DIFFERENT_WORKER", "worker circuit cpu-03 is OPEN"),
        _alert(START + MINUTE, "open_longer_than_s", "worker", "cpu-03", state="RESOLVED"),
        _opened(START + 46 * MINUTE, "cpu-03", "failure_rate"),  # after its end + grace
    ]
    assert _catch(_flaky(), records) is None
    assert format_catch(None) == "    caught by: not caught"


def test_lost_worker_move_names_the_heartbeat_rule_for_that_worker() -> None:
    move = _command(START + 33_000, "cpu-03", "DIFFERENT_WORKER",
                    "WORKER_DISCONNECTION: worker lost, silent over 30s")  # fmt: skip
    catch = _catch(_flaky(), [move])
    assert catch is not None and catch.rule == "heartbeat_timeout"


def test_rung_that_never_works_is_caught_when_adaptive_stops_choosing_it() -> None:
    records = [
        _command(START + MINUTE, "rocm-02", "REDUCED_BATCH_SIZE",
                 "RESOURCE_EXHAUSTION ladder rung 0"),
        # adaptive, but still the rung that never works: not yet
        _command(START + 2 * MINUTE, "rocm-02", "REDUCED_BATCH_SIZE",
                 "RESOURCE_EXHAUSTION adaptive: REDUCED_BATCH_SIZE 2/12"),
        _command(START + 3 * MINUTE, "cuda-05", "REDUCED_PRECISION",
                 "RESOURCE_EXHAUSTION adaptive: REDUCED_PRECISION 11/12"),  # another class
        _command(START + 4 * MINUTE, "rocm-02", "REDUCED_PRECISION",
                 "RESOURCE_EXHAUSTION adaptive: REDUCED_PRECISION 11/12"),
    ]  # fmt: skip
    catch = _catch(_rung(), records)
    assert catch is not None
    assert (catch.rule, catch.delay_ms) == ("adaptive", 4 * MINUTE)
    assert catch.what == "command REDUCED_PRECISION for a task of rocm-02"


def test_class_alert_catches_a_class_incident() -> None:
    records = [_alert(START + 30_000, "class_capacity_below", "hardware_class", "rocm")]
    catch = _catch(_rung(), records)
    assert catch is not None and catch.rule == "class_capacity_below"


def test_report_says_which_rule_caught_it_and_after_how_long() -> None:
    catch = _catch(_flaky(), [_opened(START + 150_000, "cpu-03", "x; failure_rate 40%")])
    report = IncidentReport("flaky worker", "flaky_worker", START, "worker:cpu-03", caught=catch)
    assert (
        "    caught by: failure_rate at t+07:30, 2m30s after it began (circuit worker:cpu-03 OPEN)"
    ) in format_report(report).splitlines()


RULES_CONFIG = """
[circuits.worker]
failure_rate_threshold = 30
sliding_window_size = 10
minimum_number_of_calls = 10
slow_call_duration_s = 50
slow_call_rate_threshold = 50
outlier_stdev_factor = 1.9
outlier_interval_s = 300
[recovery]
adaptive = true
adaptive_min_samples = 10
"""


def test_demo_of_the_rules_scenario_reports_the_rule_that_caught_each_incident(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "faultstream.toml"
    config.write_text(RULES_CONFIG)
    args = ["demo", "--config", str(config), "--scenario", "rules", "--duration", "25m"]
    assert main([*args, "--db", str(tmp_path / "rules.duckdb")]) == 0
    out = capsys.readouterr().out
    sections = {block.split(" (")[0]: block for block in out.split("\n* ")[1:]}
    assert "caught by: failure_rate" in sections["flaky worker"]
    assert "caught by: slow_call_rate" in sections["throttled GPU"]
    assert "caught by: adaptive" in sections["batch size cuts don't help on rocm"]
