"""Settings: `faultstream.toml` (`--config`) and `FAULTSTREAM_…` environment variables.

Precedence: explicit values > environment (`FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=…`,
nested with `__`) > the TOML file > the defaults of CONTRACT.md. `CoreSettings` (circuits
and recovery) is what the pure core reads and what a CONFIG_CHANGED record carries.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from .exceptions import ConfigError
from .models import CircuitKind, FailureType

ENV_PREFIX = "FAULTSTREAM_"
CONFIG_ENV = "FAULTSTREAM_CONFIG"
DEFAULT_CONFIG_FILE = Path("faultstream.toml")

# inf and nan pass every bound check (nan compares false to all) and would stall a timer
# or trip a circuit never: a setting is always a finite number.
_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
Positive = Field(gt=0)
# A century: longer timeouts would push due moments past what a millisecond clock holds.
MAX_TIMEOUT_S = 100 * 365 * 86_400


class CircuitSettings(BaseModel):
    model_config = _STRICT

    failure_threshold: int = Field(5, gt=0)
    recovery_timeout_s: float = Field(60, gt=0, le=MAX_TIMEOUT_S)
    # Below 1 the backoff would shrink while a circuit keeps tripping.
    reset_timeout_factor: float = Field(2.0, ge=1.0)
    max_reset_timeout_s: float = Field(600, gt=0, le=MAX_TIMEOUT_S)
    success_threshold: int = Field(3, gt=0)
    half_open_max_calls: int = Field(3, gt=0)
    # A sliding window of outcomes (resilience4j): off while both thresholds are 0.
    failure_rate_threshold: float = Field(0, ge=0, le=100)  # percent; 0 = off
    sliding_window_type: Literal["count", "time"] = "count"
    # Outcomes (a count window, default 100) or seconds (a time window, default 60).
    sliding_window_size: float = Field(100, gt=0, le=MAX_TIMEOUT_S)
    minimum_number_of_calls: int = Field(20, gt=0)
    slow_call_duration_s: float = Field(0, ge=0, le=MAX_TIMEOUT_S)  # 0 = off
    slow_call_rate_threshold: float = Field(100, gt=0, le=100)  # percent

    @model_validator(mode="before")
    @classmethod
    def _window_size_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sliding_window_size") is None:
            data = {k: v for k, v in data.items() if k != "sliding_window_size"}
            if data.get("sliding_window_type") == "time":
                data["sliding_window_size"] = 60
        return data

    @model_validator(mode="after")
    def _half_open_can_close(self) -> CircuitSettings:
        if self.half_open_max_calls < self.success_threshold:
            raise ValueError(
                f"half_open_max_calls ({self.half_open_max_calls}) must be at least "
                f"success_threshold ({self.success_threshold}), or a half-open circuit "
                "can never close"
            )
        return self

    @model_validator(mode="after")
    def _window_can_fill(self) -> CircuitSettings:
        if self.sliding_window_type == "count":
            size = self.sliding_window_size
            if size != int(size):
                raise ValueError(f"sliding_window_size ({size:g}) must be a whole count")
            if self.window_on and size < self.minimum_number_of_calls:
                raise ValueError(
                    f"sliding_window_size ({size:g}) is below minimum_number_of_calls "
                    f"({self.minimum_number_of_calls}): the failure-rate and slow-call "
                    "rules could never judge"
                )
        return self

    @property
    def window_on(self) -> bool:
        """Whether the failure-rate or slow-call rule needs the sliding window."""
        return self.failure_rate_threshold > 0 or self.slow_call_duration_s > 0


class WorkerCircuitSettings(CircuitSettings):
    """Worker circuits add the fleet guard (CIRCUITS.md, after Envoy's max ejection %)."""

    max_open_fraction: float = Field(0.5, gt=0, le=1)
    guard_min_workers: int = Field(4, ge=1)
    # Outlier ejection (Envoy's success-rate outlier detection); 0 = off, Envoy uses 1.9.
    outlier_stdev_factor: float = Field(0, ge=0, le=100)
    outlier_interval_s: float = Field(60, gt=0, le=MAX_TIMEOUT_S)
    outlier_minimum_hosts: int = Field(5, gt=0)
    outlier_request_volume: int = Field(10, gt=0)


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

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        # `[circuits.task_type] failure_threshold = 3` (or one FAULTSTREAM_… variable) changes
        # that one setting: the rest keep the kind's own defaults, not the generic ones.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, defaults in (
            ("hardware_class", _hardware_class_defaults),
            ("task_type", _task_type_defaults),
        ):
            given = data.get(name)
            if isinstance(given, dict):
                # (The window's size defaults by its type: not taken from a count window.)
                kind_defaults = defaults().model_dump(exclude={"sliding_window_size"})
                data[name] = {**kind_defaults, **given}
        return data

    def for_kind(self, kind: CircuitKind) -> CircuitSettings:
        return getattr(self, kind.value)


