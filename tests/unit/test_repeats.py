"""Dropping repeated event ids (core/repeats.py), in the core and its compiled twin.

A repeat changes nothing, whatever its pattern: the SDK's resends (a producer retrying,
the spool sent after an outage, the spool of a previous process sent on start) and any
id a hand-written producer picks. Sequenced ids, `<producer>.<n>`, cost the decider one
range per producer when they arrive as the SDK sends them.
"""

from __future__ import annotations

import tempfile

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faultstream.events.emitter import Emitter
from faultstream.events.models import InputRecord, WorkerEvent, derived_to_json
from faultstream.processors.compiled import UnsupportedHistory, replay_compiled
from faultstream.processors.compiled.encode import _sequenced, sequenced_column
from faultstream.processors.core import FleetCore
from faultstream.processors.core.repeats import (
    PRODUCERS_PER_WORKER,
    RANGES_PER_PRODUCER,
    add_number,
    first_time,
    sequence_number,
)
from faultstream.processors.offline.sources import REPLAY_COLUMNS, DuckDBSource
from faultstream.projections.tables import HistoryWriter


class RecordingTransport:
    """The SDK's Transport protocol, keeping what it is given (no broker involved)."""

    def __init__(self) -> None:
        self.sent: list[WorkerEvent] = []

    def send(self, event: WorkerEvent) -> None:
        self.sent.append(event)

    def flush(self, timeout: float) -> int:
        return 0

    def close(self, timeout: float) -> None:
        pass


def lines(records: list[InputRecord]) -> list[str]:
    core = FleetCore()
    return [derived_to_json(out) for record in records for out in core.process(record)]


def first_arrivals(records: list[InputRecord]) -> list[InputRecord]:
    """The history with every repeat of (worker, event_id) taken out: what a decider
    that drops repeats must decide the same from."""
    seen: set[tuple[str | None, str]] = set()
    kept = []
    for record in records:
        key = (getattr(record, "worker_id", None), record.event_id)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def assert_repeats_change_nothing(records: list[InputRecord]) -> None:
    expected = lines(first_arrivals(records))
    assert lines(records) == expected
    assert [derived_to_json(out) for out in replay_compiled(records)] == expected


# --- ids -------------------------------------------------------------------------------

TRICKY_IDS = [
    "9f3a.1", "9f3a.10", "a.b.7", "host-3.1701234567890", "p.0", "p.01", ".5", "p.",
    "p.5x", "p.٣", "p.²", "e17", "p." + "9" * 18, "p." + "1" * 19, "a\nb.4", "x..3",
    "9f3a1c2b4d5e6f70a1b2c3d4e5f60718",
]  # fmt: skip


def test_only_a_positive_canonical_number_after_the_last_dot_makes_an_id_sequenced() -> None:
    assert sequence_number("9f3a.1") == ("9f3a", 1)
    assert sequence_number("a.b.7") == ("a.b", 7)  # the producer may hold dots
    assert sequence_number("x..3") == ("x.", 3)
    assert sequence_number("a\nb.4") == ("a\nb", 4)
    assert sequence_number("p." + "9" * 18) == ("p", 10**18 - 1)
    plain = ["p.0", "p.01", ".5", "p.", "p.5x", "p.٣", "p.²", "e17", "p." + "1" * 19]
    assert [sequence_number(i) for i in plain] == [None] * len(plain)


def test_the_core_remembers_exactly_the_sequenced_ids_by_their_producer() -> None:
    # `first_time` inlines `sequence_number`: the two must tell the same ids apart.
    core = FleetCore()
    core.process(WorkerEvent(event_id="first", kind="HEARTBEAT", ts=1, worker_id="w1",
                             hardware_class="cuda"))  # fmt: skip
    worker = core._workers["w1"]
    assert all(first_time(worker, event_id) for event_id in TRICKY_IDS)
    parsed = {i: sequence_number(i) for i in TRICKY_IDS}
    assert worker.seen == {"first"} | {i for i, p in parsed.items() if p is None}
    by_producer: dict[str, list[int]] = {}
    for p in parsed.values():
        if p is not None:
            add_number(by_producer.setdefault(p[0], []), p[1])
    assert worker.producers == by_producer
    assert not any(first_time(worker, event_id) for event_id in TRICKY_IDS)


