"""Replay from every history source gives the same derived records as from the JSON
Lines the history came from; `--since/--until`; `--diff` against what really happened."""

from __future__ import annotations

from pathlib import Path

import pytest

from faultstream.cli import main
from faultstream.cli.simulate import run_embedded_simulation
from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.jsonl import read_input_records
from faultstream.events.models import derived_to_json
from faultstream.events.times import parse_time
from faultstream.processors.offline import sources
from faultstream.processors.offline.diff import diff_derived
from faultstream.processors.offline.replay import replay
from faultstream.processors.offline.sources import (
    INPUT_COLUMNS,
    DuckDBSource,
    JsonlSource,
    ReadModelsSource,
    Window,
)
from faultstream.projections.read_models import ReadModelPublisher
from faultstream.projections.tables import HistoryWriter


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A simulated fleet's history, both as JSON Lines (the tap) and as the DuckDB file
    the embedded pipeline wrote."""
    directory = tmp_path_factory.mktemp("recorded")
    jsonl, db = directory / "history.jsonl", directory / "history.duckdb"
    with jsonl.open("w", encoding="utf-8") as tap:
        run_embedded_simulation(
            core_settings=CoreSettings(),
            seed=3,
            workers=12,
            duration_ms=30 * 60_000,
            writer=HistoryWriter(db),
            tap=tap,
        )
    return jsonl, db


def replayed(records) -> list[str]:
    return [derived_to_json(record) for record in replay(records, CoreSettings())]


def test_replay_from_duckdb_equals_replay_from_its_json_lines(recorded) -> None:
    jsonl, db = recorded
    from_file = replayed(JsonlSource(str(jsonl)).inputs())
    from_db = replayed(DuckDBSource(str(db)).inputs())
    assert len(from_file) > 10
    assert from_db == from_file


def test_duckdb_inputs_are_the_recorded_inputs_in_order(recorded) -> None:
    jsonl, db = recorded
    with jsonl.open(encoding="utf-8") as handle:
        expected = [r.model_dump() for r in read_input_records(handle)]
    assert [r.model_dump() for r in DuckDBSource(str(db)).inputs()] == expected


def test_replay_from_read_models_equals_replay_from_duckdb(recorded, tmp_path) -> None:
    import duckdb

    _, db = recorded
    con = duckdb.connect(str(db), read_only=True)
    ReadModelPublisher(con, tmp_path / "read-models").publish()
    con.close()
    from_models = replayed(ReadModelsSource(str(tmp_path / "read-models")).inputs())
    assert from_models == replayed(DuckDBSource(str(db)).inputs())


def test_what_really_happened_in_duckdb_is_what_replay_derives(recorded) -> None:
    _, db = recorded
    source = DuckDBSource(str(db))
    report = diff_derived(source.derived(), replay(source.inputs(), CoreSettings()))
    assert report.changes == []
    assert report.unchanged > 10


def test_since_and_until_keep_only_inputs_in_the_window(recorded) -> None:
    jsonl, db = recorded
    all_ts = [r.ts for r in JsonlSource(str(jsonl)).inputs()]
    since, until = all_ts[len(all_ts) // 4], all_ts[len(all_ts) // 2]
    window = Window(since, until)
    from_db = [r.ts for r in DuckDBSource(str(db)).inputs(window)]
    from_file = [r.ts for r in JsonlSource(str(jsonl)).inputs(window)]
    assert from_db == from_file == [ts for ts in all_ts if since <= ts < until]


def test_time_takes_epoch_milliseconds_or_iso_8601() -> None:
    assert parse_time("1764355200000") == 1_764_355_200_000
    assert parse_time("2025-11-28T18:40:00Z") == 1_764_355_200_000
    assert parse_time("2025-11-28T19:40:00+01:00") == 1_764_355_200_000
    assert parse_time("2025-11-28T18:40:00") == 1_764_355_200_000  # naive means UTC
    with pytest.raises(FaultstreamError, match="--until 'yesterday'"):
        parse_time("yesterday", "--until")


def test_replay_command_from_db_writes_what_input_writes(recorded, tmp_path) -> None:
    jsonl, db = recorded
    assert main(["replay", "--input", str(jsonl), "--output", str(tmp_path / "a")]) == 0
    assert main(["replay", "--db", str(db), "--output", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_diff_under_other_settings_lists_added_openings_with_times(
    recorded, tmp_path, capsys
) -> None:
    _, db = recorded
    config = tmp_path / "eager.toml"
    config.write_text("[circuits.worker]\nfailure_threshold = 1\n")
    out = tmp_path / "diff.txt"
    code = main(
        ["replay", "--db", str(db), "--config", str(config), "--diff", "--output", str(out)]
    )
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[-1].startswith("summary: ")
    added_opens = [line for line in lines if line.startswith("added") and " OPEN at " in line]
    assert added_opens, lines[:5]
    assert "T" in added_opens[0] and added_opens[0].endswith("Z")  # an ISO time


def test_diff_under_the_same_settings_changes_nothing(recorded, capsys) -> None:
    _, db = recorded
    assert main(["replay", "--db", str(db), "--diff"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [out[-1]]
    assert out[-1].startswith("summary: 0 added, 0 removed, 0 moved")


def test_diff_needs_a_source_that_holds_what_happened(recorded, capsys) -> None:
    jsonl, _ = recorded
    assert main(["replay", "--input", str(jsonl), "--diff"]) == 2
    assert "--diff needs a history" in capsys.readouterr().err


def test_missing_duckdb_file_is_one_clear_line(tmp_path, capsys) -> None:
    assert main(["replay", "--db", str(tmp_path / "none.duckdb")]) == 2
    err = capsys.readouterr().err
    assert "none.duckdb" in err and "Traceback" not in err


def test_diff_pairs_occurrences_and_reports_moves() -> None:
    from histories import History

    h = History()
    for ts in (1_000, 2_000, 3_000, 4_000, 5_000):
        h.failure("w1", ts, "WORKER_CRASH")
    actual = h.run()  # opens at 5 000 (threshold 5)
    other = h.run(CoreSettings().merged({"circuits": {"worker": {"failure_threshold": 3}}}))
    report = diff_derived(actual, other)
    moved = [c for c in report.changes if c.kind == "moved" and c.key[2] == "OPEN"]
    assert [(c.actual_ts, c.other_ts) for c in moved] == [(5_000, 3_000)]
    assert moved[0].describe().endswith("(-2.000s)")


def test_input_columns_hold_the_inputs_in_order_within_the_window(recorded, tmp_path) -> None:
    import duckdb

    _, db = recorded
    con = duckdb.connect(str(db), read_only=True)
    ReadModelPublisher(con, tmp_path / "read-models").publish()
    con.close()
    all_ts = [r.ts for r in DuckDBSource(str(db)).inputs()]
    window = Window(all_ts[len(all_ts) // 4], all_ts[len(all_ts) // 2])
    for source in (DuckDBSource(str(db)), ReadModelsSource(str(tmp_path / "read-models"))):
        records = list(source.inputs(window))
        table = source.input_columns(window)
        assert table.column_names == list(INPUT_COLUMNS)
        assert table["event_id"].to_pylist() == [r.event_id for r in records]
        assert table["kind"].to_pylist() == [str(r.kind) for r in records]
        assert table["ts"].to_pylist() == [r.ts for r in records]
        assert "TICK" in table["kind"].to_pylist() and len(records) > 10


def test_json_lines_source_offers_the_columns_of_its_duckdb_file(recorded, monkeypatch) -> None:
    jsonl, db = recorded
    monkeypatch.setattr(sources, "JSONL_COLUMNS_MIN_BYTES", 0)  # a small file: columns anyway
    names = [c for c in INPUT_COLUMNS if c != "event_hash"]  # each source hashes its own way
    from_file = JsonlSource(str(jsonl)).input_columns()
    assert from_file.select(names).equals(DuckDBSource(str(db)).input_columns().select(names))