class RecoverySettings(BaseModel):
    model_config = _STRICT

    max_retries: int = Field(3, ge=0)
    heartbeat_timeout_s: float = Field(30, gt=0, le=MAX_TIMEOUT_S)
    # Choose the ladder's rung from measured success (CIRCUITS.md "Adaptive ladders").
    adaptive: bool = False
    adaptive_min_samples: int = Field(20, gt=0)


class AlertRules(BaseModel):
    """The alert rules the core judges; a number of 0 turns its rule off."""

    model_config = _STRICT

    class_capacity_below: float = Field(50, ge=0, le=100)  # percent of live workers
    open_longer_than_s: float = Field(900, ge=0, le=MAX_TIMEOUT_S)
    escalations: bool = True
    fleet_health_below: float = Field(70, ge=0, le=100)
    clock_skew: bool = True


class AlertSettings(AlertRules):
    """`[alerts]`: the rules, and where `faultstream alerts` posts them."""

    # Often carries a token (a chat webhook's path): kept secret, never printed or logged.
    webhook_url: SecretStr = SecretStr("")

    def rules(self) -> AlertRules:
        return AlertRules(**self.model_dump(exclude={"webhook_url"}))


class ClockSettings(BaseModel):
    model_config = _STRICT

    # A worker whose clock is further than this from the broker's is reported.
    max_skew_s: float = Field(120, gt=0, le=MAX_TIMEOUT_S)


class CoreSettings(BaseModel):
    """Everything the pure core reads; the payload of a CONFIG_CHANGED record."""

    model_config = _STRICT

    circuits: CircuitsSettings = Field(default_factory=CircuitsSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    alerts: AlertRules = Field(default_factory=AlertRules)
    clock: ClockSettings = Field(default_factory=ClockSettings)

    def merged(self, changes: dict[str, Any]) -> CoreSettings:
        """These settings with `changes` (a nested, possibly partial mapping) applied."""
        return validate_core_settings(_deep_merge(self.model_dump(mode="json"), changes))


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ClientValue = str | int | float | bool

# librdkafka properties that the typed settings above own: one way to set each.
_CLIENT_KEYS_OF_SETTINGS = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
}
# Properties each client sets for the project's guarantees (ordering, at-least-once,
# the partitioner that puts keys where the processor expects them).
_CLIENT_KEYS_OF_FAULTSTREAM = frozenset(
    {
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "enable.partition.eof",
        "partitioner",
        "enable.idempotence",
        "transactional.id",
    }
)


