"""Workers in the compiled twin (fleet.py `process`, `_new_worker`, `_move_class`,
`_lose_worker`, `_moving`, `_arrived`; workers.py): a worker event keeps its worker alive in
its class, a lost worker counts one WORKER_DISCONNECTION and its started tasks migrate in
start order, and the members of each class (kept in id order) give a moved task its target
worker: the least loaded, then the healthiest."""

from __future__ import annotations

from .adaptive import await_trial
from .alerts import closed, create, dirty_class, queue_alert
from .circuits import count_failure
from .codes import (
    CLOSED,
    STRATEGY_CODE,
    TASK_TYPE,
    WORKER,
    WORKER_DISCONNECTION,
    openish,
)
from .figures import heapsort, mark
from .jit import inlined_step, step
from .log import log_row
from .moments import ceil_ms
from .state import (
    ATTEMPT,
    BLAME_LOST,
    CHECKPOINT_SEQ,
    CLASS,
    CLOSED_LIVE,
    CONSECUTIVE_FAILURES,
    ESCALATED,
    ESCALATIONS_RULE,
    EXISTS,
    FIRING,
    HAS_CHECKPOINT,
    HAS_TARGET_CHECKPOINT,
    INCOMING,
    LIVE,
    LOSS_DUE_MS,
    LOST,
    MIGRATED_START,
    MIGRATED_WORKER,
    MIGRATION,
    MOVED_TO,
    MOVES,
    OPENED,
    RUNNING,
    STARTED,
    STARTED_BY,
    STATE,
    STRATEGY,
    TARGET,
    TARGET_CHECKPOINT,
    VERSION,
)

DIFFERENT_WORKER = STRATEGY_CODE["DIFFERENT_WORKER"]
ESCALATION = STRATEGY_CODE["ESCALATION"]


@step
def _join(run, state, c, w) -> None:
    """Insert worker `w` into class `c`'s members, kept in id order."""
    members, order = state.members, run.fleet.worker_order
    start = run.fleet.class_offsets[c]
    at = start + state.member_counts[c]
    while at > start and order[members[at - 1]] > order[w]:
        members[at] = members[at - 1]
        at -= 1
    members[at] = w
    state.member_counts[c] += 1


@step
def _leave(run, state, c, w) -> None:
    members = state.members
    start = run.fleet.class_offsets[c]
    end = start + state.member_counts[c]
    at = start
    while members[at] != w:
        at += 1
    for j in range(at, end - 1):
        members[j] = members[j + 1]
    state.member_counts[c] -= 1


@inlined_step
def arrive(run, state, w, class_circuit) -> None:
    """A worker event from `w`, reporting class `class_circuit`: it is known, in that class, and
    alive; the fleet guard's counts of the classes follow, and the capacity alerts'."""
    workers, classes = state.workers, state.classes
    worker_circuit = run.fleet.worker_circuit[w]
    circuit_state = state.circuits[worker_circuit, STATE]
    opened = openish(circuit_state)
    if workers[w, EXISTS] == 0:
        workers[w, EXISTS] = 1
        workers[w, CLASS] = class_circuit
        if state.derive:
            create(run, state, class_circuit)
            create(run, state, worker_circuit)
            _join(run, state, class_circuit, w)
            dirty_class(state, class_circuit)
        classes[class_circuit, LIVE] += 1
        classes[class_circuit, OPENED] += opened
        classes[class_circuit, CLOSED_LIVE] += closed(circuit_state)
        if state.figures:
            mark(state, worker_circuit)
            mark(state, class_circuit)
        return
    if class_circuit != workers[w, CLASS]:
        old = workers[w, CLASS]
        if state.derive:
            _leave(run, state, old, w)
            create(run, state, class_circuit)
            _join(run, state, class_circuit, w)
            dirty_class(state, old)
            dirty_class(state, class_circuit)
        if workers[w, LOST] == 0:
            classes[old, LIVE] -= 1
            classes[old, OPENED] -= opened
            classes[old, CLOSED_LIVE] -= closed(circuit_state)
            classes[class_circuit, LIVE] += 1
            classes[class_circuit, OPENED] += opened
            classes[class_circuit, CLOSED_LIVE] += closed(circuit_state)
        workers[w, CLASS] = class_circuit
        if state.figures:
            mark(state, old)
            mark(state, class_circuit)
            mark(state, worker_circuit)
    if workers[w, LOST] == 1:  # back from lost
        workers[w, LOST] = 0
        classes[class_circuit, LIVE] += 1
        classes[class_circuit, OPENED] += opened
        classes[class_circuit, CLOSED_LIVE] += closed(circuit_state)
        if state.derive:
            dirty_class(state, class_circuit)
        if state.figures:
            mark(state, worker_circuit)
            mark(state, class_circuit)


@inlined_step
def arrived(state, key) -> None:
    """fleet.py `_arrived`: task `key` started somewhere or finished, so it is no longer in
    flight to the worker a move command sent it to. (Most inputs find no move pending:
    they skip the task's row, a cache miss in a long history.)"""
    counters = state.counters
    if counters[MOVES] == 0 or state.moved[key] == 0:
        return
    tasks = state.checkpoints
    state.workers[tasks[key, MOVED_TO] - 1, INCOMING] -= 1
    tasks[key, MOVED_TO] = 0
    state.moved[key] = 0
    counters[MOVES] -= 1


@step
def moving(state, key, target) -> None:
    """fleet.py `_moving`: a move command sent task `key` to worker `target`."""
    arrived(state, key)
    state.checkpoints[key, MOVED_TO] = target + 1
    state.moved[key] = 1
    state.workers[target, INCOMING] += 1
    state.counters[MOVES] += 1


