"""The fleet simulator: seed-reproducible, closed-loop histories that replay exactly."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from faultstream.cli import main
from faultstream.cli.simulate import run_embedded_simulation
from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.jsonl import read_input_records
from faultstream.events.models import CircuitStateChanged, RecoveryCommand, Tick, WorkerEvent
from faultstream.processors.core import FleetCore
from faultstream.processors.simulator import EPOCH_MS, load_scenario, parse_duration_ms
from faultstream.processors.simulator.fleet import _build_fleet
from faultstream.projections.tables import HistoryWriter


def _simulate(path: Path, seed: int, *extra: str) -> bytes:
    args = ["simulate", "--workers", "15", "--duration", "12m", "--seed", str(seed)]
    assert main([*args, *extra, "--output", str(path)]) == 0
    return path.read_bytes()


def test_same_seed_writes_byte_identical_history(tmp_path: Path) -> None:
    first = _simulate(tmp_path / "a.jsonl", 11)
    second = _simulate(tmp_path / "b.jsonl", 11)
    assert first and first == second


def test_another_seed_writes_another_history(tmp_path: Path) -> None:
    assert _simulate(tmp_path / "a.jsonl", 11) != _simulate(tmp_path / "b.jsonl", 12)


def test_history_has_worker_events_and_ticks_on_simulated_time(tmp_path: Path) -> None:
    _simulate(tmp_path / "h.jsonl", 3)
    with open(tmp_path / "h.jsonl") as fh:
        records = list(read_input_records(fh))
    assert records[0].ts == EPOCH_MS
    assert any(isinstance(r, Tick) for r in records)
    kinds = {r.kind for r in records if isinstance(r, WorkerEvent)}
    assert kinds == {"HEARTBEAT", "TASK_STARTED", "CHECKPOINT", "SUCCESS", "FAILURE"}
    assert max(r.ts for r in records) <= EPOCH_MS + 12 * 60_000


def test_replaying_the_recorded_history_gives_the_live_derived_records(tmp_path: Path) -> None:
    history, db = tmp_path / "h.jsonl", tmp_path / "h.duckdb"
    with open(history, "w") as tap:
        run_embedded_simulation(
            core_settings=CoreSettings(),
            seed=5,
            workers=20,
            duration_ms=20 * 60_000,
            writer=HistoryWriter(db),
            tap=tap,
        )
    core = FleetCore(CoreSettings())
    replayed = []
    with open(history) as fh:
        for record in read_input_records(fh):
            replayed.extend(core.process(record))
    con = duckdb.connect(str(db), read_only=True)
    transitions = con.execute(
        "SELECT event_id, ts, circuit_kind, circuit_id, from_state, to_state, reason, "
        "consecutive_failures, trips, reset_timeout_s, health, caused_by "
        "FROM circuit_transitions ORDER BY event_id"
    ).fetchall()
    commands = con.execute(
        "SELECT command_id, ts, task_id, task_type, worker_id, strategy, attempt, delay_s, "
        "target_worker_id, target_hardware_class, parameters, checkpoint_seq, reason, "
        "caused_by FROM commands ORDER BY command_id"
    ).fetchall()
    con.close()
    replay_transitions = sorted(
        tuple(r.model_dump(mode="json").values())
        for r in replayed
        if isinstance(r, CircuitStateChanged)
    )
    replay_commands = sorted(
        tuple(r.model_dump(mode="json").values())
        for r in replayed
        if isinstance(r, RecoveryCommand)
    )
    assert replay_commands  # the incidents produced commands at all
    assert [tuple(row) for row in transitions] == replay_transitions
    assert [tuple(row) for row in commands] == replay_commands


def test_fleet_is_split_across_hardware_classes_by_share() -> None:
    workers = _build_fleet(load_scenario(), 20)
    by_class: dict[str, int] = {}
    for worker in workers:
        by_class[worker.hardware_class] = by_class.get(worker.hardware_class, 0) + 1
    assert by_class == {"cpu": 6, "cuda": 7, "rocm": 3, "webgpu": 4}
    assert len({w.worker_id for w in workers}) == 20


def test_built_in_scenario_scripts_every_incident_kind() -> None:
    kinds = {incident.kind for incident in load_scenario().incidents}
    assert kinds == {
        "hardware_fault", "flaky_worker", "oom", "browser_crash", "silent_worker", "bad_release"
    }  # fmt: skip


def test_scenario_with_unknown_incident_kind_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[fleet]\ncpu = 1\n[task_types.t]\nhardware = ["cpu"]\n'
        '[[incidents]]\nkind = "meteor"\nstart_min = 1\nend_min = 2\n'
    )
    with pytest.raises(ConfigError, match=r"incidents\[0\]\.kind"):
        load_scenario(path)


def test_scenario_task_type_on_unknown_hardware_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[fleet]\ncpu = 1\n[task_types.t]\nhardware = ["tpu"]\n')
    with pytest.raises(ConfigError, match=r"task_types\.t\.hardware"):
        load_scenario(path)


def test_simulate_with_a_bad_duration_exits_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "--duration", "soon", "--output", str(tmp_path / "x.jsonl")])
    assert code == 2
    assert "--duration" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "ms"), [("1h", 3_600_000), ("20m", 1_200_000), ("90s", 90_000),
                                          ("90", 90_000), ("1.5h", 5_400_000)])  # fmt: skip
def test_durations_read_in_hours_minutes_and_seconds(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms
