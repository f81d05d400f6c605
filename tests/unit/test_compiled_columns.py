"""The compiled core from columns (`replay_compiled_table`) against the specification:
for histories written to a DuckDB file, and published as the read models, replaying the
source's `input_columns(window, REPLAY_COLUMNS)` gives FleetCore's derived records over the
same source's `inputs(window)`, byte for byte; plus the hard spots as named scenarios.

Each DuckDB write costs tens of milliseconds, so the property tests run few examples
here; `COLUMNS_EXAMPLES=500 pytest tests/unit/test_compiled_columns.py` runs many.
"""

from __future__ import annotations

import os
import tempfile
from operator import attrgetter
from pathlib import Path

import numpy as np
import pytest
from histories import History, commands, moves, transitions
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_compiled_core import build, core_lines, replay_settings, step

from faultstream.events.config import CoreSettings
from faultstream.events.models import InputRecord, Operator, derived_to_json
from faultstream.processors.compiled import (
    Encoded,
    UnsupportedHistory,
    encode_history,
    encode_table,
    replay_compiled_table,
)
from faultstream.processors.offline.sources import (
    ALL_TIME,
    INPUT_COLUMNS,
    REPLAY_COLUMNS,
    DuckDBSource,
    ReadModelsSource,
    Window,
)
from faultstream.projections.read_models import ReadModelPublisher
from faultstream.projections.tables import HistoryWriter

EXAMPLES = int(os.environ.get("COLUMNS_EXAMPLES", "60"))


def written(records: list[InputRecord], directory: str, seqs: list[int] | None = None) -> str:
    """The history as the embedded pipeline stores it (a repeated record is stored once)."""
    path = f"{directory}/history.duckdb"
    writer = HistoryWriter(path)
    writer.append_inputs(records, seqs if seqs is not None else range(len(records)))
    writer.close()
    return path


def published(records: list[InputRecord], directory: str) -> str:
    """The history as the projector publishes it: Parquet read models."""
    writer = HistoryWriter(f"{directory}/history.duckdb")
    writer.append_inputs(records, range(len(records)))
    writer.flush()
    ReadModelPublisher(writer.con, f"{directory}/read-models").publish()
    writer.close()
    return f"{directory}/read-models"


def table_lines(source, window: Window = ALL_TIME, core: CoreSettings | None = None) -> list[str]:
    table = source.input_columns(window, REPLAY_COLUMNS)
    return [derived_to_json(out) for out in replay_compiled_table(table, core)]


def a_window(records: list[InputRecord], since: int, until: int) -> Window:
    """A window cutting the history at two of its own timestamps (or left open)."""
    stamps = sorted({r.ts for r in records})
    pick = (lambda k: stamps[k % len(stamps)] if k >= 0 else None) if stamps else None
    return Window(pick(since), pick(until)) if pick else Window()


