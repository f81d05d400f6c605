"""The compiled core's due-moment heap: fleet.py's heap of (due, id, rank, seq, target,
gen) over flat arrays. `hdue` holds the due moments, `hk` the rest, with id and rank
packed into one sort key. A hole is sifted and each entry written once, and a lazily
re-armed lost-worker timer replaces the first entry in one sift: with a thousand
workers' timers in it, the heap is the kernel's hot spot."""

from __future__ import annotations

from numba import njit

from faultstream.processors.offline.tune.kernel import A_HEAP, A_SEQ, A_STATUS

STATUS_HEAP_FULL = 4
K_KEY, K_SEQ, K_TARGET, K_GEN = range(4)


@njit(cache=True, nogil=True)
def _sort_key(order, rank) -> int:
    return order * 4 + rank


@njit(cache=True, nogil=True, inline="always")
def _before(due, key, seq, hdue, hk, i) -> bool:
    """Does (due, key, seq) come before the entry in slot i? (No two entries tie: each
    has its own seq.)"""
    other = hdue[i]
    return due < other or (
        due == other and (key < hk[i, K_KEY] or (key == hk[i, K_KEY] and seq < hk[i, K_SEQ]))
    )


@njit(cache=True, nogil=True, inline="always")
def _put(hdue, hk, i, due, key, seq, target, gen) -> None:
    hdue[i] = due
    hk[i, K_KEY] = key
    hk[i, K_SEQ] = seq
    hk[i, K_TARGET] = target
    hk[i, K_GEN] = gen


@njit(cache=True, nogil=True)
def _push(hdue, hk, acc, due, key, target, gen) -> None:
    n = acc[A_HEAP]
    if n >= hdue.shape[0]:
        acc[A_STATUS] = STATUS_HEAP_FULL
        return
    acc[A_SEQ] += 1
    seq = acc[A_SEQ]
    acc[A_HEAP] = n + 1
    while n > 0:
        parent = (n - 1) >> 1
        if not _before(due, key, seq, hdue, hk, parent):
            break
        hdue[n] = hdue[parent]
        for col in range(4):
            hk[n, col] = hk[parent, col]
        n = parent
    _put(hdue, hk, n, due, key, seq, target, gen)


@njit(cache=True, nogil=True)
def _sift_down(hdue, hk, n, due, key, seq, target, gen) -> None:
    """Place an entry at the root of a heap of n entries whose root slot is free."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        right = child + 1
        if right < n and _before(hdue[right], hk[right, K_KEY], hk[right, K_SEQ], hdue, hk, child):
            child = right
        if _before(due, key, seq, hdue, hk, child):
            break
        hdue[i] = hdue[child]
        for col in range(4):
            hk[i, col] = hk[child, col]
        i = child
    _put(hdue, hk, i, due, key, seq, target, gen)


@njit(cache=True, nogil=True)
def _pop(hdue, hk, acc, popped) -> float:
    """Remove the first entry: its columns into `popped`, its due returned."""
    due = hdue[0]
    for col in range(4):
        popped[col] = hk[0, col]
    n = acc[A_HEAP] - 1
    acc[A_HEAP] = n
    if n > 0:
        _sift_down(hdue, hk, n, hdue[n], hk[n, K_KEY], hk[n, K_SEQ], hk[n, K_TARGET], hk[n, K_GEN])
    return due


@njit(cache=True, nogil=True)
def _replace_first(hdue, hk, acc, due, key, target, gen) -> None:
    """`_pop` then `_push` in one sift: a lazily re-armed lost-worker timer."""
    acc[A_SEQ] += 1
    _sift_down(hdue, hk, acc[A_HEAP], due, key, acc[A_SEQ], target, gen)
