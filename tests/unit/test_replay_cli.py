"""`faultstream replay --input`: JSON Lines in, derived records out, bad lines named."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from histories import History

from faultstream.cli import main
from faultstream.cli.demo import run_demo
from faultstream.cli.simulate import run_embedded_simulation
from faultstream.events.config import CoreSettings, load_settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.jsonl import read_input_records, write_records
from faultstream.processors.offline import replay as replay_module


def history_lines() -> list[str]:
    h = History()
    h.heartbeat("w2", ts=500)
    h.started("w1", ts=1_000)
    for i in range(5):
        h.failure("w1", ts=2_000 + i, failure_type="WORKER_CRASH")
    h.tick(100_000)
    out = io.StringIO()
    write_records(h.records, out)
    return out.getvalue().splitlines()


def history_file(tmp_path: Path) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(history_lines()) + "\n")
    return path


def test_replay_writes_derived_records_in_order(tmp_path: Path, capsys) -> None:
    source = history_file(tmp_path)
    assert main(["replay", "--input", str(source)]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["type"] for line in lines[:5]] == ["recovery_command"] * 4 + [
        "circuit_state_changed"
    ]
    assert lines[4]["to_state"] == "OPEN"
    assert "replayed 8 records -> " in captured.err and "0 invalid skipped" in captured.err


def test_replay_twice_gives_identical_bytes(tmp_path: Path) -> None:
    source = history_file(tmp_path)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["replay", "--input", str(source), "--output", str(first)]) == 0
    assert main(["replay", "--input", str(source), "--output", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes() and first.stat().st_size > 0


def test_bad_line_exits_2_naming_line_and_field(tmp_path: Path, capsys) -> None:
    source = history_file(tmp_path)
    lines = source.read_text().splitlines()
    lines.insert(
        2, '{"event_id":"x","kind":"HEARTBEAT","ts":-5,"worker_id":"w","hardware_class":"c"}'
    )
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.jsonl"
    assert main(["replay", "--input", str(source), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "line 3" in err and "ts" in err
    assert not output.exists() and list(tmp_path.glob(".out.jsonl*")) == []


def test_skip_invalid_skips_bad_lines_and_reports_them(tmp_path: Path, capsys) -> None:
    source = history_file(tmp_path)
    good = source.read_text()
    source.write_text('not json\n{"kind":"NOPE","event_id":"z","ts":1}\n' + good)
    assert main(["replay", "--input", str(source), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert "line 1: line: is not JSON" in captured.err
    assert "line 2: kind" in captured.err
    assert "2 invalid skipped" in captured.err
    assert main(["replay", "--input", str(history_file(tmp_path))]) == 0
    assert capsys.readouterr().out == captured.out  # the good lines, replayed alike


def test_invalid_configuration_is_refused_naming_the_setting(tmp_path: Path, capsys) -> None:
    config = tmp_path / "faultstream.toml"
    config.write_text("[circuits.worker]\nhalf_open_max_calls = 1\n")
    code = main(["replay", "--config", str(config), "--input", str(history_file(tmp_path))])
    assert code == 2
    assert "half_open_max_calls" in capsys.readouterr().err


def test_configuration_file_changes_the_replay(tmp_path: Path, capsys) -> None:
    config = tmp_path / "faultstream.toml"
    config.write_text("[circuits.worker]\nfailure_threshold = 2\n")
    assert main(["replay", "--config", str(config), "--input", str(history_file(tmp_path))]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[1]["type"] == "circuit_state_changed" and lines[1]["consecutive_failures"] == 2


def test_replay_reads_stdin(tmp_path: Path, capsys, monkeypatch) -> None:
    source = history_file(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(source.read_text()))
    assert main(["replay", "--input", "-"]) == 0
    from_stdin = capsys.readouterr().out
    assert main(["replay", "--input", str(source)]) == 0
    assert capsys.readouterr().out == from_stdin != ""


def test_missing_input_file_is_one_clear_line(tmp_path: Path, capsys) -> None:
    assert main(["replay", "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_input_is_required(capsys) -> None:
    assert main(["replay"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--input" in err


def test_binary_input_stops_at_its_line_naming_it(tmp_path: Path, capsys) -> None:
    source = tmp_path / "history.jsonl"
    source.write_bytes(history_file(tmp_path).read_bytes() + b"\xff\xfe\x00binary\n")
    assert main(["replay", "--input", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"line {len(history_lines()) + 1}: line: is not UTF-8 text (byte 0xff" in err


def test_skip_invalid_skips_undecodable_lines_and_counts_them(tmp_path: Path, capsys) -> None:
    good = history_file(tmp_path).read_bytes()
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"\xff\xfe\x00\x01\n" + good + b'{"kind":"HEARTBEAT","x":"\xc3"}\n')
    assert main(["replay", "--input", str(source), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert "skipped line 1: line: is not UTF-8 text" in captured.err
    assert f"skipped line {len(history_lines()) + 2}: line: is not UTF-8 text" in captured.err
    assert "2 invalid skipped" in captured.err
    assert main(["replay", "--input", str(history_file(tmp_path))]) == 0
    assert capsys.readouterr().out == captured.out != ""  # the good lines, replayed alike


def test_output_that_is_a_directory_is_refused_before_replaying(tmp_path: Path, capsys) -> None:
    (tmp_path / "out").mkdir()
    code = main(
        ["replay", "--input", str(history_file(tmp_path)), "--output", str(tmp_path / "out")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--output" in err and "a directory" in err
    assert list((tmp_path / "out").iterdir()) == [] and list(tmp_path.glob(".out*")) == []


# --- engines ------------------------------------------------------------------------------


def demo_history_file(tmp_path: Path) -> Path:
    """A closed-loop demo history (crashes, OOMs, a bad release, a lost worker)."""
    path = tmp_path / "demo.jsonl"
    with path.open("w") as tap:
        run_embedded_simulation(
            core_settings=CoreSettings(), seed=3, workers=12, duration_ms=10 * 60_000, tap=tap
        )
    return path


def replayed_by(engine: str, source: Path, out: Path, capsys) -> tuple[bytes, str]:
    assert main(["replay", "--input", str(source), "--output", str(out), "--engine", engine]) == 0
    return out.read_bytes(), capsys.readouterr().err


def test_compiled_engine_and_fleetcore_write_the_same_bytes(tmp_path: Path, capsys) -> None:
    source = demo_history_file(tmp_path)
    compiled, compiled_err = replayed_by("compiled", source, tmp_path / "c.jsonl", capsys)
    core, core_err = replayed_by("core", source, tmp_path / "f.jsonl", capsys)
    assert compiled == core and b'"to_state":"OPEN"' in core and b"DIFFERENT_WORKER" in core
    assert "by compiled core" in compiled_err and "by FleetCore" in core_err


def demo_db(tmp_path: Path) -> Path:
    path = tmp_path / "demo.duckdb"
    run_demo(load_settings(), path, workers=12, duration_ms=10 * 60_000)
    return path


def test_auto_engine_replays_a_duckdb_history_from_its_columns_with_fleetcores_bytes(
    tmp_path: Path, capsys
) -> None:
    db = demo_db(tmp_path)
    argv = ["replay", "--db", str(db), "--output"]
    assert main([*argv, str(tmp_path / "auto.jsonl")]) == 0
    assert "by compiled core, from columns" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "core.jsonl"), "--engine", "core"]) == 0
    assert "by FleetCore" in capsys.readouterr().err
    auto, core = (tmp_path / "auto.jsonl").read_bytes(), (tmp_path / "core.jsonl").read_bytes()
    assert auto == core and b'"to_state":"OPEN"' in core


def test_compiled_engine_refuses_what_it_cannot_hold_naming_why(monkeypatch) -> None:
    records = read_input_records(history_lines())
    monkeypatch.setattr(replay_module, "COMPILED_MAX_RECORDS", 3)
    with pytest.raises(FaultstreamError, match=r"cannot replay this history exactly \(over 3 rec"):
        list(replay_module.replay(records, engine="compiled"))


def test_replay_writes_the_figures_the_core_publishes_at_each_tick(tmp_path: Path, capsys) -> None:
    from faultstream.events.models import derived_to_json
    from faultstream.processors.core import FleetCore

    source = history_file(tmp_path)
    assert main(["replay", "--input", str(source)]) == 0
    lines = capsys.readouterr().out.splitlines()
    core = FleetCore()
    expected = [
        derived_to_json(o) for r in read_input_records(history_lines()) for o in core.process(r)
    ]
    assert lines == expected
    figures = [json.loads(line) for line in lines if '"type":"circuit_figures"' in line]
    assert [(f["circuit_kind"], f["circuit_id"]) for f in figures] == [
        ("worker", "w1"), ("worker", "w2"), ("hardware_class", "cuda"), ("task_type", "bert"),
    ]  # fmt: skip
    assert {f["caused_by"] for f in figures} == {"e8"} and lines[-4:] == [
        line for line in lines if '"type":"circuit_figures"' in line
    ]


def test_diff_compares_decisions_only_leaving_figures_out() -> None:
    from faultstream.events.models import Alert, CircuitFigures
    from faultstream.processors.core import FleetCore
    from faultstream.processors.offline.diff import diff_derived

    h = History()
    for i in range(5):
        h.failure("w1", ts=2_000 + i, failure_type="WORKER_CRASH")
    h.tick(3_000)
    core = FleetCore()
    derived = [o for r in h.records for o in core.process(r)]
    decisions = [o for o in derived if not isinstance(o, CircuitFigures)]
    alerts = [o for o in decisions if isinstance(o, Alert)]  # decisions too, and compared
    assert len(decisions) == 6 + len(alerts) and len(derived) > len(decisions)
    # What really happened holds no figures (or other ones): no change is reported.
    for actual, other in ((decisions, derived), (derived, decisions), (derived, derived)):
        report = diff_derived(actual, other)
        assert (report.changes, report.unchanged) == ([], len(decisions))