class KafkaSettings(BaseModel):
    """Where the cluster is and how to reach it; every client is configured from these
    through `events/kafka_clients.py`."""

    model_config = _STRICT

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "faultstream"
    partitions: int = Field(6, gt=0)
    replication_factor: int = Field(1, gt=0)
    retention_days: float = Field(30, gt=0)
    schema_registry_url: str | None = None
    # Whose clock the input topics' record timestamps are, which decisions run on: the
    # broker's (LogAppendTime). CreateTime trusts the producers' clocks and is only for a
    # simulated fleet whose producers stamp its simulated time (`faultstream demo`).
    input_timestamps: Literal["LogAppendTime", "CreateTime"] = "LogAppendTime"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    # validate_default: the rules below tie each to security_protocol, set or not.
    sasl_username: str = Field("", validate_default=True)
    # A SecretStr shows as ********** in repr, str and dumps: never printed or logged.
    sasl_password: SecretStr = Field(SecretStr(""), validate_default=True)
    ssl_cafile: str = Field("", validate_default=True)
    ssl_certfile: str = Field("", validate_default=True)
    ssl_keyfile: str = Field("", validate_default=True)
    # Extra librdkafka properties, passed through as they are (`[kafka.client]`).
    client: dict[str, ClientValue] = Field(default_factory=dict)

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("sasl_username", "sasl_password")
    @classmethod
    def _sasl_only(cls, value: Any, info: ValidationInfo) -> Any:
        protocol = info.data.get("security_protocol")
        given = bool(value.get_secret_value() if isinstance(value, SecretStr) else value)
        if protocol is None:  # security_protocol itself was refused
            return value
        if protocol.startswith("SASL_") and not given:
            raise ValueError(f"required with security_protocol {protocol}")
        if given and not protocol.startswith("SASL_"):
            raise ValueError(
                f"only used with security_protocol SASL_PLAINTEXT or SASL_SSL (it is {protocol})"
            )
        return value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _tls_only(cls, value: str, info: ValidationInfo) -> str:
        protocol = info.data.get("security_protocol")
        if value and protocol is not None and protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(f"only used with security_protocol SSL or SASL_SSL (it is {protocol})")
        if info.field_name == "ssl_keyfile" and bool(value) != bool(info.data.get("ssl_certfile")):
            raise ValueError("ssl_certfile and ssl_keyfile go together (a client certificate)")
        return value

    @field_validator("client", mode="before")
    @classmethod
    def _flat_client(cls, value: Any) -> Any:
        # In TOML `socket.keepalive.enable = true` under [kafka.client] is a nested table.
        return _flatten(value) if isinstance(value, dict) else value

    @field_validator("client")
    @classmethod
    def _client_keys(cls, value: dict[str, ClientValue]) -> dict[str, ClientValue]:
        for key in value:
            if key in _CLIENT_KEYS_OF_SETTINGS:
                raise ValueError(f"{key}: set kafka.{_CLIENT_KEYS_OF_SETTINGS[key]} instead")
            if key in _CLIENT_KEYS_OF_FAULTSTREAM:
                raise ValueError(f"{key}: chosen by each faultstream client, not settable")
        return value

    def topic(self, name: str) -> str:
        """`events` → `faultstream.events` (with the configured prefix)."""
        return f"{self.topic_prefix}.{name}"


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class ProcessorSettings(BaseModel):
    model_config = _STRICT

    tick_interval_s: float = Field(1.0, gt=0)
    # "auto": RocksDB when rocksdict is installed, memory otherwise.
    store: str = "auto"
    data_dir: str = ".faultstream/processor"
    web_port: int = Field(6066, gt=0, lt=65536)
    # How often the decider snapshots its core (processors/stream/snapshots.py).
    snapshot_every_s: float = Field(10.0, gt=0)


class EmitterSettings(BaseModel):
    model_config = _STRICT

    spool_path: str = ".faultstream/spool.jsonl"
    # Past this the oldest spooled events are dropped (and the count logged): an outage
    # must not fill the worker's disk. Room for 64 full-size checkpoints.
    spool_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # How long closing an emitter waits for acknowledgements before spooling the rest.
    close_timeout_s: float = Field(5.0, ge=0)


class HttpSettings(BaseModel):
    model_config = _STRICT

    # Where every server listens (the API, the dashboard, the processor's web server) unless
    # `--host` says otherwise: this machine only, until someone chooses to expose it.
    host: str = Field("127.0.0.1", min_length=1)
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
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    clock: ClockSettings = Field(default_factory=ClockSettings)
    processor: ProcessorSettings = Field(default_factory=ProcessorSettings)
    emitter: EmitterSettings = Field(default_factory=EmitterSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)

    @property
    def core(self) -> CoreSettings:
        return CoreSettings(
            circuits=self.circuits,
            recovery=self.recovery,
            alerts=self.alerts.rules(),
            clock=self.clock,
        )

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

# Kafka's limit on a topic name, and the longest name under a prefix: the changelog Faust
# keeps for the decider's table (processors/stream/app.py: app `<prefix>-processor`, table
# `decider-state`), so a prefix that fits it fits every topic.
KAFKA_TOPIC_NAME_MAX = 249
_LONGEST_TOPIC_SUFFIX = "-processor-decider-state-changelog"
TOPIC_PREFIX_MAX = KAFKA_TOPIC_NAME_MAX - len(_LONGEST_TOPIC_SUFFIX)
_TOPIC_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def topic_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot begin Kafka topic names, or None when it can."""
    if not _TOPIC_NAME_CHARS.fullmatch(prefix):
        return (
            f"{prefix!r} is not a valid topic prefix "
            "(only letters a-z A-Z, digits, '.', '_' and '-')"
        )
    if len(prefix) > TOPIC_PREFIX_MAX:
        return (
            f"a topic prefix of {len(prefix)} characters is too long (at most "
            f"{TOPIC_PREFIX_MAX}, so every topic name stays within Kafka's "
            f"{KAFKA_TOPIC_NAME_MAX})"
        )
    return None


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config` (or $FAULTSTREAM_CONFIG, or ./faultstream.toml if present),
    the environment and `overrides`; a bad file or value raises ConfigError naming it
    (the file, or the environment variable the value came from)."""
    global _config_file_in_use
    path = _resolve_config_path(config)
    if path is not None:
        try:
            with path.open("rb") as fh:
                tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not valid TOML (not UTF-8 text)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    default_source = str(path) if path else "settings"
    _config_file_in_use = path
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        source = _source_of(first, overrides, default_source)
        raise ConfigError(_describe(exc, source=source)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_environment_error(exc)) from None
    finally:
        _config_file_in_use = None
    problem = topic_prefix_problem(settings.kafka.topic_prefix)
    if problem is not None:
        source = _source_of(("kafka", "topic_prefix"), overrides, default_source)
        raise ConfigError(f"{source}: kafka.topic_prefix: {problem}")
    return settings


def validate_core_settings(data: dict[str, Any]) -> CoreSettings:
    try:
        return CoreSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source="config")) from None


def load_core_settings(config: str | Path | None) -> CoreSettings:
    """The circuit and recovery settings of a TOML file (defaults when `config` is None)."""
    return load_settings(config).core


def _resolve_config_path(config: str | Path | None, *, named_by: str = "") -> Path | None:
    if config is not None:
        path = Path(config)
        if not path.is_file():
            what = "a directory, not a" if path.is_dir() else "no such"
            raise ConfigError(f"{named_by}{path}: {what} configuration file")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        return _resolve_config_path(env, named_by=f"{CONFIG_ENV}=")
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _describe(exc: ValidationError, *, source: str) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = exc.error_count() - 1
    tail = f" (and {more} more)" if more else ""
    return f"{source}: {where}: {message}{tail}"


def _environment() -> dict[str, str]:
    """FAULTSTREAM_… variables by their upper-case name (pydantic-settings ignores case)."""
    return {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}


def _source_of(loc: tuple[Any, ...], overrides: dict[str, Any], default: str) -> str:
    """The environment variable that set the setting at `loc` (itself, or a JSON
    section holding it), else `default` (the file, or "settings" for code overrides)."""
    if _holds(overrides, loc):
        return "settings"
    variables = _environment()
    parts = [str(part) for part in loc]
    for depth in range(len(parts), 0, -1):
        name = variables.get(ENV_PREFIX + "__".join(parts[:depth]).upper())
        if name is None:
            continue
        if depth == len(parts):
            return name
        try:
            section = json.loads(os.environ[name])
        except ValueError:
            return name  # not JSON: this variable is the problem either way
        if _holds(section, tuple(parts[depth:])):
            return name
    return default


def _holds(mapping: Any, loc: tuple[Any, ...]) -> bool:
    node = mapping
    for part in loc:
        if isinstance(node, dict) and str(part) in node:
            node = node[str(part)]
        elif isinstance(node, list | tuple) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return bool(loc)


def _describe_environment_error(exc: SettingsError) -> str:
    """pydantic-settings reads a section or list from the environment as JSON and names
    only the top-level field when that fails: name the variable (never its value)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    if match is None:
        return f"environment: {exc}"
    field = ENV_PREFIX + match.group(1).upper()
    defaults = Settings.model_construct().model_dump()
    suspects = []
    for upper, name in sorted(_environment().items()):
        if upper != field and not upper.startswith(field + "__"):
            continue
        try:
            json.loads(os.environ[name])
        except ValueError:
            path = upper.removeprefix(ENV_PREFIX).lower().split("__")
            suspects.append((not _is_section(defaults, path), name))
    name = min(suspects)[1] if suspects else field
    reason = exc.__cause__ if isinstance(exc.__cause__, json.JSONDecodeError) else None
    detail = f" ({reason.msg} at column {reason.colno})" if reason is not None else ""
    return f"{name}: not valid JSON{detail}; a section or a list is set as JSON"


def _is_section(defaults: dict[str, Any], path: list[str]) -> bool:
    node: Any = defaults
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return isinstance(node, dict | list | tuple)


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
