"""Scenario files: the fleet, its task types, rates and scripted incidents, as TOML.

A bad file raises ConfigError naming the file and the field at fault.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from faultstream.events.exceptions import ConfigError
from faultstream.events.models import FailureType, RecoveryStrategy

INCIDENT_KINDS = (
    "hardware_fault",
    "flaky_worker",
    "oom",
    "browser_crash",
    "silent_worker",
    "bad_release",
    "throttled_worker",
    "first_rung_fails",
)
# Kinds that hit one worker: `worker` names it, else one of `hardware_class` at random.
ONE_WORKER_KINDS = ("flaky_worker", "throttled_worker")
BUILT_IN = {"default": "default.toml", "rules": "rules.toml"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, None: 1000, "m": 60_000, "min": 60_000, "h": 3_600_000}


def parse_duration_ms(text: str | int | float, *, name: str = "duration") -> int:
    """`1h`, `20m`, `90s`, `500ms` or a number of seconds → milliseconds."""
    if isinstance(text, int | float):
        value, unit = float(text), None
    else:
        match = _DURATION.match(text)
        if match is None:
            raise ConfigError(f"{name}: {text!r} is not a duration like 1h, 20m or 90s")
        value, unit = float(match.group(1)), match.group(2)
    if not math.isfinite(value * _UNIT_MS[unit]):
        raise ConfigError(f"{name}: {text!r} is not a finite duration")
    ms = round(value * _UNIT_MS[unit])
    if ms <= 0:
        raise ConfigError(f"{name}: must be positive")
    return ms


@dataclass(frozen=True)
class TaskTypeSpec:
    name: str
    hardware: tuple[str, ...]
    weight: float
    duration_s: tuple[float, float]
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IncidentSpec:
    name: str
    kind: str
    start_ms: int  # from the start of the simulation
    end_ms: int
    hardware_class: str | None = None
    task_type: str | None = None
    probability: float = 1.0
    fraction: float = 1.0
    memory: tuple[float, float] = (0.0, 0.0)
    message: str | None = None
    worker: str | None = None  # a named worker (one-worker kinds)
    failure_type: FailureType | None = None  # flaky_worker, first_rung_fails
    slowdown: float = 1.0  # throttled_worker: how many times longer its tasks run
    fails_on: RecoveryStrategy | None = None  # first_rung_fails: the rung that never works

    def active(self, offset_ms: int) -> bool:
        return self.start_ms <= offset_ms < self.end_ms


@dataclass(frozen=True)
class Scenario:
    duration_ms: int
    workers: int
    tick_interval_ms: int
    heartbeat_interval_ms: int
    checkpoint_interval_ms: int
    idle_gap_s: tuple[float, float]
    background_failure_rate: float
    cpu_slowdown: float
    fleet: dict[str, float]
    task_types: dict[str, TaskTypeSpec]
    incidents: tuple[IncidentSpec, ...]
    source: str = "built-in"


def load_scenario(path: str | Path | None = None) -> Scenario:
    """The scenario in `path`, or a built-in one by name (`default` when None): `rules`
    scripts the incidents the failure-rate, slow-call, outlier and adaptive rules catch."""
    name = "default" if path is None else str(path)
    if name in BUILT_IN and not Path(name).exists():
        text = resources.files(__package__).joinpath(BUILT_IN[name]).read_text()
        label = "built-in scenario" if name == "default" else f"built-in scenario {name!r}"
        return parse_scenario(tomllib.loads(text), source=label)
    path = Path(name)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_scenario(data, source=str(path))


def parse_scenario(data: dict[str, Any], *, source: str = "scenario") -> Scenario:
    try:
        return _parse(data, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(data: dict[str, Any], source: str) -> Scenario:
    sim = _table(data, "simulation")
    fleet = {
        str(k): _number(v, f"fleet.{k}", positive=True) for k, v in _table(data, "fleet").items()
    }
    if not fleet:
        raise ConfigError("fleet: needs at least one hardware class")
    task_types = {name: _task_type(name, spec) for name, spec in _table(data, "task_types").items()}
    if not task_types:
        raise ConfigError("task_types: needs at least one task type")
    for spec in task_types.values():
        unknown = [h for h in spec.hardware if h not in fleet]
        if unknown:
            raise ConfigError(f"task_types.{spec.name}.hardware: {unknown} not in [fleet]")
    incidents = tuple(
        _incident(i, raw, fleet, task_types) for i, raw in enumerate(data.get("incidents", []))
    )
    return Scenario(
        duration_ms=parse_duration_ms(sim.get("duration", "1h"), name="simulation.duration"),
        workers=int(_number(sim.get("workers", 50), "simulation.workers", positive=True)),
        tick_interval_ms=_seconds_ms(sim, "tick_interval_s", 5),
        heartbeat_interval_ms=_seconds_ms(sim, "heartbeat_interval_s", 10),
        checkpoint_interval_ms=_seconds_ms(sim, "checkpoint_interval_s", 15),
        idle_gap_s=_range(sim.get("idle_gap_s", [1, 4]), "simulation.idle_gap_s"),
        background_failure_rate=_fraction(
            sim.get("background_failure_rate", 0.01), "simulation.background_failure_rate"
        ),
        cpu_slowdown=_number(sim.get("cpu_slowdown", 3.0), "simulation.cpu_slowdown", True),
        fleet=fleet,
        task_types=task_types,
        incidents=incidents,
        source=source,
    )


def _task_type(name: str, spec: Any) -> TaskTypeSpec:
    where = f"task_types.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a table")
    hardware = spec.get("hardware")
    if not isinstance(hardware, list) or not hardware:
        raise ConfigError(f"{where}.hardware: must be a non-empty list of hardware classes")
    attributes = spec.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ConfigError(f"{where}.attributes: must be a table of strings")
    return TaskTypeSpec(
        name=name,
        hardware=tuple(str(h) for h in hardware),
        weight=_number(spec.get("weight", 1), f"{where}.weight", positive=True),
        duration_s=_range(spec.get("duration_s", [10, 60]), f"{where}.duration_s"),
        attributes={str(k): str(v) for k, v in attributes.items()},
    )


def _incident(
    index: int, raw: Any, fleet: dict[str, float], task_types: dict[str, TaskTypeSpec]
) -> IncidentSpec:
    where = f"incidents[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    kind = raw.get("kind")
    if kind not in INCIDENT_KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(INCIDENT_KINDS)}")
    start = _number(raw.get("start_min"), f"{where}.start_min")
    end = _number(raw.get("end_min"), f"{where}.end_min")
    if end <= start:
        raise ConfigError(f"{where}.end_min: must be after start_min")
    hardware_class = raw.get("hardware_class")
    task_type = raw.get("task_type")
    worker = raw.get("worker")
    if worker is not None and kind not in ONE_WORKER_KINDS:
        raise ConfigError(f"{where}.worker: only for {' and '.join(ONE_WORKER_KINDS)}")
    if worker is not None:
        hardware_class = _class_of(worker, f"{where}.worker", fleet)
    needs_class = kind in (
        "hardware_fault", "browser_crash", "silent_worker", "first_rung_fails", *ONE_WORKER_KINDS
    )  # fmt: skip
    if needs_class and hardware_class not in fleet:
        raise ConfigError(f"{where}.hardware_class: {hardware_class!r} is not in [fleet]")
    if kind in ("oom", "bad_release") and task_type not in task_types:
        raise ConfigError(f"{where}.task_type: {task_type!r} is not in [task_types]")
    if kind == "first_rung_fails" and task_type is not None and task_type not in task_types:
        raise ConfigError(f"{where}.task_type: {task_type!r} is not in [task_types]")
    memory = raw.get("memory", [0, 0])
    slowdown = raw.get("slowdown", 10) if kind == "throttled_worker" else 1.0
    fails_on = raw.get("fails_on", "REDUCED_BATCH_SIZE") if kind == "first_rung_fails" else None
    return IncidentSpec(
        name=str(raw.get("name", kind)),
        kind=kind,
        start_ms=round(start * 60_000),
        end_ms=round(end * 60_000),
        hardware_class=hardware_class,
        task_type=task_type,
        probability=_fraction(raw.get("probability", 1.0), f"{where}.probability"),
        fraction=_fraction(raw.get("fraction", 1.0), f"{where}.fraction"),
        memory=_range(memory, f"{where}.memory") if kind == "oom" else (0.0, 0.0),
        message=raw.get("message"),
        worker=worker,
        failure_type=_failure_type(kind, raw.get("failure_type"), f"{where}.failure_type"),
        slowdown=_number(slowdown, f"{where}.slowdown", positive=True),
        fails_on=None if fails_on is None else _strategy(fails_on, f"{where}.fails_on"),
    )


def _class_of(worker: Any, name: str, fleet: dict[str, float]) -> str:
    """A named worker's class: its id is `<class>-<NN>`, as the fleet names them."""
    cls, _, number = str(worker).rpartition("-")
    if cls not in fleet or not number.isdecimal():
        raise ConfigError(f"{name}: {worker!r} is not a worker id like cpu-03 of a [fleet] class")
    return cls


def _failure_type(kind: str, value: Any, name: str) -> FailureType | None:
    default = {"flaky_worker": "WORKER_CRASH", "first_rung_fails": "RESOURCE_EXHAUSTION"}
    if kind not in default:
        return None
    try:
        return FailureType(value or default[kind])
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a failure type") from None


def _strategy(value: Any, name: str) -> RecoveryStrategy:
    try:
        return RecoveryStrategy(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a recovery strategy") from None


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a table")
    return value


def _number(value: Any, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: must be a number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{name}: must be {'positive' if positive else 'at least 0'}")
    return float(value)


def _fraction(value: Any, name: str) -> float:
    number = _number(value, name)
    if number > 1:
        raise ConfigError(f"{name}: must be between 0 and 1")
    return number


def _range(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{name}: must be [low, high]")
    low, high = _number(value[0], name), _number(value[1], name)
    if high < low:
        raise ConfigError(f"{name}: high must not be below low")
    return low, high


def _seconds_ms(sim: dict[str, Any], key: str, default: float) -> int:
    return round(_number(sim.get(key, default), f"simulation.{key}", positive=True) * 1000)