def test_the_twins_two_readers_of_ids_agree_with_the_core() -> None:
    producers, numbers = _sequenced(TRICKY_IDS)
    column_producers, column_numbers = sequenced_column(pa.chunked_array([TRICKY_IDS]))
    parsed = [sequence_number(i) for i in TRICKY_IDS]
    assert [p >= 0 for p in producers] == [p is not None for p in parsed]
    assert [p >= 0 for p in column_producers] == [p is not None for p in parsed]
    assert [int(n) for n in numbers] == [0 if p is None else p[1] for p in parsed]
    assert list(column_numbers) == list(numbers)
    # Equal producers, equal codes, in both readers.
    named = [p[0] if p else None for p in parsed]
    for codes in (producers, column_producers):
        pairs = {(name, int(code)) for name, code in zip(named, codes, strict=True) if name}
        assert len(pairs) == len({name for name, _ in pairs}) == len({c for _, c in pairs})


# --- one producer's numbers ------------------------------------------------------------


def test_numbers_in_order_are_one_range_and_each_repeat_is_found() -> None:
    ranges: list[int] = []
    assert all(add_number(ranges, n) for n in range(1, 1_001))
    assert ranges == [1, 1_000]
    assert not any(add_number(ranges, n) for n in (1, 500, 1_000))
    assert ranges == [1, 1_000]


def test_a_gap_is_a_second_range_until_the_resent_numbers_fill_it() -> None:
    ranges: list[int] = []
    for n in [*range(1, 41), *range(81, 121)]:  # 41..80 spooled during an outage
        add_number(ranges, n)
    assert ranges == [1, 40, 81, 120]
    for n in range(41, 81):  # the spool, resent
        assert add_number(ranges, n)
    assert ranges == [1, 120]


def test_a_number_joining_both_neighbours_merges_them_and_edges_are_repeats() -> None:
    ranges: list[int] = []
    for n in (5, 3, 7):
        add_number(ranges, n)
    assert ranges == [3, 3, 5, 5, 7, 7]
    assert not add_number(ranges, 5) and not add_number(ranges, 3) and not add_number(ranges, 7)
    assert add_number(ranges, 4) and ranges == [3, 5, 7, 7]
    assert add_number(ranges, 6) and ranges == [3, 7]
    assert add_number(ranges, 2) and ranges == [2, 7]  # joins the first range on its left
    assert add_number(ranges, 9) and ranges == [2, 7, 9, 9]
    assert not add_number(ranges, 9)


def test_past_the_bound_on_ranges_the_lowest_numbers_are_forgotten() -> None:
    ranges: list[int] = []
    for n in range(2, 2 * RANGES_PER_PRODUCER + 3, 2):  # every other number: all gaps
        add_number(ranges, n)
    assert len(ranges) == 2 * RANGES_PER_PRODUCER
    assert ranges[:2] == [4, 4]  # 2 was forgotten: seen again, it counts as new
    assert add_number(ranges, 2)
    assert not add_number(ranges, 6)


# --- the SDK's resend patterns -----------------------------------------------------------


def sdk_events(emitter: Emitter, count: int, start_ts: int) -> list[WorkerEvent]:
    """`count` events as the SDK builds them: failures and successes of a few tasks."""
    transport = emitter.transport
    assert isinstance(transport, RecordingTransport)
    for k in range(count):
        ts = start_ts + 1_000 * k
        if k % 3 == 2:
            emitter.success(f"t{k % 4}", "bert", ts=ts)
        else:
            emitter.failure(
                f"t{k % 4}", "bert", message="CUDA error: out of memory", attempt=k % 2, ts=ts
            )
    sent, transport.sent = transport.sent, []
    return sent


def emitter() -> Emitter:
    return Emitter(worker_id="w1", hardware_class="cuda", transport=RecordingTransport())


