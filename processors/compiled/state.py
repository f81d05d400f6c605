"""What a compiled replay evolves (`State`): a bundle of numpy arrays that numba passes as
one value, with the names of their columns. It holds the circuits, workers and due
moments, and what the run writes: the log of derived records (`materialize.py` reads it),
the score (`score.py`), the figures marks. Its flags say which of those this run keeps.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .codes import FAILURE, FAILURE_TYPES, STRATEGIES, TASK_STARTED
from .encode import Encoded
from .moments import STATUS as STATUS  # the status slot of `counters`
from .versions import Rules

# Circuit columns.
(
    STATE,
    CONSECUTIVE_FAILURES,
    HALF_OPEN_SUCCESSES,
    TRIPS,
    TOTAL_TRIPS,
    TOTAL_SUCCESSES,
    TOTAL_FAILURES,
    GENERATION,  # bumped on every transition: a heap entry of another generation is stale
    DUE_MS,  # the half-open moment rounded up: the transition's ts
    LAST_CHANGE,  # the scorer's newest transition of the circuit (State.changes), or -1
    MARKED,  # 1 = its figures changed since the last TICK
    CREATED,  # 1 = the core knows it (fleet.py `_circuit` made it)
    OUTAGE_SINCE,  # ms it left CLOSED, -1 while CLOSED (open_longer_than_s)
    OPEN_FIRING,  # 1 = its open_longer_than_s alert fires
    CAPACITY_FIRING,  # 1 = its class_capacity_below alert fires (a class circuit)
    DIRTY,  # 1 = its class's capacity is to be judged again (a class circuit)
    WINDOW_HEAD,  # its window's ring (window.py): the oldest entry, the entries,
    WINDOW_SIZE,
    WINDOW_FAILURES,  # and how many are failures and slow successes
    WINDOW_SLOW,
) = range(20)
CIRCUIT_COLUMNS = 20
# Worker columns. STARTED: how many tasks it has started and not finished; INCOMING: how
# many a move command sent it that have not started anywhere or finished; SKEWED: its
# clock_skew alert fires.
# INTERVAL_*: its outcomes since the last outlier boundary.
EXISTS, LOST, CLASS, STARTED, INCOMING, SKEWED, INTERVAL_SUCCESSES, INTERVAL_FAILURES = range(8)
WORKER_COLUMNS = 8
# Class columns (per circuit; used for hardware_class circuits): live workers, those whose
# own circuit is OPEN or FORCED_OPEN, and those whose own circuit is CLOSED.
LIVE, OPENED, CLOSED_LIVE = range(3)
# Started task columns (per (worker, task) pair).
RUNNING, ATTEMPT, STARTED_BY = range(3)  # 1 = started; its attempt; its TASK_STARTED record
# Task columns (per task key, `State.checkpoints`): its newest checkpoint; the worker a move
# command sent it to, plus one (0: none); 1 = its escalations alert fires.
HAS_CHECKPOINT, CHECKPOINT_SEQ, MOVED_TO, ESCALATED = range(4)
TASK_COLUMNS = 4
# Counters: the status (moments.STATUS), sizes of the heap, log, changes and marks, the
# heap's push count (its tie-breaker), and the input being applied with its settings version.
HEAP_SIZE, HEAP_PUSHES, LOG_SIZE, CHANGES_SIZE, MARKED_SIZE, RECORD, VERSION = range(1, 8)
# The alerts' (fleet.py `_judge_alerts`): circuits known, OPEN or FORCED_OPEN, HALF_OPEN
# (the fleet's health); 1 = health to judge again, 1 = its alert fires; pending alerts and
# dirty classes held; 1 = any of those to write or judge (checked after each step).
KNOWN, OPEN_COUNT, HALF_OPEN_COUNT, HEALTH_DIRTY, HEALTH_FIRING = range(8, 13)
PENDING_SIZE, DIRTY_SIZE, ALERT_WORK = range(13, 16)
ADAPTIVE_SIZE = 16  # rows of `State.adaptive_log` written
# The window's verdict on the outcome being counted: the rules met (window.py bits), and the
# outcomes, failures and slow successes it judged.
WINDOW_MET, WINDOW_N, WINDOW_FAILURE_COUNT, WINDOW_SLOW_COUNT = range(17, 21)
MOVES = 21  # tasks a move command sent somewhere, not yet started anywhere or finished
BOUNDARY_GEN = 22  # the live outlier boundary timer's generation (older ones are stale)
# Commands awaiting their outcome: how many, the queue's head and tail, the newest stamp.
AWAITED, AWAIT_HEAD, AWAIT_TAIL, AWAIT_STAMP = range(23, 27)
COUNTERS = 27
# Adaptive ladders: a command awaiting its outcome (per trial key, fleet.py `_awaiting`):
# 1 = one awaits, and the (failure type, class circuit, strategy) its outcome is a trial of.
# STAMP: its place in `State.await_queue` (the oldest is forgotten past AWAITED_COMMANDS).
AWAITING, TRIAL_FAILURE_TYPE, TRIAL_CLASS, TRIAL_STRATEGY, STAMP = range(5)
# `State.learned` per (failure type, class circuit, strategy): trials, successes.
TRIALS, TRIAL_SUCCESSES = range(2)

# Log rows: what every row has, then a payload that depends on its type.
ROW_TYPE, ROW_RECORD, ROW_TS, ROW_VERSION = range(4)
LOG_COLUMNS = 18
TRANSITION, COMMAND, MIGRATION, FIGURES, ALERT = range(5)  # row types
# A transition's payload, and its float: the circuit's reset_timeout_s.
(
    TRANSITION_CIRCUIT,
    FROM_STATE,
    TO_STATE,
    TRANSITION_FAILURES,  # consecutive_failures
    TRANSITION_TRIPS,
    TRANSITION_TOTAL_TRIPS,
    TRANSITION_PROBES,  # half_open_successes
    REASON,
    REASON_FAILURE_TYPE,
    REASON_BLAME,
    TRANSITION_MET,  # the window's verdict when an outcome opened it (window.py bits)
    TRANSITION_N,
    TRANSITION_WINDOW_FAILURES,
    TRANSITION_WINDOW_SLOW,
) = range(4, 18)
RESET_TIMEOUT = 0
# Why a circuit changed state (REASON), and what a failure that opened it was (REASON_BLAME).
THRESHOLD, FAILED_HALF_OPEN, SUCCESSES, TIMEOUT_ELAPSED, BY_FORCE_OPEN, BY_RESET = range(6)
WINDOW_FAILURE, WINDOW_SUCCESS = 6, 7  # opened by a window rule alone: on a failure, a success
OUTLIER = 8  # ejected as an outlier worker: TRANSITION_N holds the sample's size,
OUTLIER_CLASS = 16  # this column its class circuit, the floats its rate, limit and mean
OUTLIER_RATE, OUTLIER_LIMIT, OUTLIER_MEAN = 1, 2, 3
NO_BLAME, BLAME_TYPE, BLAME_GUARD, BLAME_LOST = range(4)
# A command's or a migration's payload (the first four shared).
STRATEGY, TARGET, HAS_TARGET_CHECKPOINT, TARGET_CHECKPOINT = range(4, 8)
# A FAILURE's command: the fleet guard held; the worker's, class's and task type's circuit
# states after the failure; the class's and task type's due ms; floats: their reset_timeout_s.
GUARDED, WORKER_STATE, CLASS_STATE, TASK_TYPE_STATE, CLASS_DUE_MS, TASK_TYPE_DUE_MS = range(8, 14)
CLASS_RESET_TIMEOUT, TASK_TYPE_RESET_TIMEOUT = 0, 1
# ... and, when its version learns and the ladder planned it, its row of `State.adaptive_log`
# (each candidate rung's strategy, trials and successes), else -1.
ADAPTIVE_ROW = 14
ADAPTIVE_COLUMNS = 9
# A migration off a lost worker: its TASK_STARTED record, the worker, the loss's due ms.
MIGRATED_START, MIGRATED_WORKER, LOSS_DUE_MS = range(8, 11)
# A circuit's figures: its counters, then its worker's class circuit (-1: no worker known),
# live and available (a worker circuit), or its known, live and available workers (a class).
FIGURES_CIRCUIT, FIGURES_STATE, FIGURES_FAILURES, FIGURES_PROBES = range(4, 8)
FIGURES_TRIPS, FIGURES_TOTAL_TRIPS, FIGURES_SUCCESSES, FIGURES_TOTAL_FAILURES = range(8, 12)
FIGURES_CLASS, FIGURES_LIVE, FIGURES_AVAILABLE = range(12, 15)
FIGURES_WORKERS = FIGURES_CLASS
# An alert: its rule, FIRING or RESOLVED, subject (class or other circuit, task key, worker,
# -1 for the fleet), and the numbers its message needs: capacity (free, live); health
# (circuits, open, half-open); clock skew (skew ms); an escalation's FIRING (its command's row).
ALERT_RULE, ALERT_STATE, ALERT_SUBJECT, ALERT_A, ALERT_B, ALERT_C = range(4, 10)
CAPACITY_RULE, OPEN_LONGER_RULE, ESCALATIONS_RULE, HEALTH_RULE, SKEW_RULE = range(5)
FIRING, RESOLVED = range(2)


class State(NamedTuple):
    """What one replay evolves and writes."""

    circuits: np.ndarray  # int64 [circuit, CIRCUIT_COLUMNS]
    reset_timeout_s: np.ndarray  # float64 [circuit]
    workers: np.ndarray  # int64 [worker, WORKER_COLUMNS]
    classes: np.ndarray  # int64 [circuit, 3]
    members: np.ndarray  # int64: class members in id order, at Fleet.class_offsets (derive)
    member_counts: np.ndarray  # int64 [circuit] (derive)
    started: np.ndarray  # int64 [pair, 3] (derive)
    checkpoints: np.ndarray  # int64 [task key, TASK_COLUMNS] (derive)
    heap_due: np.ndarray  # float64: due moments of half-openings (heap.py)
    heap_entries: np.ndarray  # int64 [capacity, 4]
    log: np.ndarray  # int64 [capacity, LOG_COLUMNS] (derive)
    log_floats: np.ndarray  # float64 [capacity, 4] (derive)
    changes: np.ndarray  # int64 [capacity, 3]: the scorer's transitions (scoring)
    scores: np.ndarray  # int64: the scorer's totals (score.py) (scoring)
    marked: np.ndarray  # int64 [circuit]: the circuits marked since the last TICK (figures)
    counters: np.ndarray  # int64 [COUNTERS]
    pending: np.ndarray  # int64 [capacity, LOG_COLUMNS]: alerts held to their step's end (derive)
    dirty: np.ndarray  # int64 [circuit]: classes whose capacity is to be judged (derive)
    scratch: np.ndarray  # int64: a lost worker's started tasks, sorted (derive)
    awaiting: np.ndarray  # int64 [trial key, 5] (adaptive)
    await_queue: np.ndarray  # int64 [command, 2]: (trial key, stamp) in order (adaptive)
    learned: np.ndarray  # int64 [(failure type x circuit + circuit) x strategy + strategy, 2]
    adaptive_log: np.ndarray  # int64 [FAILURE record, ADAPTIVE_COLUMNS] (adaptive)
    window_offsets: np.ndarray  # int64 [circuit + 1]: each circuit's ring (windows)
    window_ts: np.ndarray  # int64: an entry's decision ms (windows)
    window_kind: np.ndarray  # int64: window.py SUCCESS, FAILURE or SLOW (windows)
    starts: np.ndarray  # int64 [trial key, 2]: 1 = started, and its decision ms (slow)
    moved: np.ndarray  # int8 [task key]: 1 = a move is pending (MOVED_TO, in a small array)
    sample: np.ndarray  # float64 [class slots]: an outlier sample's rates (outliers)
    sampled: np.ndarray  # int64 [class slots]: and their workers (outliers)
    derive: bool  # write the derived records (transitions, commands, migrations)
    scoring: bool  # score the transitions and outcomes
    figures: bool  # mark circuits and write their figures at each TICK (with derive)
    adaptive: bool  # learn each strategy's success (a settings version has adaptive ladders)
    windows: bool  # keep each circuit's window of outcomes (a version has a window rule)
    slow: bool  # time each task attempt from its start (a version has the slow-call rule)
    outliers: bool  # judge outlier workers at interval boundaries (with derive)


def new_state(
    encoded: Encoded,
    rules: Rules,
    *,
    derive: bool,
    scoring: bool,
    figures: bool,
    log_capacity: int,
    heap_capacity: int,
    changes_capacity: int,
) -> State:
    """A fresh state: every circuit CLOSED, no worker known yet."""
    fleet = encoded.fleet
    n_circ = len(fleet.circuit_rank)
    n_work = len(fleet.worker_circuit)

    def sized(n: int, *shape: int, keep: bool, dtype: type = np.int64) -> np.ndarray:
        return np.zeros((n if keep else 0, *shape), dtype)

    circuits = np.zeros((n_circ, CIRCUIT_COLUMNS), np.int64)
    circuits[:, LAST_CHANGE] = -1
    circuits[:, OUTAGE_SINCE] = -1
    pairs_per_worker = int(np.diff(fleet.worker_pairs_offsets).max(initial=0))
    inputs = encoded.inputs
    adaptive = derive and len(inputs.trial_next) > 0 and bool(rules.min_samples.any())
    windows = bool(rules.window_on.any())
    slow = bool((rules.slow_ms > 0).any())
    outliers = derive and bool((rules.outlier_factor > 0).any())
    # Commands: one per FAILURE, one per lost worker's task (a TASK_STARTED each at most).
    commands = int(np.count_nonzero((inputs.kind == FAILURE) | (inputs.kind == TASK_STARTED)))
    slots = int(np.diff(fleet.class_offsets).max(initial=0))
    offsets = _window_offsets(encoded, rules) if windows else np.zeros(n_circ + 1, np.int64)
    return State(
        circuits,
        np.zeros(n_circ),
        np.zeros((n_work, WORKER_COLUMNS), np.int64),
        np.zeros((n_circ, 3), np.int64),
        sized(int(fleet.class_offsets[-1]), keep=derive),
        sized(n_circ, keep=derive),
        sized(len(fleet.pair_task_key), 3, keep=derive),
        sized(int(encoded.inputs.task_key.max(initial=-1)) + 1, TASK_COLUMNS, keep=derive),
        np.empty(heap_capacity),
        np.empty((heap_capacity, 4), np.int64),
        np.empty((log_capacity if derive else 0, LOG_COLUMNS), np.int64),
        np.empty((log_capacity if derive else 0, 4), np.float64),
        np.empty((changes_capacity if scoring else 0, 3), np.int64),
        np.zeros(7, np.int64),
        sized(n_circ, keep=figures),
        np.zeros(COUNTERS, np.int64),
        sized(log_capacity // 16 + 256, LOG_COLUMNS, keep=derive),
        sized(n_circ, keep=derive),
        sized(pairs_per_worker, keep=derive),
        sized(int(inputs.trial_next.max(initial=-1)) + 1, 5, keep=adaptive),
        sized(commands, 2, keep=adaptive),
        sized(len(FAILURE_TYPES) * n_circ * len(STRATEGIES), 2, keep=adaptive),
        sized(int(np.count_nonzero(inputs.kind == FAILURE)), ADAPTIVE_COLUMNS, keep=adaptive),
        offsets,
        np.zeros(int(offsets[-1]), np.int64),
        np.zeros(int(offsets[-1]), np.int64),
        sized(int(inputs.trial_now.max(initial=-1)) + 1, 2, keep=slow),
        sized(int(inputs.task_key.max(initial=-1)) + 1, keep=derive, dtype=np.int8),
        sized(slots, keep=outliers, dtype=np.float64),
        sized(slots, keep=outliers),
        derive,
        scoring,
        figures,
        adaptive,
        windows,
        slow,
        outliers,
    )


def _window_offsets(encoded: Encoded, rules: Rules) -> np.ndarray:
    """Each circuit's ring: room for every outcome it can ever count, and no more than the
    largest count window of its kind plus one (an entry is added before the oldest
    leaves). Each outcome comes from a worker event naming the circuit as worker, class or
    task type, and so does each lost worker's disconnection (a loss needs an event since
    the last: its worker's, its class's; a task type's, a start): twice those, plus one."""
    inputs, fleet = encoded.inputs, encoded.fleet
    n_circ = len(fleet.circuit_rank)
    events = inputs.worker >= 0
    named = np.concatenate(
        [
            fleet.worker_circuit[inputs.worker[events]],
            inputs.hardware_class[events],
            inputs.task_type[inputs.task_type >= 0],
        ]
    )
    room = 2 * np.bincount(named.astype(np.int64), minlength=n_circ) + 1
    for rank in range(3):
        counts = rules.window_count[:, rank]
        if (counts > 0).all():  # count windows only: bounded by the largest
            kind = fleet.circuit_rank == rank
            room[kind] = np.minimum(room[kind], int(counts.max()) + 1)
    offsets = np.zeros(n_circ + 1, np.int64)
    np.cumsum(room, out=offsets[1:])
    return offsets
