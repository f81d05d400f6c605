"""The emitter's spool keeps each event once, stays within its size bound, and never lets
an event go without saying so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from faultstream.events.config import load_settings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import EventKind, WorkerEvent
from faultstream.events.spool import Spool


def _event(n: int, *, message: str = "boom") -> WorkerEvent:
    return WorkerEvent(
        event_id=f"e{n:04d}",
        kind=EventKind.FAILURE,
        ts=1_700_000_000_000 + n,
        worker_id="w1",
        hardware_class="cuda",
        task_id=f"t{n}",
        task_type="bert",
        message=message,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _line_bytes(event: WorkerEvent) -> int:
    return len(event.model_dump_json().encode()) + 1


def test_an_event_appended_again_is_not_written_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    events = [_event(n) for n in range(3)]
    first = spool.append(events)
    again = spool.append([*events, events[0]])
    assert (first.added, first.already) == (3, 0)
    assert (again.added, again.already) == (0, 4)
    assert len(_lines(spool.path)) == 3
    assert [e.event_id for e in spool.read()] == ["e0000", "e0001", "e0002"]


def test_each_restart_finds_the_ids_already_spooled(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    events = [_event(n) for n in range(3)]
    for _ in range(3):  # a new Spool per emitter start, each re-spooling the same events
        Spool(path).append(events)
    assert len(_lines(path)) == 3


def test_a_write_by_another_spool_on_the_same_file_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    mine, theirs = Spool(path), Spool(path)
    mine.append([_event(1)])
    theirs.append([_event(2)])  # another process, as far as `mine` can tell
    assert mine.append([_event(2)]).already == 1
    assert [e.event_id for e in mine.read()] == ["e0001", "e0002"]


def test_a_spool_with_repeated_lines_reads_each_event_once_and_remove_compacts_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.jsonl"
    events = [_event(n) for n in range(3)]
    # What the doubling bug left behind: 3 -> 6 -> 12 lines of the same 3 events.
    path.write_text("".join(e.model_dump_json() + "\n" for e in events * 4))
    spool = Spool(path)
    assert [e.event_id for e in spool.read()] == ["e0000", "e0001", "e0002"]
    assert spool.append(events).added == 0
    assert spool.remove({"e0001"}) == 2
    assert _lines(path) == [events[0].model_dump_json(), events[2].model_dump_json()]


def test_past_max_bytes_the_oldest_events_are_dropped_and_the_count_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = [_event(n) for n in range(5)]
    room = sum(_line_bytes(e) for e in events[2:])  # exactly the three newest fit
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=room)
    assert spool.append(events[:3]).dropped == 0
    with caplog.at_level(logging.WARNING, logger="faultstream.events.spool"):
        appended = spool.append(events[3:])
    assert (appended.added, appended.dropped, appended.lost) == (2, 2, 2)
    assert [e.event_id for e in spool.read()] == ["e0002", "e0003", "e0004"]
    assert spool.path.stat().st_size <= room
    assert ["dropped the 2 oldest events" in r.getMessage() for r in caplog.records] == [True]
    # Within the bound again: the next append of a known id changes nothing.
    assert spool.append([events[4]]).already == 1


def test_a_single_batch_larger_than_the_bound_keeps_its_newest_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = [_event(n) for n in range(4)]
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=_line_bytes(events[0]) + 1)
    with caplog.at_level(logging.WARNING, logger="faultstream.events.spool"):
        appended = spool.append(events)
    assert (appended.added, appended.dropped) == (1, 3)
    assert [e.event_id for e in spool.read()] == ["e0003"]
    assert any("dropped the 3 oldest events" in r.getMessage() for r in caplog.records)


def test_an_event_that_cannot_be_written_is_reported_lost_and_the_rest_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Built without validation, as a caller's model_construct would: no UTF-8 form exists.
    unwritable = _event(9).model_copy(update={"message": "bad \udcff text"})
    spool = Spool(tmp_path / "spool.jsonl")
    with caplog.at_level(logging.ERROR, logger="faultstream.events.spool"):
        appended = spool.append([_event(1), unwritable, _event(2)])
    assert (appended.added, appended.unwritable, appended.lost) == (2, 1, 1)
    assert [e.event_id for e in spool.read()] == ["e0001", "e0002"]
    [record] = caplog.records
    assert "1 events could not be written and are lost" in record.getMessage()
    assert "e0009" in record.getMessage()


def test_a_torn_line_does_not_hide_the_events_after_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    path.write_bytes(
        _event(1).model_dump_json().encode()
        + b'\n{"event_id": "e00\xff'  # a write cut short, not even UTF-8
        + b"\n"
        + _event(2).model_dump_json().encode()
        + b"\n"
    )
    assert [e.event_id for e in Spool(path).read()] == ["e0001", "e0002"]


@pytest.mark.parametrize(("setting", "value"), [("spool_max_bytes", 0), ("close_timeout_s", -1)])
def test_emitter_settings_out_of_range_are_refused_naming_the_setting(
    setting: str, value: float
) -> None:
    with pytest.raises(ConfigError, match=f"emitter.{setting}"):
        load_settings(emitter={setting: value})


def test_a_spool_bound_that_is_not_positive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path / "spool.jsonl", max_bytes=0)
