"""The settings a replay runs under, as tables the kernel indexes by settings version.

Version 0 is the initial settings; each CONFIG_CHANGED the core applies makes the next
one. `CoreSettings.merged` depends only on the settings in force, never on the core's
state, so every version is resolved here, before the replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import CircuitKind
from faultstream.processors.core import fleet as core_fleet
from faultstream.processors.core.circuit import CircuitParams

from .codes import BACKOFF_STEPS, attribution_ranks


class Rules(NamedTuple):
    """Every settings version's numbers, and where the history switches between them."""

    # int64 per input: the version a CONFIG_CHANGED switches to, else -1 (empty when the
    # history holds no CONFIG_CHANGED: the kernel reads it at those records only)
    config_version: np.ndarray
    failure_threshold: np.ndarray  # int64 [version, rank]
    success_threshold: np.ndarray  # int64 [version, rank]
    recovery_timeout_s: np.ndarray  # float64 [version, rank]
    backoff_s: np.ndarray  # float64 [version, rank, step]: reset_timeout_s after trip step+1
    backoff_len: np.ndarray  # int64 [version, rank]
    backoff_done: np.ndarray  # int64 [version, rank]: 1 = the last step repeats forever
    ranks: np.ndarray  # int64 [version, failure type]: the rank of the circuit it counts on
    max_retries: np.ndarray  # int64 [version]
    min_samples: np.ndarray  # int64 [version]: adaptive_min_samples while adaptive, else 0
    heartbeat_ms: np.ndarray  # float64 [version]: heartbeat_timeout_s x 1000
    guard_fraction: np.ndarray  # float64 [version]: the fleet guard's max_open_fraction
    guard_min: np.ndarray  # int64 [version]: the fleet guard's guard_min_workers
    # The sliding window (circuit.py `CircuitParams`), per [version, rank]:
    window_on: np.ndarray  # int64: 1 = the failure-rate or slow-call rule is on
    window_count: np.ndarray  # int64: a count window's size; 0 for a time window
    window_ms: np.ndarray  # float64: a time window's span
    minimum_calls: np.ndarray  # int64
    failure_rate: np.ndarray  # float64: percent; 0 = off
    slow_ms: np.ndarray  # float64: a success at least this long is slow; 0 = off
    slow_rate: np.ndarray  # float64: percent
    # Outlier ejection, per [version]: worker outlier_stdev_factor (0 = off), interval ms,
    # minimum hosts, request volume; and what switching to a version does to the boundary
    # timer (fleet.py `_outliers_changed`): 1 = a new one from now, 1 = none any more.
    outlier_factor: np.ndarray  # float64
    outlier_ms: np.ndarray  # float64
    outlier_hosts: np.ndarray  # int64
    outlier_volume: np.ndarray  # int64
    outlier_restart: np.ndarray  # int64
    outlier_stop: np.ndarray  # int64
    awaited_commands: np.ndarray  # int64 [1]: fleet.py AWAITED_COMMANDS, the trials kept
    # The alert rules (0 = off) and what a CONFIG_CHANGED switching to a version changed:
    capacity_below: np.ndarray  # float64 [version]: class_capacity_below, percent
    open_longer_ms: np.ndarray  # float64 [version]: open_longer_than_s x 1000
    escalations: np.ndarray  # int64 [version]: 1 = escalations alert
    health_below: np.ndarray  # float64 [version]: fleet_health_below
    skew_ms: np.ndarray  # float64 [version]: max_skew_s x 1000
    skew_alerts: np.ndarray  # int64 [version]: 1 = clock_skew fires (it resolves either way)
    alerts_changed: np.ndarray  # int64 [version]: its [alerts] differ from the version before
    open_longer_changed: np.ndarray  # int64 [version]: its open_longer_than_s differs


@dataclass(frozen=True)
class Versions:
    settings: list[CoreSettings]  # by version
    rules: Rules


_NO_SWITCHES = np.zeros(0, np.int64)


def settings_versions(
    initial: CoreSettings, configs: list[tuple[int, dict[str, Any]]], skip: np.ndarray
) -> Versions:
    """The settings after each CONFIG_CHANGED (`configs`: record index, config) the core
    applies: a repeat (`skip`) is not applied, an invalid one is ignored as FleetCore
    ignores it."""
    settings = [initial]
    config_version = np.full(len(skip), -1, np.int64) if configs else _NO_SWITCHES
    for i, config in configs:
        if skip[i]:
            continue
        try:
            settings.append(settings[-1].merged(config))
        except ConfigError:
            continue
        config_version[i] = len(settings) - 1
    return Versions(settings, _rules(settings, config_version))


def _rules(settings: list[CoreSettings], config_version: np.ndarray) -> Rules:
    n = len(settings)
    workers = [s.circuits.worker for s in settings]
    params = [[CircuitParams.of(s.circuits.for_kind(k)) for k in CircuitKind] for s in settings]
    backoffs = [[_backoff(p) for p in row] for row in params]
    width = max(len(table) for row in backoffs for table, _ in row)
    backoff_s = np.zeros((n, 3, width))
    backoff_len = np.zeros((n, 3), np.int64)
    backoff_done = np.zeros((n, 3), np.int64)
    for v, row in enumerate(backoffs):
        for rank, (table, done) in enumerate(row):
            backoff_s[v, rank, : len(table)] = table
            backoff_len[v, rank] = len(table)
            backoff_done[v, rank] = done
    return Rules(
        config_version,
        np.array([[p.failure_threshold for p in row] for row in params], np.int64),
        np.array([[p.success_threshold for p in row] for row in params], np.int64),
        np.array([[p.recovery_timeout_s for p in row] for row in params], np.float64),
        backoff_s,
        backoff_len,
        backoff_done,
        np.array([attribution_ranks(s.circuits.attribution) for s in settings], np.int64),
        np.array([s.recovery.max_retries for s in settings], np.int64),
        np.array(
            [s.recovery.adaptive_min_samples if s.recovery.adaptive else 0 for s in settings],
            np.int64,
        ),
        np.array([s.recovery.heartbeat_timeout_s * 1000.0 for s in settings], np.float64),
        np.array([s.circuits.worker.max_open_fraction for s in settings], np.float64),
        np.array([s.circuits.worker.guard_min_workers for s in settings], np.int64),
        np.array([[p.window_on for p in row] for row in params], np.int64),
        np.array([[p.window_count for p in row] for row in params], np.int64),
        np.array([[p.window_ms for p in row] for row in params], np.float64),
        np.array([[p.minimum_calls for p in row] for row in params], np.int64),
        np.array([[p.failure_rate_threshold for p in row] for row in params], np.float64),
        np.array([[p.slow_ms for p in row] for row in params], np.float64),
        np.array([[p.slow_rate_threshold for p in row] for row in params], np.float64),
        np.array([w.outlier_stdev_factor for w in workers], np.float64),
        np.array([w.outlier_interval_s * 1000.0 for w in workers], np.float64),
        np.array([w.outlier_minimum_hosts for w in workers], np.int64),
        np.array([w.outlier_request_volume for w in workers], np.int64),
        np.array(
            [0]
            + [
                int(
                    b.outlier_stdev_factor > 0
                    and (
                        a.outlier_stdev_factor == 0 or b.outlier_interval_s != a.outlier_interval_s
                    )
                )
                for a, b in pairwise(workers)
            ],
            np.int64,
        ),
        np.array(
            [0]
            + [
                int(a.outlier_stdev_factor > 0 and b.outlier_stdev_factor == 0)
                for a, b in pairwise(workers)
            ],
            np.int64,
        ),
        np.array([core_fleet.AWAITED_COMMANDS], np.int64),  # read now: a test may lower it
        np.array([s.alerts.class_capacity_below for s in settings], np.float64),
        np.array([s.alerts.open_longer_than_s * 1000.0 for s in settings], np.float64),
        np.array([int(s.alerts.escalations) for s in settings], np.int64),
        np.array([s.alerts.fleet_health_below for s in settings], np.float64),
        np.array([s.clock.max_skew_s * 1000.0 for s in settings], np.float64),
        np.array([int(s.alerts.clock_skew) for s in settings], np.int64),
        np.array([0] + [int(a.alerts != b.alerts) for a, b in pairwise(settings)], np.int64),
        np.array(
            [0]
            + [
                int(a.alerts.open_longer_than_s != b.alerts.open_longer_than_s)
                for a, b in pairwise(settings)
            ],
            np.int64,
        ),
    )


def _backoff(params: CircuitParams) -> tuple[list[float], bool]:
    """`reset_timeout_s` for trips 1, 2, … by the core's own `backoff_s`; complete once it
    stays at the cap (every later trip waits the same)."""
    table: list[float] = []
    cap = params.max_reset_timeout_s
    for trips in range(1, BACKOFF_STEPS + 1):
        table.append(params.backoff_s(trips))
        if params.reset_timeout_factor == 1.0 or table[-1] == cap:
            return table, True
    return table, False
