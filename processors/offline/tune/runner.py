"""Replay one history under many configurations, in parallel, and rank them.

The compiled twin (processors/compiled, numba) scores every configuration first when it
can replay the history exactly; otherwise (or with `exact=True`) each configuration is one
plain run of the core (`FleetCore`, the specification) scored by `score.py` (the input
side prepared once per attribution), spread over processes (fork: the history is shared
copy-on-write, not pickled per task).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from faultstream.events.config import AttributionSettings, CoreSettings
from faultstream.events.models import DerivedRecord, InputRecord
from faultstream.processors.core import FleetCore

from .columns import ColumnarInputs
from .grid import Candidate
from .score import Outcomes, Score, Weights, outcomes, score_history, score_outcomes

Progress = Callable[[int, int], None]

# The history being tuned and its prepared input side (per attribution): set before the
# worker processes fork, so they share it copy-on-write instead of receiving pickles.
_HISTORY: Sequence[InputRecord] = ()
_PREPARED: dict[AttributionSettings, Outcomes] = {}


def evaluate(inputs: Sequence[InputRecord], settings: CoreSettings) -> Score:
    """One configuration: run the core over the history, score what it derived."""
    return score_history(inputs, _derive(inputs, settings), settings)


def _derive(inputs: Sequence[InputRecord], settings: CoreSettings) -> list[DerivedRecord]:
    process = FleetCore(settings).process
    return [out for record in inputs for out in process(record)]


def _prepared_for(settings: CoreSettings) -> Outcomes:
    attribution = settings.circuits.attribution
    prepared = _PREPARED.get(attribution)
    if prepared is None:
        prepared = _PREPARED[attribution] = outcomes(_HISTORY, attribution)
    return prepared


def _evaluate_in_worker(job: tuple[int, CoreSettings]) -> tuple[int, Score]:
    index, settings = job
    return index, score_outcomes(_prepared_for(settings), _derive(_HISTORY, settings))


@dataclass(frozen=True)
class Result:
    candidate: Candidate
    score: Score
    total: float


def run_grid(
    inputs: Sequence[InputRecord] | ColumnarInputs,
    candidates: Sequence[Candidate],
    weights: Weights | None = None,
    *,
    processes: int | None = None,
    progress: Progress | None = None,
    exact: bool = False,
) -> list[Result]:
    """Every candidate's score, best first (ties keep grid order). `exact` skips the
    compiled path and runs the core itself for every configuration. Columnar inputs are
    encoded from their columns; their records are built only for the exact path."""
    processes = max(1, min(processes or os.cpu_count() or 1, len(candidates)))
    if progress:
        progress(0, len(candidates))
    fast = None if exact else _compiled_scores(inputs, candidates, processes, progress)
    scores: list[Score] | dict[int, Score]
    if fast is None:
        records = inputs.records() if isinstance(inputs, ColumnarInputs) else inputs
        scores = _exact_scores(records, candidates, processes, progress)
    else:
        scores = fast
    results = [
        Result(c, scores[i], scores[i].total(weights or Weights()))
        for i, c in enumerate(candidates)
    ]
    order = sorted(range(len(results)), key=lambda i: (-results[i].total, i))
    return [results[i] for i in order]


def _compiled_scores(
    inputs: Sequence[InputRecord] | ColumnarInputs,
    candidates: Sequence[Candidate],
    threads: int,
    progress: Progress | None,
) -> list[Score] | None:
    """The numba path's scores, or None (with a one-line note) when it cannot be exact."""
    try:
        import faultstream.processors.compiled as compiled
    except ImportError as exc:  # numba missing or broken: the core is always there
        print(f"tune: exact path: compiled path unavailable ({exc})", file=sys.stderr)
        return None
    try:
        if isinstance(inputs, ColumnarInputs):
            history = compiled.encode_table(inputs.table, commands=False)
        else:
            history = compiled.encode_history(inputs, commands=False)
        totals = compiled.score_grid(
            history,
            [c.settings for c in candidates],
            threads=threads,
            progress=(lambda done: progress(done, len(candidates))) if progress else None,
        )
        return [Score.of(t) for t in totals]
    except compiled.UnsupportedHistory as exc:
        print(f"tune: exact path: {exc}", file=sys.stderr)
        return None


def _exact_scores(
    inputs: Sequence[InputRecord],
    candidates: Sequence[Candidate],
    processes: int,
    progress: Progress | None,
) -> dict[int, Score]:
    global _HISTORY
    scores: dict[int, Score] = {}
    jobs = [(i, c.settings) for i, c in enumerate(candidates)]
    _HISTORY = inputs
    _PREPARED.clear()
    try:
        for settings in {c.settings.circuits.attribution: c.settings for c in candidates}.values():
            _prepared_for(settings)  # before the fork, so every worker shares it
        if processes == 1 or "fork" not in multiprocessing.get_all_start_methods():
            for job in jobs:
                i, score = _evaluate_in_worker(job)
                scores[i] = score
                if progress:
                    progress(len(scores), len(jobs))
        else:
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                for i, score in pool.imap_unordered(_evaluate_in_worker, jobs):
                    scores[i] = score
                    if progress:
                        progress(len(scores), len(jobs))
    finally:
        _HISTORY = ()
        _PREPARED.clear()
    return scores


def progress_bar(stream: IO[str] = sys.stderr, width: int = 30) -> Progress:
    """A one-line bar redrawn in place: `tune [#####.....] 12/64`."""

    def show(done: int, total: int) -> None:
        filled = width * done // max(total, 1)
        stream.write(f"\rtune [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show