@step
def escalated(run, state, key, ts, row) -> None:
    """An ESCALATION command (log row `row`) for task `key`: its alert fires, once."""
    tasks = state.checkpoints
    if run.rules.escalations[state.counters[VERSION]] == 0 or tasks[key, ESCALATED] == 1:
        return
    tasks[key, ESCALATED] = 1
    queue_alert(state, ESCALATIONS_RULE, FIRING, key, ts, row)


@step
def pick_target(run, state, c, failed) -> int:
    """workers.py `pick_target`: among the live CLOSED workers of class `c` but `failed`,
    the fewest tasks in flight, then the fewest consecutive failures (capped at 3 as
    health is), then by id (the members are in id order); -1 for none."""
    if c < 0:
        return -1
    best = -1
    best_load = best_failures = 0
    workers = state.workers
    start = run.fleet.class_offsets[c]
    for j in range(start, start + state.member_counts[c]):
        m = state.members[j]
        cm = run.fleet.worker_circuit[m]
        if workers[m, LOST] == 1 or state.circuits[cm, STATE] != CLOSED or m == failed:
            continue
        load = workers[m, STARTED] + workers[m, INCOMING]
        failures = min(state.circuits[cm, CONSECUTIVE_FAILURES], 3)
        if best < 0 or load < best_load or (load == best_load and failures < best_failures):
            best = m
            best_load = load
            best_failures = failures
            if load == 0 and failures == 0:  # nothing beats it; ties go to the first by id
                break
    return best


@step
def lose_worker(run, state, loss) -> None:
    """The loss `loss` (of `Visits`): its worker leaves its class's live count, one
    WORKER_DISCONNECTION is counted (on the circuit the attribution names: for task_type,
    each task type it had started), and each started task migrates."""
    visits, fleet = run.visits, run.fleet
    w = visits.lost_worker[loss]
    at = visits.lost_at[loss]
    workers, classes = state.workers, state.classes
    workers[w, LOST] = 1
    home = workers[w, CLASS]
    worker_circuit = fleet.worker_circuit[w]
    classes[home, LIVE] -= 1
    classes[home, OPENED] -= openish(state.circuits[worker_circuit, STATE])
    classes[home, CLOSED_LIVE] -= closed(state.circuits[worker_circuit, STATE])
    if state.derive:
        dirty_class(state, home)
    if state.figures:
        mark(state, worker_circuit)
        mark(state, home)
    rank = run.rules.ranks[state.counters[VERSION], WORKER_DISCONNECTION]
    first, end = 0, 1  # one circuit, or (for task_type) each task type it had started
    if rank == TASK_TYPE:
        first = visits.lost_types_end[loss - 1] if loss > 0 else 0
        end = visits.lost_types_end[loss]
    for q in range(first, end):
        c = worker_circuit if rank == WORKER else home
        if rank == TASK_TYPE:
            c = visits.lost_types[q]
        count_failure(run, state, c, at, WORKER_DISCONNECTION, BLAME_LOST)
    if state.derive and workers[w, STARTED] > 0:
        _migrate(run, state, w, home, ceil_ms(visits.lost_due[loss]), at)


@step
def _migrate(run, state, w, home, due_ms, at) -> None:
    """Lost worker `w`'s started tasks, in start order: each moved to another worker of its
    class with its checkpoint (in flight there for the next pick), or escalated at
    max_retries."""
    fleet, started, checkpoints, log = run.fleet, state.started, state.checkpoints, state.log
    max_retries = run.rules.max_retries[state.counters[VERSION]]
    # Start order is the order of each task's newest TASK_STARTED: sorted by it.
    order, n, n_pairs = state.scratch, 0, started.shape[0]
    for q in range(fleet.worker_pairs_offsets[w], fleet.worker_pairs_offsets[w + 1]):
        p = fleet.worker_pairs[q]
        if started[p, RUNNING] == 1:
            order[n] = started[p, STARTED_BY] * n_pairs + p
            n += 1
    heapsort(order, n)
    for j in range(n):
        p = order[j] % n_pairs
        started[p, RUNNING] = 0
        key = fleet.pair_task_key[p]
        row = log_row(state, MIGRATION, at)
        if row < 0:
            return
        log[row, MIGRATED_START] = started[p, STARTED_BY]
        log[row, MIGRATED_WORKER] = fleet.worker_circuit[w]
        log[row, LOSS_DUE_MS] = due_ms
        log[row, HAS_TARGET_CHECKPOINT] = 0
        log[row, TARGET] = -1
        if state.adaptive:  # its outcome will be a trial of this move (or escalation)
            strategy = ESCALATION if started[p, ATTEMPT] >= max_retries else DIFFERENT_WORKER
            trial = run.inputs.trial_next[started[p, STARTED_BY]]
            await_trial(run, state, trial, WORKER_DISCONNECTION, home, strategy)
        if started[p, ATTEMPT] >= max_retries:
            log[row, STRATEGY] = ESCALATION
            checkpoints[key, HAS_CHECKPOINT] = 0
            escalated(run, state, key, at, row)
        else:
            log[row, STRATEGY] = DIFFERENT_WORKER
            log[row, HAS_TARGET_CHECKPOINT] = checkpoints[key, HAS_CHECKPOINT]
            log[row, TARGET_CHECKPOINT] = checkpoints[key, CHECKPOINT_SEQ]
            target = pick_target(run, state, home, w)
            log[row, TARGET] = fleet.worker_circuit[target] if target >= 0 else -1
            if target >= 0:
                moving(state, key, target)
    state.workers[w, STARTED] = 0
