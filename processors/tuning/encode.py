"""A history as flat numpy arrays, once, for the compiled tuner (`fast.py`).

Everything that does not depend on the settings is decided here: ids become indices,
messages become failure types, repeated event ids are marked (the core's bounded
windows, replayed exactly), and the scoring function's input side (its own unbounded
dedupe, the per-circuit outcome times) is laid out as sorted per-circuit arrays.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from faultstream.events.classify import classify_message
from faultstream.events.config import AttributionSettings
from faultstream.events.models import CircuitKind, FailureType, InputRecord

from ..core.fleet import SEEN_CONTROL_IDS, SEEN_IDS_PER_WORKER

# Record kind codes; worker events first so `kind <= FAILURE` means "a worker event".
HEARTBEAT, TASK_STARTED, CHECKPOINT, SUCCESS, FAILURE, TICK, OPERATOR = range(7)
_KIND_CODE = {
    "HEARTBEAT": HEARTBEAT,
    "TASK_STARTED": TASK_STARTED,
    "CHECKPOINT": CHECKPOINT,
    "SUCCESS": SUCCESS,
    "FAILURE": FAILURE,
    "TICK": TICK,
    "OPERATOR": OPERATOR,
}
FAILURE_TYPES = tuple(FailureType)
_FAILURE_CODE = {ft: i for i, ft in enumerate(FAILURE_TYPES)}
WORKER_DISCONNECTION = _FAILURE_CODE[FailureType.WORKER_DISCONNECTION]
_RANK = {CircuitKind.WORKER: 0, CircuitKind.HARDWARE_CLASS: 1, CircuitKind.TASK_TYPE: 2}
FORCE_OPEN, RESET = 1, 0


class UnsupportedHistory(Exception):
    """The compiled path cannot replay this history exactly; use the core."""


@dataclass(frozen=True)
class EncodedHistory:
    # Per input record, in order. For OPERATOR, `hw` holds the target circuit and
    # `ftype` the action (FORCE_OPEN or RESET).
    kind: np.ndarray  # int8
    ts: np.ndarray  # int64
    skip: np.ndarray  # int8: 1 = the core ignores it (a repeated event_id)
    scored: np.ndarray  # int8: 1 = an outcome the scoring function counts
    worker: np.ndarray  # int32, -1 for control records
    hw: np.ndarray  # int32 circuit index of the event's hardware class
    tt: np.ndarray  # int32 circuit index of the task type, -1 when none
    ftype: np.ndarray  # int8 failure type code, -1 when not a FAILURE
    task: np.ndarray  # int32 (worker, task_id) pair, -1 when none
    # Per circuit and per worker.
    circuit_rank: np.ndarray  # int64: 0 worker, 1 hardware_class, 2 task_type
    circuit_order: np.ndarray  # int64: rank of the id string (due-moment ties)
    circuit_worker: np.ndarray  # int64: the worker a worker circuit belongs to, or -1
    worker_circuit: np.ndarray  # int64
    worker_tasks_offsets: np.ndarray  # int64 CSR over task pairs, by worker
    worker_tasks: np.ndarray  # int64
    n_tasks: int
    # The scoring side: successes per circuit (sorted ts), outcomes scored but not
    # processed by the core (answered after the run), the newest input's ts.
    ok_offsets: np.ndarray
    ok_ts: np.ndarray
    deferred: np.ndarray  # int64 record indices
    end_ts: int
    keys: list[str]  # circuit index -> "kind:id", for diagnostics

    def __len__(self) -> int:
        return len(self.kind)

    def failures_by_circuit(self, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted ts of the scored failures per circuit, under one attribution."""
        mask = (self.kind == FAILURE) & (self.scored == 1)
        idx = np.nonzero(mask)[0]
        rank = ranks[self.ftype[idx]]
        w = self.worker[idx]
        circuit = np.where(
            rank == 0, self.worker_circuit[w], np.where(rank == 1, self.hw[idx], self.tt[idx])
        )
        return _csr(circuit, self.ts[idx], len(self.circuit_rank))


def attribution_ranks(attribution: AttributionSettings) -> np.ndarray:
    """Failure type code -> the rank of the circuit it counts on."""
    return np.array([_RANK[attribution.circuit_for(ft)] for ft in FAILURE_TYPES], np.int64)


