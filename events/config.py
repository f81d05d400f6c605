"""Settings: `faultstream.toml` (`--config`) and `FAULTSTREAM_…` environment variables.

Precedence: explicit values > environment (`FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=…`,
nested with `__`) > the TOML file > the defaults of CONTRACT.md. `CoreSettings` (circuits
and recovery) is what the pure core reads and what a CONFIG_CHANGED record carries.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .exceptions import ConfigError
from .models import CircuitKind, FailureType

CONFIG_ENV = "FAULTSTREAM_CONFIG"
DEFAULT_CONFIG_FILE = Path("faultstream.toml")

_STRICT = ConfigDict(extra="forbid", frozen=True)
Positive = Field(gt=0)


class CircuitSettings(BaseModel):
    model_config = _STRICT

    failure_threshold: int = Field(5, gt=0)
    recovery_timeout_s: float = Field(60, gt=0)
    # Below 1 the backoff would shrink while a circuit keeps tripping.
    reset_timeout_factor: float = Field(2.0, ge=1.0)
    max_reset_timeout_s: float = Field(600, gt=0)
    success_threshold: int = Field(3, gt=0)
    half_open_max_calls: int = Field(3, gt=0)

    @model_validator(mode="after")
    def _half_open_can_close(self) -> CircuitSettings:
        if self.half_open_max_calls < self.success_threshold:
            raise ValueError(
                f"half_open_max_calls ({self.half_open_max_calls}) must be at least "
                f"success_threshold ({self.success_threshold}), or a half-open circuit "
                "can never close"
            )
        return self


class WorkerCircuitSettings(CircuitSettings):
    """Worker circuits add the fleet guard (CIRCUITS.md, after Envoy's max ejection %)."""

    max_open_fraction: float = Field(0.5, gt=0, le=1)
    guard_min_workers: int = Field(4, ge=1)


def _hardware_class_defaults() -> CircuitSettings:
    return CircuitSettings(
        failure_threshold=3,
        recovery_timeout_s=120,
        reset_timeout_factor=1.5,
        max_reset_timeout_s=1800,
        success_threshold=5,
        half_open_max_calls=5,
    )


def _task_type_defaults() -> CircuitSettings:
    return CircuitSettings(
        failure_threshold=10,
        recovery_timeout_s=300,
        reset_timeout_factor=1.2,
        max_reset_timeout_s=3600,
        success_threshold=2,
        half_open_max_calls=2,
    )


class AttributionSettings(BaseModel):
    """Which circuit a FAILURE counts on, by failure type; the rest go to task_type."""

    model_config = _STRICT

    worker: tuple[FailureType, ...] = (
        FailureType.WORKER_CRASH,
        FailureType.WORKER_DISCONNECTION,
        FailureType.BROWSER_FAILURE,
    )
    hardware_class: tuple[FailureType, ...] = (
        FailureType.HARDWARE_ERROR,
        FailureType.RESOURCE_EXHAUSTION,
    )

    @model_validator(mode="after")
    def _disjoint(self) -> AttributionSettings:
        both = set(self.worker) & set(self.hardware_class)
        if both:
            raise ValueError(f"{sorted(both)} attributed to both worker and hardware_class")
        return self

    def circuit_for(self, failure_type: FailureType) -> CircuitKind:
        if failure_type in self.worker:
            return CircuitKind.WORKER
        if failure_type in self.hardware_class:
            return CircuitKind.HARDWARE_CLASS
        return CircuitKind.TASK_TYPE


class CircuitsSettings(BaseModel):
    model_config = _STRICT

    worker: WorkerCircuitSettings = Field(default_factory=WorkerCircuitSettings)
    hardware_class: CircuitSettings = Field(default_factory=_hardware_class_defaults)
    task_type: CircuitSettings = Field(default_factory=_task_type_defaults)
    attribution: AttributionSettings = Field(default_factory=AttributionSettings)

    def for_kind(self, kind: CircuitKind) -> CircuitSettings:
        return getattr(self, kind.value)


class RecoverySettings(BaseModel):
    model_config = _STRICT

    max_retries: int = Field(3, ge=0)
    heartbeat_timeout_s: float = Field(30, gt=0)


class CoreSettings(BaseModel):
    """Everything the pure core reads; the payload of a CONFIG_CHANGED record."""

    model_config = _STRICT

    circuits: CircuitsSettings = Field(default_factory=CircuitsSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)

    def merged(self, changes: dict[str, Any]) -> CoreSettings:
        """These settings with `changes` (a nested, possibly partial mapping) applied."""
        return validate_core_settings(_deep_merge(self.model_dump(mode="json"), changes))


class KafkaSettings(BaseModel):
    model_config = _STRICT

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "faultstream"
    partitions: int = Field(6, gt=0)
    replication_factor: int = Field(1, gt=0)
    retention_days: float = Field(30, gt=0)
    schema_registry_url: str | None = None

    def topic(self, name: str) -> str:
        """`events` → `faultstream.events` (with the configured prefix)."""
        return f"{self.topic_prefix}.{name}"


class ProcessorSettings(BaseModel):
    model_config = _STRICT

    tick_interval_s: float = Field(1.0, gt=0)
    # "auto": RocksDB when rocksdict is installed, memory otherwise.
    store: str = "auto"
    data_dir: str = ".faultstream/processor"
    web_port: int = Field(6066, gt=0, lt=65536)
    # How often the decider snapshots its core (processors/state.py).
    snapshot_every_s: float = Field(10.0, gt=0)


class EmitterSettings(BaseModel):
    model_config = _STRICT

    spool_path: str = ".faultstream/spool.jsonl"


class HttpSettings(BaseModel):
    model_config = _STRICT

    projector_port: int = Field(8765, gt=0, lt=65536)
    dashboard_port: int = Field(8080, gt=0, lt=65536)


class DashboardSettings(BaseModel):
    model_config = _STRICT

    # Operations (reset, force open, apply a tuning) are refused while this is unset.
    operator_token: str | None = None
    refresh_s: float = Field(5.0, gt=0)


class StorageSettings(BaseModel):
    model_config = _STRICT

    duckdb_path: str = "faultstream.duckdb"
    read_models_dir: str = "faultstream-read-models"
    # Event time between two health_snapshots rows the projector writes.
    health_interval_s: float = Field(60.0, gt=0)


class BrokerSettings(BaseModel):
    """The local single-node Kafka that `faultstream broker` manages."""

    model_config = _STRICT

    kafka_version: str = "3.9.1"
    port: int = Field(9092, gt=0, lt=65536)
    controller_port: int = Field(9093, gt=0, lt=65536)
    state_dir: str = ".faultstream/broker"
    cache_dir: str = "~/.cache/faultstream/kafka"
    heap: str = "1g"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FAULTSTREAM_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    circuits: CircuitsSettings = Field(default_factory=CircuitsSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    processor: ProcessorSettings = Field(default_factory=ProcessorSettings)
    emitter: EmitterSettings = Field(default_factory=EmitterSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)

    @property
    def core(self) -> CoreSettings:
        return CoreSettings(circuits=self.circuits, recovery=self.recovery)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file_in_use
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


_config_file_in_use: Path | None = None


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config` (or $FAULTSTREAM_CONFIG, or ./faultstream.toml if present),
    the environment and `overrides`; a bad file or value raises ConfigError naming it."""
    global _config_file_in_use
    path = _resolve_config_path(config)
    if path is not None:
        try:
            with path.open("rb") as fh:
                tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    _config_file_in_use = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source=str(path) if path else "settings")) from None
    finally:
        _config_file_in_use = None


def validate_core_settings(data: dict[str, Any]) -> CoreSettings:
    try:
        return CoreSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source="config")) from None


def load_core_settings(config: str | Path | None) -> CoreSettings:
    """The circuit and recovery settings of a TOML file (defaults when `config` is None)."""
    return load_settings(config).core


def _resolve_config_path(config: str | Path | None) -> Path | None:
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"{path}: no such configuration file")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        return _resolve_config_path(env)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _describe(exc: ValidationError, *, source: str) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = exc.error_count() - 1
    tail = f" (and {more} more)" if more else ""
    return f"{source}: {where}: {message}{tail}"


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