def assert_same_encoding(from_columns: Encoded, from_records: Encoded) -> None:
    for part in ("inputs", "fleet", "versions.rules"):
        a, b = attrgetter(part)(from_records), attrgetter(part)(from_columns)
        for name in a._fields:
            x, y = getattr(a, name), getattr(b, name)
            same = np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
            assert same, f"{part}.{name}"
    for name in ("names", "configs", "end_ts", "commands"):
        assert getattr(from_records, name) == getattr(from_columns, name), name
    assert from_columns.versions.settings == from_records.versions.settings


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(step, min_size=10, max_size=120).map(build),
    replay_settings(),
    st.integers(-1, 200),
    st.integers(-1, 200),
)
def test_replay_from_duckdb_columns_equals_fleet_core_over_its_records(
    records: list[InputRecord], core: CoreSettings, since: int, until: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        source = DuckDBSource(written(records, directory))
        window = a_window(records, since, until)
        stored = list(source.inputs(window))
        table = source.input_columns(window, REPLAY_COLUMNS)
    expected = core_lines(stored, core)
    try:
        from_records = encode_history(stored, core)
    except UnsupportedHistory as exc:  # only ever for a rounding tie the kernel cannot tell
        with pytest.raises(UnsupportedHistory):
            encode_table(table, core)
        event(f"unsupported: {exc}")
        return
    assert_same_encoding(encode_table(table, core), from_records)
    try:
        got = [derived_to_json(out) for out in replay_compiled_table(table, core)]
    except UnsupportedHistory as exc:
        assert "rounding" in str(exc)
        event("unsupported: rounding tie")
        return
    assert got == expected


@settings(
    max_examples=max(1, EXAMPLES // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(step, min_size=10, max_size=120).map(build), replay_settings())
def test_replay_from_read_model_columns_equals_fleet_core_over_its_records(
    records: list[InputRecord], core: CoreSettings
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        source = ReadModelsSource(published(records, directory))
        expected = core_lines(list(source.inputs()), core)
        try:
            got = table_lines(source, core=core)
        except UnsupportedHistory as exc:
            assert "rounding" in str(exc)
            return
    assert got == expected


def ladder_history() -> list[InputRecord]:
    """Out-of-memory failures whose attributes allow the reduced rungs, a settings change,
    operators by two actors, a silence that loses a worker with a started task."""
    h = History()
    h.heartbeat("w2", 1_000)
    h.failure("w1", 1_000, "RESOURCE_EXHAUSTION", attributes={"batch_size": "64"})
    h.failure("w1", 2_000, "RESOURCE_EXHAUSTION", attempt=1, attributes={"precision": "bf16"})
    h.failure(
        "w3", 2_500, "RESOURCE_EXHAUSTION", hardware_class="rocm",
        attributes={"batch_size": "1", "precision": "fp32", "model": "bert-large"},
    )  # fmt: skip
    h.config(3_000, {"circuits": {"task_type": {"failure_threshold": 2}}})
    h.failure("w1", 3_500, "TIMEOUT")
    h.failure("w1", 3_600, "TIMEOUT")  # the task_type circuit opens at the new threshold
    h.records.append(
        Operator(
            event_id="op-bob", ts=4_000, action="FORCE_OPEN", circuit_kind="worker",
            circuit_id="w2", actor="bob",
        )
    )  # fmt: skip
    h.operator("RESET", "worker", "w2", 5_000)  # by alice
    h.started("w1", 6_000, task_id="t-moved")
    h.checkpoint("w1", 6_100, 4, task_id="t-moved")
    h.heartbeat("w2", 30_000)
    h.tick(40_000)  # w1 silent over 30 s: t-moved migrates to w2 with checkpoint 4
    return h.records


def test_ladder_attributes_settings_changes_and_operators_replay_from_duckdb(tmp_path) -> None:
    records = ladder_history()
    source = DuckDBSource(written(records, str(tmp_path)))
    table = source.input_columns(columns=REPLAY_COLUMNS)
    outputs = replay_compiled_table(table)
    got = [c.strategy.value for c in commands(outputs)[:3]]
    assert got == ["REDUCED_BATCH_SIZE", "REDUCED_PRECISION", "REDUCED_PRECISION"]
    assert [c.parameters for c in commands(outputs)[:3]] == [
        {"batch_size": "32"},
        {"precision": "int8"},
        {"precision": "fp16"},
    ]
    assert ("task_type", "bert", "CLOSED", "OPEN") in moves(outputs)
    reasons = [t.reason for t in transitions(outputs) if t.circuit_id == "w2"]
    assert reasons == ["operator FORCE_OPEN by bob", "operator RESET by alice"]
    migrated = commands(outputs)[-1]
    assert (migrated.task_id, migrated.target_worker_id, migrated.checkpoint_seq) == (
        "t-moved",
        "w2",
        4,
    )
    assert [derived_to_json(o) for o in outputs] == core_lines(list(source.inputs()))


def test_window_replays_only_the_inputs_inside_since_and_until(tmp_path) -> None:
    records = ladder_history()
    source = DuckDBSource(written(records, str(tmp_path)))
    window = Window(since=2_000, until=6_000)
    inside = list(source.inputs(window))
    assert [r.ts for r in inside] == [r.ts for r in records if 2_000 <= r.ts < 6_000]
    assert table_lines(source, window) == core_lines(inside)
    assert table_lines(source, window) != table_lines(source)


def test_events_stored_out_of_seq_order_are_read_in_seq_order(tmp_path) -> None:
    records = ladder_history()
    seqs = list(range(len(records)))[::-1]  # stored last-first: the reader must sort
    source = DuckDBSource(written(records[::-1], str(tmp_path), seqs))
    table = source.input_columns(columns=REPLAY_COLUMNS)
    assert table["event_id"].to_pylist() == [r.event_id for r in records]
    assert table_lines(source) == core_lines(records)


def test_a_batch_size_of_digits_int_refuses_skips_the_rung_as_the_core_does(tmp_path) -> None:
    h = History()
    for n in range(3):  # "²" is a digit to str.isdigit, and int() refuses it
        h.failure("w1", 1_000 + n, "RESOURCE_EXHAUSTION", attributes={"batch_size": "²"})
    source = DuckDBSource(written(h.records, str(tmp_path)))
    derived = replay_compiled_table(source.input_columns(columns=REPLAY_COLUMNS))
    assert [derived_to_json(r) for r in derived] == core_lines(h.records)
    assert "REDUCED_BATCH_SIZE" not in "".join(core_lines(h.records))


def test_tuner_columns_alone_are_refused_naming_what_is_missing(tmp_path) -> None:
    source = DuckDBSource(written(ladder_history(), str(tmp_path)))
    table = source.input_columns()
    assert table.column_names == list(INPUT_COLUMNS)
    with pytest.raises(ValueError, match="attempt, checkpoint_seq, batch_size, precision"):
        replay_compiled_table(table)


def test_bench_history_replays_identically_from_duckdb(tmp_path) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "histories.py"
    spec = importlib.util.spec_from_file_location("bench_histories", path)
    bench = importlib.util.module_from_spec(spec)  # not tests/histories.py, same name
    spec.loader.exec_module(bench)
    records = bench.fleet_history(workers=200, events=20_000)
    source = DuckDBSource(written(records, str(tmp_path)))
    assert table_lines(source) == core_lines(records)
