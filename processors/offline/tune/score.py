"""How good one configuration was on a history: the tuner's scoring function.

A plain function of (inputs, the derived records the core produced under the settings,
the settings). "Open at T" means the circuit's newest transition strictly before T went
to OPEN or FORCED_OPEN, so an outcome never counts against the transition it caused.

- protected: FAILUREs that landed on their circuit (by attribution) while it was open;
- withheld: SUCCESSes with at least one of their three circuits open (capacity refused);
- detection delay: per CLOSED → OPEN, the time from the streak's first failure on that
  circuit (after its previous transition and its last success) to the opening; the mean;
- open time: circuit-seconds spent OPEN or FORCED_OPEN, up to the history's newest input;
- flapping: re-openings, HALF_OPEN → OPEN.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from faultstream.events.classify import classify_message
from faultstream.events.config import AttributionSettings, CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import (
    CircuitStateChanged,
    DerivedRecord,
    FailureType,
    InputRecord,
    received_at,
)

if TYPE_CHECKING:  # the compiled twin needs numba; the exact path does not
    from faultstream.processors.compiled import ScoreTotals

OPEN_STATES = frozenset({"OPEN", "FORCED_OPEN"})
_ID_FIELD = {"worker": "worker_id", "hardware_class": "hardware_class", "task_type": "task_type"}


@dataclass(frozen=True)
class Weights:
    """score = protection * protected - the others; higher is better. Per unit as named."""

    protection: float = 1.0  # per failure kept off an open circuit
    withheld: float = 1.0  # per success refused by an open circuit
    detection_delay: float = 0.05  # per second of mean detection delay
    open_time: float = 0.5  # per circuit-hour open
    flapping: float = 2.0  # per re-opening

    @classmethod
    def parse(cls, text: str) -> Weights:
        """`protection=2,flapping=0.5` (the rest keep their defaults)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep or name.strip() not in known:
                raise ConfigError(
                    f"--weights {item!r}: expected NAME=NUMBER with NAME one of {sorted(known)}"
                )
            try:
                weight = float(value)
            except ValueError:
                raise ConfigError(f"--weights {item!r}: {value!r} is not a number") from None
            # An inf or nan weight makes every score inf or nan: no winner could be chosen.
            if not math.isfinite(weight):
                raise ConfigError(f"--weights {item!r}: {value!r} is not a finite number")
            values[name.strip()] = weight
        return cls(**values)


@dataclass(frozen=True)
class Score:
    protected: int
    withheld: int
    openings: int
    detection_delay_s: float
    open_time_s: float
    flapping: int

    @classmethod
    def of(cls, totals: ScoreTotals) -> Score:
        """The score of the compiled twin's sums."""
        delays = totals.delays
        mean_delay_s = totals.delay_sum_ms / delays / 1000.0 if delays else 0.0
        return cls(
            totals.protected,
            totals.withheld,
            totals.openings,
            mean_delay_s,
            totals.open_ms / 1000.0,
            totals.flapping,
        )

    def total(self, weights: Weights | None = None) -> float:
        weights = weights or Weights()
        return (
            weights.protection * self.protected
            - weights.withheld * self.withheld
            - weights.detection_delay * self.detection_delay_s
            - weights.open_time * self.open_time_s / 3600.0
            - weights.flapping * self.flapping
        )


def score_history(
    inputs: Sequence[InputRecord], derived: Sequence[DerivedRecord], settings: CoreSettings
) -> Score:
    return score_outcomes(outcomes(inputs, settings.circuits.attribution), derived)


@dataclass(frozen=True)
class Outcomes:
    """The input side of the score: which outcomes count, on which circuits ("kind:id"),
    when. It depends only on the history and the attribution, so many configurations'
    derived records can be scored against one."""

    end_ts: int  # the newest input's decision time
    failures: list[tuple[int, str]]  # (ts, circuit), first occurrences in input order
    successes: list[tuple[int, tuple[str, str, str]]]  # (ts, its three circuits)
    fails_by_key: dict[str, list[int]]  # sorted
    oks_by_key: dict[str, list[int]]  # sorted


def outcomes(inputs: Sequence[InputRecord], attribution: AttributionSettings) -> Outcomes:
    circuit_of = {ft: attribution.circuit_for(ft).value for ft in FailureType}
    failures: list[tuple[int, str]] = []
    successes: list[tuple[int, tuple[str, str, str]]] = []
    fails_by_key: dict[str, list[int]] = defaultdict(list)
    oks_by_key: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    end_ts = 0
    for record in inputs:
        ts = received_at(record)
        if ts > end_ts:
            end_ts = ts
        kind = record.kind
        if kind != "FAILURE" and kind != "SUCCESS":
            continue
        identity = (record.worker_id, record.event_id)  # type: ignore[union-attr]
        if identity in seen:  # the core ignores a repeated event_id of a worker
            continue
        seen.add(identity)
        if kind == "FAILURE":
            failure_type = record.failure_type or classify_message(record.message)  # type: ignore[union-attr]
            circuit_kind = circuit_of[failure_type]
            key = f"{circuit_kind}:{getattr(record, _ID_FIELD[circuit_kind])}"
            failures.append((ts, key))
            fails_by_key[key].append(ts)
        else:
            keys = (
                f"worker:{record.worker_id}",  # type: ignore[union-attr]
                f"hardware_class:{record.hardware_class}",  # type: ignore[union-attr]
                f"task_type:{record.task_type}",  # type: ignore[union-attr]
            )
            successes.append((ts, keys))
            for key in keys:
                oks_by_key[key].append(ts)
    for values in (*fails_by_key.values(), *oks_by_key.values()):
        values.sort()
    return Outcomes(end_ts, failures, successes, dict(fails_by_key), dict(oks_by_key))


def score_outcomes(history: Outcomes, derived: Sequence[DerivedRecord]) -> Score:
    """The score of one configuration's derived records against the history's outcomes."""
    # Per circuit "kind:id": transition times, to-states and from-states, in order.
    times: dict[str, list[int]] = defaultdict(list)
    to_states: dict[str, list[str]] = defaultdict(list)
    from_states: dict[str, list[str]] = defaultdict(list)
    for record in derived:
        if isinstance(record, CircuitStateChanged):
            key = f"{record.circuit_kind}:{record.circuit_id}"
            times[key].append(record.ts)
            to_states[key].append(record.to_state.value)
            from_states[key].append(record.from_state.value)

    def open_at(key: str, ts: int) -> bool:
        at = times.get(key)
        if not at:  # only circuits that ever changed state can be open
            return False
        i = bisect_left(at, ts) - 1
        return i >= 0 and to_states[key][i] in OPEN_STATES

    protected = sum(open_at(key, ts) for ts, key in history.failures)
    withheld = sum(any(open_at(key, ts) for key in keys) for ts, keys in history.successes)
    openings = flapping = open_ms = 0
    delays: list[int] = []
    empty: list[int] = []
    for key, at in times.items():
        to, frm = to_states[key], from_states[key]
        for i, ts in enumerate(at):
            if to[i] in OPEN_STATES:
                end = at[i + 1] if i + 1 < len(at) else max(history.end_ts, ts)
                open_ms += max(0, end - ts)
            if to[i] != "OPEN":
                continue
            openings += 1
            if frm[i] == "HALF_OPEN":
                flapping += 1
            elif frm[i] == "CLOSED":
                fails = history.fails_by_key.get(key, empty)
                oks = history.oks_by_key.get(key, empty)
                delays.append(_detection_delay(ts, at[i - 1] if i else None, fails, oks))
    mean_delay_s = sum(delays) / len(delays) / 1000.0 if delays else 0.0
    return Score(protected, withheld, openings, mean_delay_s, open_ms / 1000.0, flapping)


def _detection_delay(opened: int, previous: int | None, fails: list[int], oks: list[int]) -> int:
    """Opening time minus the streak's first failure (0 when the streak has none)."""
    start = previous if previous is not None else -1
    last_ok = bisect_left(oks, opened) - 1
    if last_ok >= 0:
        start = max(start, oks[last_ok])
    first = bisect_right(fails, start)
    if first < len(fails) and fails[first] <= opened:
        return opened - fails[first]
    return 0


def score_map(score: Score) -> Mapping[str, float]:
    return {f.name: getattr(score, f.name) for f in fields(score)}
