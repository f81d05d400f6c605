"""Dropping repeated event ids: a record seen before changes nothing (CIRCUITS.md).

Two kinds of id, two memories:

- **Sequenced** ids, `<producer>.<n>` (n a positive decimal of at most 18 digits, no
  leading zero), the SDK's own: each emitter draws a random producer token and numbers
  its events 1, 2, 3, ... . A worker remembers, per producer, the numbers it has seen as
  ranges, so its memory grows with the gaps, not with the events: an emitter's events
  arrive nearly in order, and a spool resent after an outage fills its gap. Exact, however
  old the resend, for the `PRODUCERS_PER_WORKER` producers a worker used last (each up to
  `RANGES_PER_PRODUCER` ranges; past that its lowest numbers are forgotten).
- **Any other** id: the newest `SEEN_IDS_PER_WORKER` of the worker, kept as strings.

Control records (TICK, OPERATOR, CONFIG_CHANGED) share one window of `SEEN_CONTROL_IDS`.
The compiled twin (compiled/encode.py `_dedupe`) decides the same.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .workers import Worker

SEEN_IDS_PER_WORKER = 10_000
SEEN_CONTROL_IDS = 100_000
PRODUCERS_PER_WORKER = 10_000
RANGES_PER_PRODUCER = 10_000
MAX_DIGITS = 18  # an int64 holds every such number (the compiled twin reads them so)


def sequence_number(event_id: str) -> tuple[str, int] | None:
    """(producer, n) of a sequenced id, else None."""
    producer, _, number = event_id.rpartition(".")
    if (
        producer
        and number.isascii()
        and number.isdigit()
        and number[0] != "0"
        and len(number) <= MAX_DIGITS
    ):
        return producer, int(number)
    return None


def add_number(ranges: list[int], n: int) -> bool:
    """Add n to one producer's numbers; False when it was there already.

    `ranges` is flat and sorted, [start, end, start, end, ...], of disjoint ranges that
    never touch (a number between two joins them).
    """
    if ranges and n == ranges[-1] + 1:  # the usual case: the producer's next event
        ranges[-1] = n
        return True
    p = bisect_right(ranges, n)  # how many bounds are <= n
    if p & 1 or (p and ranges[p - 1] == n):  # inside a range, or on its end
        return False
    joins_left = p > 0 and ranges[p - 1] == n - 1
    joins_right = p < len(ranges) and ranges[p] == n + 1
    if joins_left and joins_right:
        del ranges[p - 1 : p + 1]
    elif joins_left:
        ranges[p - 1] = n
    elif joins_right:
        ranges[p] = n
    else:
        ranges[p:p] = (n, n)
        if len(ranges) > 2 * RANGES_PER_PRODUCER:
            del ranges[:2]  # forget the lowest numbers
    return True


def remember(seen: set[str], order: deque[str], event_id: str, limit: int) -> None:
    """Add an id to a bounded set that forgets the oldest first."""
    seen.add(event_id)
    order.append(event_id)
    if len(order) > limit:
        seen.discard(order.popleft())


def first_time(worker: Worker, event_id: str) -> bool:
    """Is this the first time `worker` sees the id? It is remembered either way.

    Every worker event passes here, so `sequence_number` and the usual case of
    `add_number` are inlined (tests/unit/test_repeats.py holds the three to one rule).
    """
    producer, _, number = event_id.rpartition(".")
    if (
        producer
        and number.isdigit()
        and number.isascii()
        and number[0] != "0"
        and len(number) <= MAX_DIGITS
    ):
        n = int(number)
        producers = worker.producers
        ranges = producers.get(producer)
        if ranges is None:
            producers[producer] = [n, n]
            if len(producers) > PRODUCERS_PER_WORKER:
                del producers[next(iter(producers))]  # the least recently used
            return True
        if len(producers) > 1 and next(reversed(producers)) != producer:
            del producers[producer]  # the most recently used go last
            producers[producer] = ranges
        if n == ranges[-1] + 1:
            ranges[-1] = n
            return True
        return add_number(ranges, n)
    seen = worker.seen
    if event_id in seen:
        return False
    remember(seen, worker.seen_order, event_id, SEEN_IDS_PER_WORKER)
    return True
