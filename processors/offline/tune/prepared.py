"""The scoring function's fast path for many configurations over one history.

The input side of `score_history` (which outcomes, on which circuits, when) depends only
on the history and the attribution, so it is prepared once and shared by every
configuration; each configuration then only brings its derived records. It must give
exactly `score_history`'s answer (a property test checks it).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from faultstream.events.classify import classify_message
from faultstream.events.config import AttributionSettings
from faultstream.events.models import CircuitStateChanged, DerivedRecord, InputRecord, received_at

from .score import _ID_FIELD, OPEN_STATES, Score, _detection_delay


@dataclass(frozen=True)
class PreparedHistory:
    end_ts: int
    failures: list[tuple[int, str]]  # (ts, circuit key), first occurrences in input order
    successes: list[tuple[int, tuple[str, str, str]]]
    fails_by_key: dict[str, list[int]]  # sorted
    oks_by_key: dict[str, list[int]]  # sorted


def prepare(inputs: Sequence[InputRecord], attribution: AttributionSettings) -> PreparedHistory:
    circuit_of = {ft: attribution.circuit_for(ft).value for ft in _all_failure_types()}
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
        if identity in seen:
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
    return PreparedHistory(end_ts, failures, successes, dict(fails_by_key), dict(oks_by_key))


def score_prepared(history: PreparedHistory, derived: Sequence[DerivedRecord]) -> Score:
    times: dict[str, list[int]] = defaultdict(list)
    to_states: dict[str, list[str]] = defaultdict(list)
    from_states: dict[str, list[str]] = defaultdict(list)
    for record in derived:
        if isinstance(record, CircuitStateChanged):
            key = f"{record.circuit_kind}:{record.circuit_id}"
            times[key].append(record.ts)
            to_states[key].append(record.to_state.value)
            from_states[key].append(record.from_state.value)
    # Only circuits that ever changed state can be open: check outcomes on those alone.
    protected = 0
    for ts, key in history.failures:
        at = times.get(key)
        if at:
            i = bisect_left(at, ts) - 1
            protected += i >= 0 and to_states[key][i] in OPEN_STATES
    withheld = 0
    for ts, keys in history.successes:
        for key in keys:
            at = times.get(key)
            if at:
                i = bisect_left(at, ts) - 1
                if i >= 0 and to_states[key][i] in OPEN_STATES:
                    withheld += 1
                    break
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


def _all_failure_types() -> list:
    from faultstream.events.models import FailureType

    return list(FailureType)
