"""Decisions run on the broker's clock (`received_at`), never on a worker's own `ts`.

CIRCUITS.md "Decision time": one worker with a clock in the year 2100, or five minutes fast,
must not move the fleet's time; a history without `received_at` replays on `ts` as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from histories import History, without_alerts

from faultstream.cli import main
from faultstream.events.models import MAX_MILLIS, WorkerEvent, received_at
from faultstream.processors.compiled import replay_compiled
from faultstream.processors.core import FleetCore

YEAR_2100_MS = 4_102_444_800_000
START = 1_764_355_200_000
WORKERS = [f"w{i:02d}" for i in range(12)]


def fleet_lines(*, stamped: bool) -> list[dict]:
    """12 healthy workers heartbeating every 10 s for two minutes, as JSON Lines."""
    lines = []
    for step in range(13):
        ts = START + step * 10_000
        for worker in WORKERS:
            line = {
                "event_id": f"hb-{worker}-{step}",
                "kind": "HEARTBEAT",
                "ts": ts,
                "worker_id": worker,
                "hardware_class": "cuda",
            }
            if stamped:
                line["received_at"] = ts + 3  # the broker appends a moment later
            lines.append(line)
    return lines


def bad_clock_line(ts: int, received: int | None) -> dict:
    line = {"event_id": "hb-bad-clock", "kind": "HEARTBEAT", "ts": ts, "worker_id": "w00"}
    line["hardware_class"] = "cuda"
    if received is not None:
        line["received_at"] = received
    return line


def replay(tmp_path: Path, lines: list[dict], engine: str, capsys) -> list[dict]:
    history = tmp_path / f"history-{engine}.jsonl"
    history.write_text("".join(json.dumps(line) + "\n" for line in lines))
    capsys.readouterr()
    assert main(["replay", "--input", str(history), "--engine", engine]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("engine", ["core", "compiled"])
def test_one_heartbeat_from_the_year_2100_derails_nothing(tmp_path, capsys, engine) -> None:
    lines = fleet_lines(stamped=True)
    # Mid-history, w00's clock jumps to 2100; the broker stamped it at its true moment.
    lines.insert(60, bad_clock_line(YEAR_2100_MS, received=START + 50_004))
    assert replay(tmp_path, fleet_lines(stamped=True), engine, capsys) == []
    # Only the report of the bad clock, resolved by w00's next heartbeat (its clock is fine;
    # the broker stamped it a moment earlier, so it is decided at now).
    alerts = [(d["rule"], d["subject_id"], d["state"], d["ts"]) for d in replay(
        tmp_path, lines, engine, capsys)]  # fmt: skip
    assert alerts == [
        ("clock_skew", "w00", "FIRING", START + 50_004),
        ("clock_skew", "w00", "RESOLVED", START + 50_004),
    ]


@pytest.mark.parametrize("engine", ["core", "compiled"])
def test_without_received_at_a_history_replays_on_its_own_ts(tmp_path, capsys, engine) -> None:
    # A hand-written history has no broker time: its ts is what it says happened, so the
    # same line there does move time: the other 11 workers are lost, their circuits open.
    lines = fleet_lines(stamped=False)
    lines.insert(60, bad_clock_line(YEAR_2100_MS, received=None))
    derived = replay(tmp_path, lines, engine, capsys)
    opened = [
        (d["circuit_kind"], d["circuit_id"], d["to_state"])
        for d in derived
        if d["type"] == "circuit_state_changed"
    ]
    assert opened == [("worker", w, "OPEN") for w in WORKERS if w != "w00"]


def test_a_clock_five_minutes_fast_loses_no_worker_and_opens_nothing() -> None:
    h = History()
    for step in range(20):
        at = START + step * 10_000
        for worker in ("w1", "w2", "w3", "w4", "w5"):
            fast = 300_000 if worker == "w1" else 0  # w1 says it is 5 minutes later
            h.heartbeat(worker, at + fast, received_at=at + 2)
    # Nothing but the report of w1's clock (5 minutes is over max_skew_s, 120 s).
    outputs = h.run()
    assert [(a.rule, a.subject_id, a.state) for a in outputs] == [("clock_skew", "w1", "FIRING")]
    assert replay_compiled(h.records) == outputs


def test_lost_worker_is_judged_on_received_at_not_on_its_ts() -> None:
    h = History()
    h.started("w1", START, task_id="t1", received_at=START)
    h.heartbeat("w2", START, received_at=START)
    # w1's clock is an hour fast: by its ts it spoke recently, by the broker's it is silent.
    h.heartbeat("w1", START + 3_600_000, received_at=START + 1_000)
    h.heartbeat("w2", START + 20_000, received_at=START + 20_000)
    assert without_alerts(h.run()) == []  # 19 s of silence by the broker's clock: not lost
    h.heartbeat("w2", START + 40_000, received_at=START + 40_000)
    outputs = h.run()
    # Lost at its last received_at + 30 s, not at its ts + 30 s (an hour later).
    moves = [o for o in outputs if getattr(o, "strategy", None) == "DIFFERENT_WORKER"]
    assert [(m.task_id, m.ts) for m in moves] == [("t1", START + 31_000)]
    assert [o.model_dump_json() for o in replay_compiled(h.records)] == [
        o.model_dump_json() for o in outputs
    ]


def test_received_at_is_the_decision_time_and_ts_the_fallback() -> None:
    base = {"event_id": "e", "kind": "HEARTBEAT", "worker_id": "w", "hardware_class": "cpu"}
    assert received_at(WorkerEvent(**base, ts=5)) == 5
    assert received_at(WorkerEvent(**base, ts=5, received_at=9)) == 9
    core = FleetCore()
    core.process(WorkerEvent(**base, ts=YEAR_2100_MS, received_at=START))
    assert core.now == START


def test_a_timestamp_past_year_9999_is_refused_naming_the_field() -> None:
    base = {"event_id": "e", "kind": "HEARTBEAT", "worker_id": "w", "hardware_class": "cpu"}
    with pytest.raises(ValueError, match="ts"):
        WorkerEvent(**base, ts=MAX_MILLIS + 1)
    with pytest.raises(ValueError, match="received_at"):
        WorkerEvent(**base, ts=1, received_at=10**23)
