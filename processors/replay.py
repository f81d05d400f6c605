"""Replay: a recorded history through one FleetCore, without Kafka.

`replay(records, settings)` is the whole idea; the rest are sources and sinks around it.
The other sources (`--db`, `--read-models`, `--from-kafka`) live in `sources.py`; `--diff`
compares against what really happened (`diff.py`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.jsonl import InvalidLineError, read_input_records
from faultstream.events.models import DerivedRecord, InputRecord, derived_to_json

from .core import FleetCore
from .diff import DiffReport, diff_derived
from .sources import ALL_TIME, HistorySource, Window

STDIO = "-"


def replay(
    records: Iterable[InputRecord],
    settings: CoreSettings | None = None,
    core: FleetCore | None = None,
) -> Iterator[DerivedRecord]:
    """Every derived record of the history, in the order the core produces them."""
    core = core if core is not None else FleetCore(settings)
    process = core.process
    for record in records:
        yield from process(record)


@dataclass
class ReplayStats:
    records_in: int = 0
    derived_out: int = 0
    invalid: list[InvalidLineError] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        return (
            f"replayed {self.records_in} records -> {self.derived_out} derived, "
            f"{len(self.invalid)} invalid skipped, {self.elapsed_s:.2f}s"
        )


class _Counted:
    """Counts records as they pass, so the summary needs no second pass."""

    def __init__(self, records: Iterable[InputRecord]) -> None:
        self.records = records
        self.count = 0

    def __iter__(self) -> Iterator[InputRecord]:
        for record in self.records:
            self.count += 1
            yield record


@contextmanager
def open_input(path: str) -> Iterator[IO[str]]:
    """A history file to read, or stdin for `-`."""
    if path == STDIO:
        yield sys.stdin
        return
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise FaultstreamError(f"--input {path}: cannot read ({exc.strerror})") from None
    with handle:
        yield handle


@contextmanager
def open_output(path: str | None) -> Iterator[IO[str]]:
    """Stdout, or a file that appears whole: written aside and renamed only on success."""
    if path is None or path == STDIO:
        yield sys.stdout
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        handle = partial.open("w", encoding="utf-8")
    except OSError as exc:
        raise FaultstreamError(f"--output {path}: cannot write ({exc.strerror})") from None
    try:
        with handle:
            yield handle
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_derived(records: Iterable[DerivedRecord], out: IO[str]) -> int:
    """Derived records as JSON lines; returns how many."""
    count = 0
    write = out.write
    for record in records:
        write(derived_to_json(record))
        write("\n")
        count += 1
    return count


def replay_jsonl(
    input_path: str,
    output_path: str | None,
    settings: CoreSettings | None = None,
    *,
    skip_invalid: bool = False,
) -> ReplayStats:
    """`faultstream replay --input`: a JSON Lines history to JSON Lines derived records.

    A bad line raises InvalidLineError (line number and field) unless `skip_invalid`.
    """
    stats = ReplayStats()
    started = time.perf_counter()
    with open_input(input_path) as source, open_output(output_path) as sink:
        records = _Counted(
            read_input_records(source, skip_invalid=skip_invalid, errors=stats.invalid)
        )
        stats.derived_out = write_derived(replay(records, settings), sink)
        stats.records_in = records.count
    stats.elapsed_s = time.perf_counter() - started
    return stats


def replay_source(
    source: HistorySource,
    output_path: str | None,
    settings: CoreSettings | None = None,
    window: Window = ALL_TIME,
) -> ReplayStats:
    """`faultstream replay --db/--read-models/--from-kafka`: any history source to JSON
    Lines derived records (CONFIG_CHANGED records in the history still apply)."""
    stats = ReplayStats()
    started = time.perf_counter()
    with open_output(output_path) as sink:
        records = _Counted(source.inputs(window))
        stats.derived_out = write_derived(replay(records, settings), sink)
        stats.records_in = records.count
    stats.elapsed_s = time.perf_counter() - started
    return stats


def replay_diff(
    source: HistorySource,
    output_path: str | None,
    settings: CoreSettings,
    window: Window = ALL_TIME,
) -> DiffReport:
    """`faultstream replay --diff`: what `settings` would have done differently from the
    derived records the source holds (what really happened), one change per line, then
    a summary line."""
    actual = source.derived(window)
    if actual is None:
        raise FaultstreamError(
            f"--diff needs a history that holds what really happened ({source.name} holds "
            "only inputs): use --db, --read-models or --from-kafka"
        )
    actual_records = list(actual)
    report = diff_derived(actual_records, replay(source.inputs(window), settings))
    with open_output(output_path) as sink:
        for line in report.lines():
            sink.write(line)
            sink.write("\n")
        sink.write(f"summary: {report.summary()}\n")
    return report
