"""Replay: a recorded history through the core, without Kafka.

`replay(records, settings)` is the whole idea; the rest are sources and sinks around it.
Two engines give the same bytes: `FleetCore`, the specification, one record at a time;
and the compiled core (`compiled/`), one numba loop over a whole history, property-tested
byte for byte against it. `auto` takes the compiled core when the source reads as
columns (no object per record, `replay_history`) and FleetCore otherwise, or when the
compiled core cannot be exact. The sources (`--input`, `--db`, `--read-models`,
`--from-kafka`) live in `sources.py`; `--diff` compares against what really happened
(`diff.py`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Literal, NoReturn

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.gcpause import gc_paused
from faultstream.events.jsonl import InvalidLineError
from faultstream.events.models import DerivedRecord, InputRecord, derived_to_json
from faultstream.processors.core import FleetCore

from .diff import DiffReport, diff_derived
from .sources import ALL_TIME, REPLAY_COLUMNS, HistorySource, Window

STDIO = "-"
Engine = Literal["auto", "compiled", "core"]
# From records, the compiled core holds the whole history as objects (~1.5 KB each).
COMPILED_MAX_RECORDS = 1_000_000


def replay(
    records: Iterable[InputRecord],
    settings: CoreSettings | None = None,
    core: FleetCore | None = None,
    *,
    engine: Engine = "auto",
    used: list[str] | None = None,
) -> Iterator[DerivedRecord]:
    """Every derived record of the history, in the order the core produces them.

    From records, `auto` means FleetCore: turning a record into the compiled core's
    columns costs about as much as FleetCore's whole step, so the compiled core pays only
    from columns (`replay_history`). `compiled` is there to compare the two. A given
    `core` (state to continue from) means FleetCore. `used`, when given, gets one line
    saying which engine ran and, for a fallback, why.
    """
    note = used.append if used is not None else (lambda _: None)
    if core is not None or engine != "compiled":
        note("FleetCore")
        yield from _replay_core(records, core or FleetCore(settings))
        return
    rest = iter(records)
    with gc_paused():
        head = list(islice(rest, COMPILED_MAX_RECORDS + 1))
        if len(head) > COMPILED_MAX_RECORDS:
            _refuse(f"over {COMPILED_MAX_RECORDS:,} records, more than it holds in memory")
        from faultstream.processors.compiled import UnsupportedHistory, replay_compiled

        try:
            derived = replay_compiled(head, settings)
        except UnsupportedHistory as exc:
            _refuse(str(exc))
    note("compiled core")
    yield from derived


def replay_history(
    source: HistorySource,
    settings: CoreSettings | None = None,
    window: Window = ALL_TIME,
    *,
    engine: Engine = "auto",
    used: list[str] | None = None,
    counted: list[int] | None = None,
) -> Iterator[DerivedRecord]:
    """`replay` over a history source: by the compiled core straight from its columns
    when the source has them (no object per record), by FleetCore over its records
    otherwise or when the compiled core cannot be exact. `counted` gets the number of
    input records once they are all read."""
    note = used.append if used is not None else (lambda _: None)
    why = "engine core"
    table = None if engine == "core" else source.input_columns(window, REPLAY_COLUMNS)
    if table is not None:
        from faultstream.processors.compiled import UnsupportedHistory, replay_compiled_table

        try:
            derived = replay_compiled_table(table, settings)
        except UnsupportedHistory as exc:
            if engine == "compiled":
                _refuse(str(exc))
            why = str(exc)
        else:
            note("compiled core, from columns")
            if counted is not None:
                counted.append(table.num_rows)
            yield from derived
            return
    elif engine != "core":
        why = f"{source.name} gives records, not columns"
    records = _Counted(source.inputs(window))
    if engine == "compiled":
        yield from replay(records, settings, engine="compiled", used=used)
    else:
        note("FleetCore" if engine == "core" else f"FleetCore ({why})")
        yield from _replay_core(records, FleetCore(settings))
    if counted is not None:
        counted.append(records.count)


def _refuse(why: str) -> NoReturn:
    raise FaultstreamError(
        f"--engine compiled cannot replay this history exactly ({why}); use --engine auto or core"
    )


def _replay_core(records: Iterable[InputRecord], core: FleetCore) -> Iterator[DerivedRecord]:
    process = core.process
    for record in records:
        yield from process(record)


@dataclass
class ReplayStats:
    records_in: int = 0
    derived_out: int = 0
    invalid: list[InvalidLineError] = field(default_factory=list)
    elapsed_s: float = 0.0
    engine: list[str] = field(default_factory=list)  # which one ran (see `replay`)

    def summary(self) -> str:
        by = f" by {self.engine[0]}" if self.engine else ""
        return (
            f"replayed {self.records_in} records -> {self.derived_out} derived{by}, "
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


def replay_source(
    source: HistorySource,
    output_path: str | None,
    settings: CoreSettings | None = None,
    window: Window = ALL_TIME,
    *,
    engine: Engine = "auto",
) -> ReplayStats:
    """`faultstream replay`: any history source to JSON Lines derived records
    (CONFIG_CHANGED records in the history still apply)."""
    stats = ReplayStats()
    started = time.perf_counter()
    counted: list[int] = []
    with open_output(output_path) as sink:
        derived = replay_history(
            source, settings, window, engine=engine, used=stats.engine, counted=counted
        )
        stats.derived_out = write_derived(derived, sink)
    stats.records_in = counted[0] if counted else 0
    stats.invalid = getattr(source, "invalid", stats.invalid)
    stats.elapsed_s = time.perf_counter() - started
    return stats


def replay_diff(
    source: HistorySource,
    output_path: str | None,
    settings: CoreSettings,
    window: Window = ALL_TIME,
    *,
    engine: Engine = "auto",
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
    report = diff_derived(actual_records, replay_history(source, settings, window, engine=engine))
    with open_output(output_path) as sink:
        for line in report.lines():
            sink.write(line)
            sink.write("\n")
        sink.write(f"summary: {report.summary()}\n")
    return report
