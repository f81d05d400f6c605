"""The merge of input partitions by broker time (processors/stream/merge.py)."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from faultstream.processors.stream.merge import PartitionMerge


class Rec(NamedTuple):
    partition: int
    offset: int
    at: int


def merge() -> PartitionMerge:
    return PartitionMerge(received_at=lambda r: r.at, order=lambda p: p)


def stream(partition: int, times: list[int]) -> list[Rec]:
    return [Rec(partition, offset, at) for offset, at in enumerate(times)]


def caught_up(_partition: int) -> bool:
    return False


def test_a_backlog_on_one_partition_does_not_run_ahead_of_the_others() -> None:
    m = merge()
    # After a restart partition 0's backlog arrives first; partition 1 has not answered yet.
    m.add(0, stream(0, [10, 20, 30, 40]))
    released, _, waiting = m.release([0, 1], behind=lambda p: p == 1)
    assert released == [] and waiting == [1]
    m.add(1, stream(1, [15, 35]))
    released, last, waiting = m.release([0, 1], behind=lambda p: p == 1)
    # Partition 1, still behind, may hold more from 35 on: 40 must wait for it.
    assert [r.at for r in released] == [10, 15, 20, 30, 35]
    assert last == {0: Rec(0, 2, 30), 1: Rec(1, 1, 35)} and waiting == [1]
    released, _, _ = m.release([0, 1], behind=caught_up)
    assert [r.at for r in released] == [40]


def test_a_caught_up_idle_partition_holds_nothing_back() -> None:
    m = merge()
    m.add(0, stream(0, [5, 6]))
    released, _, waiting = m.release([0, 1, 2], behind=caught_up)
    assert [r.at for r in released] == [5, 6] and waiting == []


def test_a_partition_behind_with_no_time_yet_holds_everything() -> None:
    m = merge()
    m.add(0, stream(0, [1]))
    assert m.release([0, 1], behind=lambda p: p == 1) == ([], {}, [1])


def test_ties_go_by_partition_then_offset() -> None:
    m = merge()
    m.add(1, stream(1, [7, 7]))
    m.add(0, stream(0, [7]))
    released, _, _ = m.release([0, 1], behind=caught_up)
    assert [(r.partition, r.offset) for r in released] == [(0, 0), (1, 0), (1, 1)]


def test_a_revoked_partition_gives_back_what_it_held() -> None:
    m = merge()
    m.add(0, stream(0, [3]))
    m.add(1, stream(1, [9]))
    assert m.release([0, 1, 2], behind=lambda p: p == 2)[0] == []  # 2 has not answered
    assert m.forget([1]) == [Rec(1, 0, 9)]  # its next owner reads it again
    assert m.buffered(1) == 0
    assert m.release([0, 2], behind=caught_up)[0] == [Rec(0, 0, 3)]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 50), max_size=12).map(sorted), min_size=1, max_size=4),
    st.data(),
)
def test_any_arrival_pattern_releases_one_order_by_time_partition_offset(partitions, data):
    """However the fetches split and interleave the partitions, the released order is the
    one a consumer that had read everything would make."""
    m = merge()
    pending = {p: stream(p, times) for p, times in enumerate(partitions)}
    expected = sorted(
        (r for records in pending.values() for r in records),
        key=lambda r: (r.at, r.partition, r.offset),
    )
    released = []
    while any(pending.values()):
        p = data.draw(st.sampled_from([p for p, records in pending.items() if records]))
        take = data.draw(st.integers(1, len(pending[p])))
        m.add(p, pending[p][:take])
        pending[p] = pending[p][take:]
        out, _, _ = m.release(list(pending), behind=lambda q: bool(pending[q]))
        released.extend(out)
    out, _, _ = m.release(list(pending), behind=caught_up)
    released.extend(out)
    assert released == expected
