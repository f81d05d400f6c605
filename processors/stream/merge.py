"""One decision order from several input partitions: a merge by the broker's append time.

Each input partition is in `received_at` order by itself (the broker stamps records as it
appends them, `LogAppendTime`), but a consumer receives partitions in whatever batches the
fetches return. Concatenating those batches let one partition's backlog run ahead of the
others after a restart, and "now" left the others behind: workers on those partitions
looked silent and were declared lost (CIRCUITS.md "Order across partitions").

`PartitionMerge` holds records back until their place in the merged order is certain: a
record is released when every other partition either holds a later record, or has already
shown a later time (records of one partition never go back in time), or is caught up and
idle (nothing unread: Kafka Streams' `max.task.idle.ms`, Flink's watermark idleness). A
partition that is behind and has nothing buffered holds the merge: the decision waits
rather than being made on a partial view. Ties go by partition, then offset.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

Partition = Hashable


class PartitionMerge:
    """Records of several partitions, released in (received_at, partition, offset) order."""

    def __init__(self, received_at: Callable[[Any], int], order: Callable[[Any], Any]) -> None:
        """`received_at(record)` is a record's append time; `order(partition)` ranks
        partitions for ties."""
        self._received_at = received_at
        self._order = order
        self._buffers: dict[Partition, deque[Any]] = {}
        self._seen: dict[Partition, int] = {}  # the newest time a partition has shown

    def add(self, partition: Partition, records: Iterable[Any]) -> None:
        """Records of `partition`, in its offset order."""
        buffer = self._buffers.setdefault(partition, deque())
        for record in records:
            buffer.append(record)
        if buffer:
            self._seen[partition] = self._received_at(buffer[-1])

    def forget(self, partitions: Iterable[Partition]) -> list[Any]:
        """Drop `partitions` (revoked); returns their unreleased records."""
        dropped: list[Any] = []
        for partition in partitions:
            dropped.extend(self._buffers.pop(partition, ()))
            self._seen.pop(partition, None)
        return dropped

    def buffered(self, partition: Partition) -> int:
        buffer = self._buffers.get(partition)
        return len(buffer) if buffer else 0

    def release(
        self, partitions: Iterable[Partition], behind: Callable[[Partition], bool]
    ) -> tuple[list[Any], dict[Partition, Any], list[Partition]]:
        """The records whose order is now certain, in order; the last of them from each
        partition; and the partitions that hold the rest back (behind, with nothing
        buffered). `partitions` are all the assigned ones; `behind(p)` says whether p has
        records not read yet."""
        waiting = [p for p in partitions if not self._buffers.get(p) and behind(p)]
        # Only what comes before everything the waiting partitions could still deliver:
        # their next records are no earlier than what they have shown already.
        limits = [(self._seen[p], self._order(p)) for p in waiting if p in self._seen]
        if len(limits) < len(waiting):
            return [], {}, waiting  # a waiting partition with no time yet: nothing is certain
        received_at = self._received_at
        heads = [
            (received_at(buffer[0]), self._order(p), p)
            for p, buffer in self._buffers.items()
            if buffer
        ]
        heapq.heapify(heads)
        released: list[Any] = []
        last: dict[Partition, Any] = {}
        while heads:
            at, rank, partition = heads[0]
            # The first partition releases a run: up to the next head or the limit.
            bound = min([*limits, *(head[:2] for head in heads[1:3])], default=None)
            if bound is not None and (at, rank) >= bound:
                break
            buffer = self._buffers[partition]
            while buffer and (bound is None or (received_at(buffer[0]), rank) < bound):
                released.append(buffer.popleft())
            last[partition] = released[-1]
            if buffer:
                heapq.heapreplace(heads, (received_at(buffer[0]), rank, partition))
                continue
            heapq.heappop(heads)
            if behind(partition):  # drained, with more unread: it now holds the rest
                limits.append((self._seen[partition], rank))
                waiting.append(partition)
        return released, last, waiting
