"""The settings grid: `--grid worker.failure_threshold=3,5,8`, bounds, and candidates.

A SETTING is a path under the core settings; `worker.…`, `hardware_class.…` and
`task_type.…` are short for `circuits.<kind>.…`; `recovery.…` stays as it is.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError

_CIRCUIT_KINDS = ("worker", "hardware_class", "task_type", "attribution")

Value = int | float | str

# Every configuration is built, kept and replayed: a grid past this is a typo or a job
# for several runs, not something to start silently while memory grows.
DEFAULT_MAX_CONFIGS = 10_000


def setting_path(name: str) -> tuple[str, ...]:
    """`worker.failure_threshold` → ("circuits", "worker", "failure_threshold")."""
    parts = tuple(p for p in name.strip().split(".") if p)
    if len(parts) >= 2 and parts[0] in _CIRCUIT_KINDS:
        parts = ("circuits", *parts)
    known = CoreSettings().model_dump()
    node: Any = known
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(
                f"--grid {name}: unknown setting (e.g. worker.failure_threshold, "
                "task_type.recovery_timeout_s, recovery.max_retries)"
            )
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"--grid {name}: names a section, not a setting")
    return parts


def parse_value(text: str, name: str = "") -> Value:
    text = text.strip()
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if not math.isfinite(value):
            # "inf", "nan", "1e999": no setting takes them (allow_inf_nan=False).
            raise ConfigError(f"--grid {name}: {text!r} is not a finite number")
        return value
    return text


def parse_grid(
    items: list[str], *, max_configs: int = DEFAULT_MAX_CONFIGS
) -> dict[str, list[Value]]:
    """`["worker.failure_threshold=3,5,8"]` → {"worker.failure_threshold": [3, 5, 8]};
    a grid of more than `max_configs` combinations is refused, saying how many."""
    grid: dict[str, list[Value]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        parsed = [parse_value(v, name.strip()) for v in values.split(",") if v.strip()]
        if not sep or not parsed:
            raise ConfigError(f"--grid {item!r}: expected SETTING=V1,V2,…")
        setting_path(name)
        grid[name.strip()] = parsed
    if not grid:
        raise ConfigError("--grid: at least one SETTING=V1,V2,… is required")
    configs = math.prod(len(values) for values in grid.values())
    if configs > max_configs:
        raise ConfigError(
            f"--grid: {configs:,} configurations, more than the {max_configs:,} allowed "
            "(narrow the grid, or raise --max-configs)"
        )
    return grid


def parse_bounds(items: list[str]) -> dict[str, tuple[float, float]]:
    """`["worker.failure_threshold=2..20"]` → {"worker.failure_threshold": (2, 20)}."""
    bounds: dict[str, tuple[float, float]] = {}
    for item in items:
        name, sep, span = item.partition("=")
        low, dots, high = span.partition("..")
        try:
            if not sep or not dots:
                raise ValueError
            lowest, highest = float(low), float(high)
        except ValueError:
            raise ConfigError(f"--bound {item!r}: expected SETTING=LOW..HIGH") from None
        # nan compares false to everything: it would put every value outside the bound.
        if math.isnan(lowest) or math.isnan(highest) or lowest > highest:
            raise ConfigError(f"--bound {item!r}: expected LOW <= HIGH (inf is allowed)")
        setting_path(name)
        bounds[name.strip()] = (lowest, highest)
    return bounds


def nested(changes: dict[str, Value]) -> dict[str, Any]:
    """Flat `{"worker.failure_threshold": 3}` → the nested mapping a CONFIG_CHANGED holds."""
    out: dict[str, Any] = {}
    for name, value in changes.items():
        *parents, leaf = setting_path(name)
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@dataclass(frozen=True)
class Candidate:
    changes: dict[str, Value]  # flat, in grid order
    settings: CoreSettings


@dataclass(frozen=True)
class Rejected:
    changes: dict[str, Value]
    reason: str


def expand_grid(
    grid: dict[str, list[Value]],
    base: CoreSettings,
    bounds: dict[str, tuple[float, float]] | None = None,
) -> tuple[list[Candidate], list[Rejected]]:
    """Every combination as settings over `base`; invalid or out-of-bounds ones rejected."""
    names = list(grid)
    candidates: list[Candidate] = []
    rejected: list[Rejected] = []
    for values in itertools.product(*(grid[n] for n in names)):
        changes = dict(zip(names, values, strict=True))
        outside = _outside_bounds(changes, bounds or {})
        if outside:
            rejected.append(Rejected(changes, outside))
            continue
        try:
            settings = base.merged(nested(changes))
        except ConfigError as exc:
            rejected.append(Rejected(changes, str(exc).removeprefix("config: ")))
            continue
        candidates.append(Candidate(changes, settings))
    return candidates, rejected


def _outside_bounds(changes: dict[str, Value], bounds: dict[str, tuple[float, float]]) -> str:
    for name, value in changes.items():
        if name in bounds and isinstance(value, int | float):
            low, high = bounds[name]
            if not low <= value <= high:
                return f"{name}={value} outside the bound {low:g}..{high:g}"
    return ""


def current_value(settings: CoreSettings, name: str) -> Any:
    node: Any = settings.model_dump()
    for part in setting_path(name):
        node = node[part]
    return node
