"""The due moments of half-openings and of circuits open too long, in the core's order
(fleet.py's heap of (due, id, rank, seq, circuit, gen)), over flat arrays: `State.heap_due`
holds the due moments, `State.heap_entries` the rest, with id and rank packed into one sort
key. A hole is sifted and each entry written once. Lost workers are not timers here:
`liveness.py` finds them, and `kernel.py` merges them into this order."""

from __future__ import annotations

from .codes import HEAP_FULL
from .jit import inlined_step, step
from .state import HEAP_PUSHES, HEAP_SIZE, STATUS

# Entry columns beside the due moment.
KEY, PUSH, CIRCUIT, GENERATION = range(4)
# Ranks when due moments and ids tie (fleet.py): circuits half-opening (their kind rank),
# then a lost worker, then circuits open too long (OUTAGE_RANK + kind rank).
LOST_RANK = 3
OUTAGE_RANK = 4


@step
def sort_key(order, rank) -> int:
    """Id order first, then rank."""
    return order * 8 + rank


@inlined_step
def _before(due, key, push, heap_due, entries, i) -> bool:
    """Does (due, key, push) come before the entry in slot i? (No two entries tie: each
    has its own push.)"""
    other = heap_due[i]
    return due < other or (
        due == other
        and (key < entries[i, KEY] or (key == entries[i, KEY] and push < entries[i, PUSH]))
    )


@inlined_step
def _put(heap_due, entries, i, due, key, push, circuit, generation) -> None:
    heap_due[i] = due
    entries[i, KEY] = key
    entries[i, PUSH] = push
    entries[i, CIRCUIT] = circuit
    entries[i, GENERATION] = generation


@step
def push_due(state, due, key, circuit, generation) -> None:
    counters = state.counters
    heap_due, entries = state.heap_due, state.heap_entries
    n = counters[HEAP_SIZE]
    if n >= heap_due.shape[0]:
        counters[STATUS] = HEAP_FULL
        return
    counters[HEAP_PUSHES] += 1
    push = counters[HEAP_PUSHES]
    counters[HEAP_SIZE] = n + 1
    while n > 0:
        parent = (n - 1) >> 1
        if not _before(due, key, push, heap_due, entries, parent):
            break
        heap_due[n] = heap_due[parent]
        for col in range(4):
            entries[n, col] = entries[parent, col]
        n = parent
    _put(heap_due, entries, n, due, key, push, circuit, generation)


@step
def pop_due(state) -> tuple[float, int, int]:
    """Remove the first entry: its (due, circuit, generation)."""
    counters = state.counters
    heap_due, entries = state.heap_due, state.heap_entries
    due = heap_due[0]
    circuit = entries[0, CIRCUIT]
    generation = entries[0, GENERATION]
    n = counters[HEAP_SIZE] - 1
    counters[HEAP_SIZE] = n
    if n > 0:  # the last entry sifted down from the root
        last_due, key, push = heap_due[n], entries[n, KEY], entries[n, PUSH]
        last_circuit, last_generation = entries[n, CIRCUIT], entries[n, GENERATION]
        i = 0
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            right = child + 1
            if right < n and _before(
                heap_due[right],
                entries[right, KEY],
                entries[right, PUSH],
                heap_due,
                entries,
                child,
            ):
                child = right
            if _before(last_due, key, push, heap_due, entries, child):
                break
            heap_due[i] = heap_due[child]
            for col in range(4):
                entries[i, col] = entries[child, col]
            i = child
        _put(heap_due, entries, i, last_due, key, push, last_circuit, last_generation)
    return due, circuit, generation
