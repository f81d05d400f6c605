"""The compiled tuner: the circuits of CIRCUITS.md stepped by a numba kernel that scores
as it goes, over a history encoded once (`encode.py`).

Only what the score depends on is modelled: the three circuit kinds and their state
machines, backoff, half-open due moments, the fleet guard and lost workers. Recovery
commands never change a circuit (`FleetCore._command` only reads states), so they are
left out. `FleetCore` stays the specification: a property test checks that every score
here equals the core's run plus `score_history`, and anything not modelled exactly
(CONFIG_CHANGED records, an ambiguous rounding, an enormous trip count) raises
`UnsupportedHistory` so that the caller falls back to the core.

What depends on only part of the settings is computed once per distinct part and shared
across the grid: the failures per circuit (per attribution) and the liveness pass
(`liveness.py`, per heartbeat timeout), which leaves each configuration's replay only
the inputs that can change a circuit. Each replay is one nogil kernel call, so the
threads of `score_grid` run them in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

from faultstream.events.config import CircuitSettings, CoreSettings

from .encode import WORKER_DISCONNECTION, EncodedHistory, UnsupportedHistory, attribution_ranks
from .kernel import (
    A_DELAY_SUM,
    A_DELAYS,
    A_FLAPPING,
    A_OPEN_MS,
    A_OPENINGS,
    A_PROTECTED,
    A_STATUS,
    A_WITHHELD,
    BACKOFF_STEPS,
    STATUS_OK,
    WHY,
    _replay,
    round6,
)
from .liveness import liveness
from .score import Score

__all__ = ["A_STATUS", "Config", "round6", "score_config", "score_grid"]


# --- configuration as arrays ----------------------------------------------------------


def backoff_ms(settings: CircuitSettings) -> tuple[np.ndarray, bool]:
    """`reset_timeout_s x 1000` for trips 1, 2, …, computed by Python exactly as the core
    does; complete when it reached the cap (every later trip waits the same)."""
    recovery = float(settings.recovery_timeout_s)
    factor = float(settings.reset_timeout_factor)
    cap = float(settings.max_reset_timeout_s)
    table = []
    for trips in range(1, BACKOFF_STEPS + 1):
        wait = min(recovery * factor ** (trips - 1), cap)
        table.append(wait * 1000.0)
        if factor == 1.0 or (len(table) >= 8 and all(v == cap * 1000.0 for v in table[-8:])):
            return np.array(table), True
    return np.array(table), False


class Config:
    """One candidate's settings as the kernel reads them, with what depends only on part
    of them (the failures per circuit under its attribution, the liveness pass under its
    heartbeat timeout) taken from `shared` when another configuration computed it."""

    def __init__(
        self, settings: CoreSettings, history: EncodedHistory, shared: dict | None = None
    ) -> None:
        shared = {} if shared is None else shared
        circuits = settings.circuits
        kinds = (circuits.worker, circuits.hardware_class, circuits.task_type)
        tables = [backoff_ms(k) for k in kinds]
        width = max(len(t) for t, _ in tables)
        self.backoff = np.zeros((3, width))
        self.backoff_len = np.zeros(3, np.int64)
        self.backoff_done = np.zeros(3, np.int64)
        for rank, (table, done) in enumerate(tables):
            self.backoff[rank, : len(table)] = table
            self.backoff_len[rank] = len(table)
            self.backoff_done[rank] = done
        self.failure_threshold = np.array([k.failure_threshold for k in kinds], np.int64)
        self.success_threshold = np.array([k.success_threshold for k in kinds], np.int64)
        self.guard_fraction = float(circuits.worker.max_open_fraction)
        self.guard_min = int(circuits.worker.guard_min_workers)
        heartbeat_ms = float(settings.recovery.heartbeat_timeout_s) * 1000.0
        self.ranks = attribution_ranks(circuits.attribution)
        key = ("failures", self.ranks.tobytes())
        if key not in shared:
            shared[key] = history.failures_by_circuit(self.ranks)
        self.fail_offsets, self.fail_ts = shared[key]
        track_tasks = bool(self.ranks[WORKER_DISCONNECTION] == 2)
        key = ("liveness", heartbeat_ms, track_tasks)
        if key not in shared:
            shared[key] = _visits(history, heartbeat_ms, track_tasks)
        status, *self.liveness = shared[key]
        self.liveness_status = int(status)


def _visits(history: EncodedHistory, heartbeat_ms: float, track_tasks: bool) -> tuple:
    """The liveness pass, with the visited inputs' fields gathered into contiguous
    arrays (every configuration streams them instead of striding through the history)."""
    h = history
    status, visit, vnow, *lost = liveness(
        h.kind, h.ts, h.skip, h.worker, h.hw, h.tt, h.task, h.circuit_order,
        h.worker_circuit, h.worker_tasks_offsets, h.worker_tasks, h.n_tasks,
        heartbeat_ms, track_tasks,
    )  # fmt: skip
    columns = (h.kind, h.ts, h.worker, h.hw, h.tt, h.ftype, h.scored)
    return (status, *(column[visit] for column in columns), vnow, *lost)


# --- the Python side ------------------------------------------------------------------


def score_config(history: EncodedHistory, config: Config) -> Score:
    h, c = history, config
    if c.liveness_status != STATUS_OK:
        raise UnsupportedHistory(WHY[c.liveness_status])
    acc = _replay(
        h.kind, h.ts, h.worker, h.hw, h.tt, h.ftype,
        h.circuit_rank, h.circuit_order, h.circuit_worker, h.worker_circuit,
        h.ok_offsets, h.ok_ts, h.deferred, h.end_ts, *c.liveness,
        c.backoff, c.backoff_len, c.backoff_done, c.failure_threshold, c.success_threshold,
        c.guard_fraction, c.guard_min, c.ranks, c.fail_offsets, c.fail_ts,
    )  # fmt: skip
    status = int(acc[A_STATUS])
    if status != STATUS_OK:
        raise UnsupportedHistory(WHY[status])
    delays = int(acc[A_DELAYS])
    mean_delay_s = int(acc[A_DELAY_SUM]) / delays / 1000.0 if delays else 0.0
    return Score(
        int(acc[A_PROTECTED]),
        int(acc[A_WITHHELD]),
        int(acc[A_OPENINGS]),
        mean_delay_s,
        int(acc[A_OPEN_MS]) / 1000.0,
        int(acc[A_FLAPPING]),
    )


def score_grid(
    history: EncodedHistory,
    settings: Sequence[CoreSettings],
    *,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Score]:
    """Every configuration's score, configurations spread over threads (the kernel
    releases the GIL). Raises UnsupportedHistory when any run cannot be exact."""
    shared: dict = {}
    configs = [Config(s, history, shared) for s in settings]
    threads = max(1, min(threads or os.cpu_count() or 1, len(configs)))
    scores: list[Score | None] = [None] * len(configs)
    if threads == 1:
        for i, config in enumerate(configs):
            scores[i] = score_config(history, config)
            if progress:
                progress(i + 1)
        return scores  # type: ignore[return-value]
    with ThreadPoolExecutor(threads) as pool:
        futures = {pool.submit(score_config, history, c): i for i, c in enumerate(configs)}
        for done, future in enumerate(as_completed(futures), start=1):
            scores[futures[future]] = future.result()
            if progress:
                progress(done)
    return scores  # type: ignore[return-value]