def test_the_sdk_numbers_each_emitters_events_and_a_new_emitter_has_its_own_producer() -> None:
    first, second = emitter(), emitter()
    ids = [e.event_id for e in sdk_events(first, 3, 0)]
    assert ids == [f"{first.producer}.{n}" for n in (1, 2, 3)]
    assert first.producer != second.producer
    assert sequence_number(sdk_events(second, 1, 0)[0].event_id) == (second.producer, 1)


def test_a_forked_child_numbers_with_a_producer_of_its_own() -> None:
    import os

    parent = emitter()
    sdk_events(parent, 1, 0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write_end, sdk_events(parent, 1, 0)[0].event_id.encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read_end, 64).decode()
    assert sequence_number(child_id)[0] != parent.producer  # type: ignore[index]
    assert sdk_events(parent, 1, 0)[0].event_id == f"{parent.producer}.2"


def test_a_producer_retrying_each_event_changes_nothing() -> None:
    events = sdk_events(emitter(), 60, 1_000)
    assert_repeats_change_nothing([e for event in events for e in (event, event)])


def test_the_spool_sent_after_an_outage_changes_nothing_and_leaves_one_range() -> None:
    source = emitter()
    events = sdk_events(source, 120, 1_000)
    # 1..50 delivered; 41..80 spooled when the broker went away, of which 41..50 had in
    # fact arrived (their acknowledgement was lost); 81..120 sent once it was back; then
    # the spool is resent, arriving late.
    arrivals = events[:50] + events[80:] + events[40:80]
    assert_repeats_change_nothing(arrivals)
    core = FleetCore()
    for record in arrivals:
        core.process(record)
    assert core._workers["w1"].producers == {source.producer: [1, 120]}
    assert core._workers["w1"].seen == set()


def test_the_spool_of_a_previous_process_resent_on_start_changes_nothing() -> None:
    before, after = emitter(), emitter()  # the worker restarted: a new process, producer
    old = sdk_events(before, 60, 1_000)
    new = sdk_events(after, 40, 70_000)
    # The old process delivered 1..45 and spooled 40..60 (40..45 arrived without an ack);
    # the new one resends that spool on start while it already reports.
    arrivals = old[:45] + new[:10] + old[39:] + new[10:] + old[50:55]
    assert_repeats_change_nothing(arrivals)
    core = FleetCore()
    for record in arrivals:
        core.process(record)
    assert core._workers["w1"].producers == {before.producer: [1, 60], after.producer: [1, 40]}


def test_a_repeat_is_still_dropped_after_a_snapshot_and_restore() -> None:
    source = emitter()
    events = sdk_events(source, 30, 1_000)
    core = FleetCore()
    for record in events[:20]:
        core.process(record)
    restored = FleetCore.restore(core.snapshot())
    assert restored._workers["w1"].producers == {source.producer: [1, 20]}
    assert [restored.process(e) for e in events[5:15]] == [[]] * 10
    after = [restored.process(e) for e in events[20:]]
    assert after == [core.process(e) for e in events[20:]] and any(after)


# --- bounds, in the core and the twin ----------------------------------------------------


def failure(worker: str, event_id: str, ts: int) -> WorkerEvent:
    return WorkerEvent(
        event_id=event_id, kind="FAILURE", ts=ts, worker_id=worker, hardware_class="cuda",
        task_id=f"t-{ts % 7}", task_type="bert", failure_type="TIMEOUT",
    )  # fmt: skip


def test_a_worker_forgets_the_producer_it_heard_from_least_recently_in_core_and_twin() -> None:
    records = [failure("w1", f"p{k}.1", 1_000 + k) for k in range(PRODUCERS_PER_WORKER)]
    records.append(failure("w1", "p0.2", 20_000))  # p0 is heard from again: p1 is the oldest
    records.append(failure("w1", f"p{PRODUCERS_PER_WORKER}.1", 20_001))  # one too many
    core = FleetCore()
    for record in records:
        core.process(record)
    assert len(core._workers["w1"].producers) == PRODUCERS_PER_WORKER
    assert "p1" not in core._workers["w1"].producers
    assert core.process(failure("w1", "p0.1", 50_000)) == []  # still held
    assert core.process(failure("w1", "p1.1", 50_001)) != []  # forgotten: it counts again
    # p1's return pushed out p2, the oldest now; p3 is still held.
    assert core.process(failure("w1", "p3.1", 50_002)) == []
    assert core.process(failure("w1", "p2.1", 50_003)) != []
    history = records + [failure("w1", f"p{k}.1", 50_000 + k) for k in (0, 1, 3, 2)]
    assert [derived_to_json(out) for out in replay_compiled(history)] == lines(history)