def encode(inputs: Sequence[InputRecord]) -> EncodedHistory:
    n = len(inputs)
    kind = np.empty(n, np.int8)
    ts = np.empty(n, np.int64)
    skip = np.zeros(n, np.int8)
    scored = np.zeros(n, np.int8)
    worker = np.full(n, -1, np.int32)
    hw = np.full(n, -1, np.int32)
    tt = np.full(n, -1, np.int32)
    ftype = np.full(n, -1, np.int8)
    task = np.full(n, -1, np.int32)

    circuits: dict[tuple[int, str], int] = {}
    workers: dict[str, int] = {}
    worker_circuit: list[int] = []
    pairs: dict[tuple[int, str], int] = {}
    pair_worker: list[int] = []
    seen: list[tuple[set[str], deque[str]]] = []  # the core's window, per worker
    control_seen: set[str] = set()
    control_order: deque[str] = deque()
    score_seen: set[tuple[str, str]] = set()  # the scoring function's, unbounded
    classified: dict[str | None, int] = {}
    end_ts = 0

    def circuit(rank: int, circuit_id: str) -> int:
        index = circuits.get((rank, circuit_id))
        if index is None:
            index = circuits[(rank, circuit_id)] = len(circuits)
        return index

    for i, record in enumerate(inputs):
        code = _KIND_CODE.get(record.kind)
        if code is None:
            raise UnsupportedHistory(f"{record.kind} records in the history")
        t = record.ts
        kind[i] = code
        ts[i] = t
        if t > end_ts:
            end_ts = t
        event_id = record.event_id
        if code >= TICK:
            if event_id in control_seen:
                skip[i] = 1
            else:
                control_seen.add(event_id)
                control_order.append(event_id)
                if len(control_order) > SEEN_CONTROL_IDS:
                    control_seen.discard(control_order.popleft())
            if code == OPERATOR:
                hw[i] = circuit(_RANK[record.circuit_kind], record.circuit_id)  # type: ignore[union-attr]
                ftype[i] = FORCE_OPEN if record.action == "FORCE_OPEN" else RESET  # type: ignore[union-attr]
            continue
        worker_id = record.worker_id  # type: ignore[union-attr]
        w = workers.get(worker_id)
        if w is None:
            w = workers[worker_id] = len(workers)
            worker_circuit.append(circuit(0, worker_id))
            seen.append((set(), deque()))
        worker[i] = w
        ids, order = seen[w]
        if event_id in ids:
            skip[i] = 1
        else:
            ids.add(event_id)
            order.append(event_id)
            if len(order) > SEEN_IDS_PER_WORKER:
                ids.discard(order.popleft())
        hw[i] = circuit(1, record.hardware_class)  # type: ignore[union-attr]
        task_type = record.task_type  # type: ignore[union-attr]
        if task_type is not None:
            tt[i] = circuit(2, task_type)
        if code in (HEARTBEAT, CHECKPOINT):
            continue
        pair = pairs.get((w, record.task_id))  # type: ignore[union-attr]
        if pair is None:
            pair = pairs[(w, record.task_id)] = len(pairs)  # type: ignore[union-attr]
            pair_worker.append(w)
        task[i] = pair
        if code == TASK_STARTED:
            continue
        identity = (worker_id, event_id)
        if identity not in score_seen:
            score_seen.add(identity)
            scored[i] = 1
        if code == FAILURE:
            failure_type = record.failure_type  # type: ignore[union-attr]
            if failure_type is None:
                message = record.message  # type: ignore[union-attr]
                cached = classified.get(message)
                if cached is None:
                    cached = classified[message] = _FAILURE_CODE[classify_message(message)]
                ftype[i] = cached
            else:
                ftype[i] = _FAILURE_CODE[failure_type]

    n_circuits = len(circuits)
    circuit_rank = np.empty(n_circuits, np.int64)
    keys = [""] * n_circuits
    names = [""] * n_circuits
    for (rank, circuit_id), index in circuits.items():
        circuit_rank[index] = rank
        names[index] = circuit_id
        keys[index] = f"{('worker', 'hardware_class', 'task_type')[rank]}:{circuit_id}"
    # Due moments that tie are ordered by id string, across circuits and workers alike.
    order_of = {name: r for r, name in enumerate(sorted(set(names)))}
    circuit_order = np.array([order_of[name] for name in names], np.int64)
    circuit_worker = np.full(n_circuits, -1, np.int64)
    worker_circuit_arr = np.array(worker_circuit, np.int64)
    circuit_worker[worker_circuit_arr] = np.arange(len(worker_circuit_arr))
    pair_worker_arr = np.array(pair_worker, np.int64)
    worker_tasks_offsets, worker_tasks = _csr(
        pair_worker_arr, np.arange(len(pair_worker_arr), dtype=np.int64), len(workers)
    )

    ok = np.nonzero((kind == SUCCESS) & (scored == 1))[0]
    ok_circuits = np.concatenate(
        [worker_circuit_arr[worker[ok]] if len(ok) else ok, hw[ok], tt[ok]]
    ).astype(np.int64)
    ok_offsets, ok_ts = _csr(ok_circuits, np.tile(ts[ok], 3), n_circuits)
    deferred = np.nonzero((skip == 1) & (scored == 1))[0].astype(np.int64)
    return EncodedHistory(
        kind,
        ts,
        skip,
        scored,
        worker,
        hw,
        tt,
        ftype,
        task,
        circuit_rank,
        circuit_order,
        circuit_worker,
        worker_circuit_arr,
        worker_tasks_offsets,
        worker_tasks,
        len(pairs),
        ok_offsets,
        ok_ts,
        deferred,
        end_ts,
        keys,
    )


def _csr(groups: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """`values` grouped by `groups` (each group sorted): (offsets, values)."""
    groups = np.asarray(groups, np.int64)
    values = np.asarray(values, np.int64)
    order = np.lexsort((values, groups))
    counts = np.bincount(groups, minlength=n_groups) if len(groups) else np.zeros(n_groups, int)
    offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, values[order]
