"""One tuning round and the `--every` loop, with their guard rails.

A round: the settings in force at the end of the history (the configuration plus every
CONFIG_CHANGED in it) are scored beside every grid candidate on the history without its
CONFIG_CHANGED records (each candidate as if it had been in force throughout). A change
is proposed only when the history is big enough, the winner beats the current settings by
at least `min_improvement`, and (with a period) no `tune` change happened in the last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import ConfigChanged, InputRecord, received_at

from .apply import ACTOR
from .columns import ColumnarHistory, ColumnarInputs
from .grid import Candidate, Rejected, Value, current_value, expand_grid, nested
from .runner import Progress, Result, run_grid
from .score import Weights


@dataclass(frozen=True)
class TunePolicy:
    grid: dict[str, list[Value]]
    weights: Weights = field(default_factory=Weights)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    min_events: int = 100
    min_improvement: float = 0.0
    period_ms: int | None = None  # at most one change per period (with --every)
    window_ms: int | None = None  # the sliding window, back from the newest input
    processes: int | None = None
    exact: bool = False  # skip the compiled path: the core replays every configuration


@dataclass
class TuneRound:
    current: Result | None
    results: list[Result]
    rejected: list[Rejected]
    events: int
    proposal: dict[str, Any] | None = None  # the nested config to apply, if any
    reason: str = ""

    @property
    def best(self) -> Result | None:
        return self.results[0] if self.results else None


def settings_in_force(base: CoreSettings, history: Sequence[InputRecord]) -> CoreSettings:
    """`base` with every valid CONFIG_CHANGED of the history applied, in order (as the
    core does)."""
    settings = base
    for record in history:
        if record.kind == "CONFIG_CHANGED":
            try:
                settings = settings.merged(record.config)  # type: ignore[union-attr]
            except ConfigError:
                continue
    return settings


def tune_round(
    history: Sequence[InputRecord] | ColumnarHistory,
    base: CoreSettings,
    policy: TunePolicy,
    progress: Progress | None = None,
) -> TuneRound:
    """One round over `history`: records, or columns (a source's `input_columns`), whose
    records are built only if the compiled path refuses the history."""
    inputs: Sequence[InputRecord] | ColumnarInputs
    if isinstance(history, ColumnarHistory):
        newest = history.newest()
        if policy.window_ms is not None and newest is not None:
            history = history.since(newest - policy.window_ms)
        changes: Sequence[InputRecord] = history.config_changes()
        inputs = history.inputs()
        events = history.worker_events()
    else:
        newest = max(map(received_at, history), default=None)
        if policy.window_ms is not None and newest is not None:
            history = [r for r in history if received_at(r) >= newest - policy.window_ms]
        changes = [r for r in history if r.kind == "CONFIG_CHANGED"]
        inputs = [r for r in history if r.kind != "CONFIG_CHANGED"]
        events = sum(1 for r in inputs if r.kind not in ("TICK", "OPERATOR"))
    in_force = settings_in_force(base, changes)
    candidates, rejected = expand_grid(policy.grid, in_force, policy.bounds)
    now_values = {name: current_value(in_force, name) for name in policy.grid}
    current = Candidate(now_values, in_force)
    if not candidates:
        return TuneRound(None, [], rejected, events, reason="no valid configuration in the grid")
    ranked = run_grid(
        inputs,
        [current, *candidates],
        policy.weights,
        processes=policy.processes,
        progress=progress,
        exact=policy.exact,
    )
    current_result = next(r for r in ranked if r.candidate is current)
    results = [r for r in ranked if r.candidate is not current]
    outcome = TuneRound(current_result, results, rejected, events)
    outcome.proposal, outcome.reason = _propose(outcome, newest, changes, policy)
    return outcome


def _propose(
    outcome: TuneRound,
    newest: int | None,
    changes: Sequence[InputRecord],
    policy: TunePolicy,
) -> tuple[dict[str, Any] | None, str]:
    best, current = outcome.best, outcome.current
    assert best is not None and current is not None
    if outcome.events < policy.min_events:
        return None, f"history too small ({outcome.events} events < {policy.min_events})"
    if best.candidate.settings == current.candidate.settings:
        return None, "the current settings are already the best"
    gain = best.total - current.total
    if gain <= 0 or gain < policy.min_improvement:
        return None, f"improvement {gain:.3f} below the minimum {policy.min_improvement:g}"
    if policy.period_ms is not None and newest is not None:
        recent = [
            r
            for r in changes
            if isinstance(r, ConfigChanged)
            and r.actor == ACTOR
            and received_at(r) > newest - policy.period_ms
        ]
        if recent:
            return None, f"tune already changed the settings this period ({recent[-1].event_id})"
    changed = {
        name: value
        for name, value in best.candidate.changes.items()
        if value != current.candidate.changes.get(name)
    }
    return nested(changed), f"improvement {gain:.3f}"


def tune_every(
    load_history: Callable[[], Sequence[InputRecord] | ColumnarHistory],
    base: CoreSettings,
    policy: TunePolicy,
    apply: Callable[[dict[str, Any]], None],
    report: Callable[[TuneRound], None],
    *,
    period_s: float,
    max_rounds: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Repeat rounds every `period_s` (Ctrl-C stops); returns how many changes applied."""
    applied = rounds = 0
    while max_rounds is None or rounds < max_rounds:
        if rounds:
            sleep(period_s)
        outcome = tune_round(load_history(), base, policy)
        report(outcome)
        if outcome.proposal is not None:
            apply(outcome.proposal)
            applied += 1
        rounds += 1
    return applied