def test_a_producer_heard_from_again_among_two_is_not_the_one_forgotten() -> None:
    # Two producers, the older one heard from again: the other is now the oldest.
    records = [failure("w1", "p0.1", 1_000), failure("w1", "p1.1", 1_001)]
    records.append(failure("w1", "p0.2", 1_002))
    records += [failure("w1", f"p{k}.1", 2_000 + k) for k in range(2, PRODUCERS_PER_WORKER + 1)]
    core = FleetCore()
    for record in records:
        core.process(record)
    assert "p0" in core._workers["w1"].producers and "p1" not in core._workers["w1"].producers
    history = [*records, failure("w1", "p0.1", 50_000), failure("w1", "p1.1", 50_001)]
    assert [derived_to_json(out) for out in replay_compiled(history)] == lines(history)


def test_a_producer_with_more_gaps_than_the_bound_is_left_to_the_core_by_the_twin() -> None:
    gaps = [failure("w1", f"p.{2 * k + 2}", 1_000 + k) for k in range(RANGES_PER_PRODUCER)]
    replay_compiled(gaps[:-1])  # one gap fewer: the twin replays it
    with pytest.raises(UnsupportedHistory, match="gaps"):
        replay_compiled(gaps)


# --- any pattern: the core drops exactly the repeats, and the twin agrees -----------------

arrival = st.tuples(
    st.integers(0, 2),  # worker
    st.sampled_from(["seq", "seq", "seq", "plain"]),
    st.integers(0, 2),  # producer
    st.integers(1, 12),  # number (or the plain id's)
    st.sampled_from(["FAILURE", "SUCCESS", "HEARTBEAT"]),
    st.integers(0, 4_000),  # ts step
)


def arrivals_history(steps: list[tuple]) -> list[InputRecord]:
    records: list[InputRecord] = []
    ts = 1_000
    for worker, style, producer, number, kind, step in steps:
        ts += step
        event_id = f"w{worker}p{producer}.{number}" if style == "seq" else f"e{number}"
        fields = {"task_id": f"t{number % 3}", "task_type": "bert"} if kind != "HEARTBEAT" else {}
        if kind == "FAILURE":
            fields["failure_type"] = "TIMEOUT"
        worker_id = f"w{worker}"
        event = WorkerEvent(event_id=event_id, kind=kind, ts=ts, worker_id=worker_id,
                            hardware_class="cuda", **fields)  # fmt: skip
        records.append(event)
    return records


@settings(max_examples=150, deadline=None)
@given(st.lists(arrival, min_size=1, max_size=80).map(arrivals_history))
def test_any_mix_of_ids_and_repeats_the_core_and_twin_drop_exactly_the_repeats(
    records: list[InputRecord],
) -> None:
    assert_repeats_change_nothing(records)


def test_the_twin_reading_stored_columns_drops_the_same_repeats() -> None:
    source = emitter()
    events = sdk_events(source, 90, 1_000)
    history = [*events[:30], *events[60:], *events[20:60], failure("w2", "e1", 200_000)]
    with tempfile.TemporaryDirectory() as directory:
        writer = HistoryWriter(f"{directory}/history.duckdb")
        writer.append_inputs(history, range(len(history)))
        writer.close()
        stored = DuckDBSource(f"{directory}/history.duckdb")
        records = list(stored.inputs())
        table = stored.input_columns(columns=REPLAY_COLUMNS)
    from faultstream.processors.compiled import replay_compiled_table

    assert [derived_to_json(out) for out in replay_compiled_table(table)] == lines(records)
