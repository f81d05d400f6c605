"""Settings: defaults of CONTRACT.md, TOML file, environment, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from faultstream.events.admin import LOGICAL_TOPICS
from faultstream.events.config import TOPIC_PREFIX_MAX, CoreSettings, load_settings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import CircuitKind, FailureType


def test_defaults_match_the_contract():
    settings = load_settings()
    worker, hardware, task = (
        settings.circuits.worker,
        settings.circuits.hardware_class,
        settings.circuits.task_type,
    )
    assert (worker.failure_threshold, worker.recovery_timeout_s, worker.success_threshold) == (
        5,
        60,
        3,
    )
    assert (worker.max_open_fraction, worker.guard_min_workers) == (0.5, 4)
    assert (hardware.failure_threshold, hardware.max_reset_timeout_s) == (3, 1800)
    assert (task.failure_threshold, task.reset_timeout_factor) == (10, 1.2)
    assert settings.recovery.max_retries == 3
    assert settings.http.projector_port == 8765
    assert settings.kafka.topic("events") == "faultstream.events"


def test_toml_file_overrides_defaults(tmp_path):
    config = tmp_path / "faultstream.toml"
    config.write_text('[circuits.worker]\nfailure_threshold = 7\n[kafka]\ntopic_prefix = "ci"\n')
    settings = load_settings(config)
    assert settings.circuits.worker.failure_threshold == 7
    assert settings.circuits.worker.recovery_timeout_s == 60
    assert settings.kafka.topic("dlq") == "ci.dlq"


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    config = tmp_path / "faultstream.toml"
    config.write_text("[circuits.worker]\nfailure_threshold = 7\n")
    monkeypatch.setenv("FAULTSTREAM_CIRCUITS__WORKER__FAILURE_THRESHOLD", "9")
    assert load_settings(config).circuits.worker.failure_threshold == 9


def test_half_open_calls_below_success_threshold_is_refused_naming_the_setting(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[circuits.task_type]\nhalf_open_max_calls = 1\n")
    with pytest.raises(ConfigError, match=r"circuits\.task_type.*half_open_max_calls"):
        load_settings(config)


@pytest.mark.parametrize(
    "setting", ["failure_threshold = 0", "recovery_timeout_s = -1", "reset_timeout_factor = 0"]
)
def test_non_positive_settings_are_refused(tmp_path, setting):
    config = tmp_path / "bad.toml"
    config.write_text(f"[circuits.worker]\n{setting}\n")
    with pytest.raises(ConfigError, match=setting.split()[0]):
        load_settings(config)


def test_unknown_setting_is_refused(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[circuits.worker]\nfailure_treshold = 3\n")
    with pytest.raises(ConfigError, match="failure_treshold"):
        load_settings(config)


def test_broken_toml_and_missing_file_give_clear_errors(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[circuits.worker\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "missing.toml")


def test_partial_config_change_merges_onto_current_settings():
    merged = CoreSettings().merged({"circuits": {"worker": {"failure_threshold": 2}}})
    assert merged.circuits.worker.failure_threshold == 2
    assert merged.circuits.worker.recovery_timeout_s == 60
    assert merged.circuits.task_type.failure_threshold == 10


def test_attribution_maps_failure_types_to_circuits():
    attribution = CoreSettings().circuits.attribution
    assert attribution.circuit_for(FailureType.WORKER_CRASH) is CircuitKind.WORKER
    assert attribution.circuit_for(FailureType.RESOURCE_EXHAUSTION) is CircuitKind.HARDWARE_CLASS
    assert attribution.circuit_for(FailureType.TIMEOUT) is CircuitKind.TASK_TYPE


def test_failure_type_on_two_circuits_is_refused():
    with pytest.raises(ConfigError, match="both"):
        CoreSettings().merged({"circuits": {"attribution": {"worker": ["HARDWARE_ERROR"]}}})


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_refused_in_the_file(tmp_path, value):
    config = tmp_path / "bad.toml"
    config.write_text(f"[recovery]\nheartbeat_timeout_s = {value}\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: recovery\.heartbeat_timeout_s: .*finite"):
        load_settings(config)


def test_non_finite_numbers_are_refused_in_a_config_change():
    with pytest.raises(ConfigError, match=r"circuits\.worker\.recovery_timeout_s: .*finite"):
        CoreSettings().merged({"circuits": {"worker": {"recovery_timeout_s": float("inf")}}})


def test_a_bad_environment_value_names_its_variable_not_the_file(tmp_path, monkeypatch):
    config = tmp_path / "faultstream.toml"
    config.write_text("[recovery]\nmax_retries = 2\n")
    monkeypatch.setenv("FAULTSTREAM_CIRCUITS__WORKER__RECOVERY_TIMEOUT_S", "nan")
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert str(refused.value).startswith(
        "FAULTSTREAM_CIRCUITS__WORKER__RECOVERY_TIMEOUT_S: circuits.worker.recovery_timeout_s:"
    )


def test_a_value_inside_a_json_section_names_that_variable(monkeypatch):
    monkeypatch.setenv("FAULTSTREAM_RECOVERY", '{"heartbeat_timeout_s": -1}')
    with pytest.raises(ConfigError, match=r"^FAULTSTREAM_RECOVERY: recovery\.heartbeat_timeout_s"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FAULTSTREAM_KAFKA", "{bad"),
        ("FAULTSTREAM_CIRCUITS__WORKER", "{'failure_threshold': 3}"),
        ("FAULTSTREAM_CIRCUITS__ATTRIBUTION__WORKER", "[WORKER_CRASH"),
    ],
)
def test_bad_json_in_the_environment_names_the_variable_without_its_value(
    monkeypatch, variable, value
):
    monkeypatch.setenv("FAULTSTREAM_KAFKA__TOPIC_PREFIX", "not-json-but-fine")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    message = str(refused.value)
    assert message.startswith(f"{variable}: not valid JSON (")
    assert value not in message  # it might hold a secret, e.g. the operator token


def test_missing_file_named_by_the_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FAULTSTREAM_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"^FAULTSTREAM_CONFIG=.*gone\.toml: no such"):
        load_settings()


def test_a_file_that_is_not_utf8_is_not_valid_toml(tmp_path):
    config = tmp_path / "binary.toml"
    config.write_bytes(b"\xff\xfe[kafka]\n")
    with pytest.raises(ConfigError, match=r"binary\.toml: not valid TOML \(not UTF-8"):
        load_settings(config)


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("bad prefix", "not a valid topic prefix"),
        ("tenant/a", "not a valid topic prefix"),
        ("", "not a valid topic prefix"),
        ("é", "not a valid topic prefix"),
        ("x" * (TOPIC_PREFIX_MAX + 1), "too long"),
    ],
)
def test_topic_prefix_that_cannot_name_a_kafka_topic_is_refused(tmp_path, prefix, why):
    config = tmp_path / "faultstream.toml"
    config.write_text(f'[kafka]\ntopic_prefix = "{prefix}"\n')
    with pytest.raises(ConfigError, match=rf"faultstream\.toml: kafka\.topic_prefix: .*{why}"):
        load_settings(config)


def test_longest_allowed_prefix_keeps_every_topic_name_within_kafkas_limit():
    settings = load_settings(kafka={"topic_prefix": "x" * TOPIC_PREFIX_MAX})
    changelog = f"{settings.kafka.topic_prefix}-processor-decider-state-changelog"
    assert len(changelog) == 249
    assert all(len(settings.kafka.topic(name)) <= 249 for name in LOGICAL_TOPICS)


def test_a_timeout_past_a_century_is_refused_naming_the_setting() -> None:
    # 1e308 s was accepted, and the first opening of that circuit crashed the decider.
    with pytest.raises(ConfigError, match="recovery_timeout_s"):
        CoreSettings().merged({"circuits": {"worker": {"recovery_timeout_s": 1e308}}})
    with pytest.raises(ConfigError, match="heartbeat_timeout_s"):
        CoreSettings().merged({"recovery": {"heartbeat_timeout_s": 1e12}})


def test_one_setting_of_a_circuit_kind_keeps_that_kinds_other_defaults(monkeypatch) -> None:
    monkeypatch.setenv("FAULTSTREAM_CIRCUITS__TASK_TYPE__FAILURE_THRESHOLD", "3")
    task_type = load_settings().circuits.task_type
    assert task_type.failure_threshold == 3
    # The task_type defaults, not the generic (worker) ones: 300 s, not 60 s.
    assert (task_type.recovery_timeout_s, task_type.success_threshold) == (300, 2)


def test_a_time_window_defaults_to_60_seconds_and_a_count_window_to_100_calls(tmp_path) -> None:
    config = tmp_path / "faultstream.toml"
    config.write_text('[circuits.worker]\nsliding_window_type = "time"\n'
                      '[circuits.task_type]\nsliding_window_type = "time"\n')  # fmt: skip
    circuits = load_settings(config).circuits
    assert circuits.worker.sliding_window_size == 60
    assert circuits.task_type.sliding_window_size == 60
    assert circuits.hardware_class.sliding_window_size == 100


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_sample_configuration_is_the_defaults() -> None:
    assert load_settings(DOCS / "faultstream.toml").core == CoreSettings()


def test_the_rules_demo_configuration_switches_every_rule_on() -> None:
    core = load_settings(DOCS / "rules-demo.toml").core
    worker = core.circuits.worker
    assert worker.failure_rate_threshold and worker.slow_call_duration_s
    assert worker.outlier_stdev_factor and core.recovery.adaptive
