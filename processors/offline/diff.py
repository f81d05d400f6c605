"""What other settings would have done differently from what really happened.

Derived records are matched by key — `(circuit_state_changed, kind:id, to_state)`,
`(recovery_command, task_id, strategy)` or `(alert, subject_kind:subject_id, rule state)`
— and, within a key, by their order of
occurrence: the n-th OPEN of `worker:w1` really happened against the n-th OPEN of
`worker:w1` under the other settings. A pair at different times has moved; what is left
over was added (only under the other settings) or removed (only in reality).
Decisions only: `circuit_figures` records (what the core counts, not what it decided) are
left out on both sides. Alerts are decisions (which rule judged what, and when) and are
compared; a history written before alerts existed holds none, so there every alert the
other settings raise shows as added.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from faultstream.events.models import Alert, CircuitFigures, CircuitStateChanged, DerivedRecord

Key = tuple[str, str, str]


def derived_key(record: DerivedRecord) -> Key:
    if isinstance(record, CircuitStateChanged):
        return ("circuit_state_changed", record.key, str(record.to_state))
    if isinstance(record, Alert):
        subject = f"{record.subject_kind}:{record.subject_id}"
        return ("alert", subject, f"{record.rule} {record.state}")
    return ("recovery_command", record.task_id, str(record.strategy))


_LABELS = {"circuit_state_changed": "circuit", "recovery_command": "task", "alert": "alert"}


@dataclass(frozen=True)
class Change:
    kind: str  # "added", "removed" or "moved"
    key: Key
    actual_ts: int | None  # when it really happened (None when added)
    other_ts: int | None  # when it would have happened (None when removed)

    @property
    def ts(self) -> int:
        return self.other_ts if self.actual_ts is None else self.actual_ts

    def describe(self) -> str:
        record_type, subject, what = self.key
        label = _LABELS[record_type]
        if self.kind == "moved":
            shift = (self.other_ts - self.actual_ts) / 1000  # type: ignore[operator]
            when = f"{_iso(self.actual_ts)} -> {_iso(self.other_ts)} ({shift:+.3f}s)"
        else:
            when = _iso(self.ts)
        return f"{self.kind:<7} {label} {subject} {what} at {when}"


@dataclass
class DiffReport:
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for change in self.changes if change.kind == kind)

    def summary(self) -> str:
        return (
            f"{self.count('added')} added, {self.count('removed')} removed, "
            f"{self.count('moved')} moved, {self.unchanged} unchanged"
        )

    def lines(self) -> Iterator[str]:
        for change in self.changes:
            yield change.describe()


def diff_derived(actual: Iterable[DerivedRecord], other: Iterable[DerivedRecord]) -> DiffReport:
    """The changes from `actual` to `other`, ordered by time."""
    actual_times = _times_by_key(actual)
    other_times = _times_by_key(other)
    report = DiffReport()
    for key in actual_times.keys() | other_times.keys():
        before, after = actual_times.get(key, []), other_times.get(key, [])
        for then, now in zip(before, after, strict=False):
            if then == now:
                report.unchanged += 1
            else:
                report.changes.append(Change("moved", key, then, now))
        for then in before[len(after) :]:
            report.changes.append(Change("removed", key, then, None))
        for now in after[len(before) :]:
            report.changes.append(Change("added", key, None, now))
    report.changes.sort(key=lambda c: (c.ts, c.key, c.kind))
    return report


def _times_by_key(records: Iterable[DerivedRecord]) -> dict[Key, list[int]]:
    times: dict[Key, list[int]] = defaultdict(list)
    for record in records:
        if type(record) is CircuitFigures:
            continue
        times[derived_key(record)].append(record.ts)
    for values in times.values():
        values.sort()
    return times


def _iso(ts: int | None) -> str:
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
