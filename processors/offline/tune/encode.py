"""A history as flat numpy arrays, once, for the compiled tuner (`fast.py`).

Everything that does not depend on the settings is decided here: ids become indices,
messages become failure types, repeated event ids are marked (the core's bounded
windows, replayed exactly), and the scoring function's input side (its own unbounded
dedupe, the per-circuit outcome times) is laid out as sorted per-circuit arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from faultstream.events.classify import classify_message
from faultstream.events.config import AttributionSettings
from faultstream.events.models import CircuitKind, FailureType, InputRecord
from faultstream.processors.core.fleet import SEEN_CONTROL_IDS, SEEN_IDS_PER_WORKER

from ..sources import TUNER_COLUMNS

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


@dataclass
class _Fields:
    """What the encoder reads of a history, whatever it is stored as. Per record: `kind`,
    `ts`, `ids` (event ids as integers: equal ids equal integers; `event_ids` given when
    unequal ids may share one, a hash). Per worker record (in order): worker and hardware
    class codes; per record carrying a task (not HEARTBEAT/CHECKPOINT): task type and task
    id codes; per FAILURE: the failure type code; per OPERATOR: (rank, circuit id, action
    code). Codes number the distinct values in order of first appearance."""

    kind: np.ndarray
    ts: np.ndarray
    ids: np.ndarray
    event_ids: list[str] | pa.ChunkedArray | None
    w_codes: np.ndarray
    worker_ids: list
    hw_codes: np.ndarray
    classes: list
    tt_codes: np.ndarray
    task_types: list
    task_codes: np.ndarray
    failure_codes: np.ndarray
    operators: list[tuple[int, str, int]]


def encode(inputs: Sequence[InputRecord]) -> EncodedHistory:
    """Columnar: one C-level pass per field over the records (no per-record Python code),
    strings factorized through dicts, repeated ids found by numba over the ids' hashes
    (every match re-checked on the strings, so a hash collision cannot merge two ids)."""
    return _encode(_model_fields(inputs))


def _kind_codes(kinds: Iterable) -> np.ndarray:
    kinds = list(kinds)
    try:
        return np.fromiter(map(_KIND_CODE.__getitem__, kinds), np.int8, len(kinds))
    except KeyError as exc:
        raise UnsupportedHistory(f"{exc.args[0]} records in the history") from None


def _model_fields(inputs: Sequence[InputRecord]) -> _Fields:
    n = len(inputs)
    fields = list(map(vars, inputs))  # a model's field values live in its __dict__
    kind = _kind_codes(map(_get_kind, fields))
    ts = np.fromiter(map(_received_at, fields), np.int64, n)
    event_ids = list(map(_get_event_id, fields))
    is_worker = (kind <= FAILURE).tolist()
    wrecs = list(compress(fields, is_worker))
    wkind = kind[kind <= FAILURE]
    w_codes, worker_ids = _factorize(list(map(_get_worker_id, wrecs)))
    hw_codes, classes = _factorize(list(map(_get_hardware_class, wrecs)))
    # A heartbeat's or checkpoint's task type changes no circuit, so it is not read.
    trecs = list(compress(wrecs, ((wkind != HEARTBEAT) & (wkind != CHECKPOINT)).tolist()))
    tt_codes, task_types = _factorize(list(map(_get_task_type, trecs)))
    task_codes, _ = _factorize(list(map(_get_task_id, trecs)))
    failures = list(compress(inputs, (kind == FAILURE).tolist()))
    classified: dict[str | None, int] = {}
    codes = []
    for record in failures:
        failure_type = record.failure_type  # type: ignore[union-attr]
        if failure_type is None:  # classified from the message, once per message
            message = record.message  # type: ignore[union-attr]
            if message not in classified:
                classified[message] = _FAILURE_CODE[classify_message(message)]
            codes.append(classified[message])
        else:
            codes.append(_FAILURE_CODE[failure_type])
    operators = [
        (_RANK[r.circuit_kind], r.circuit_id, FORCE_OPEN if r.action == "FORCE_OPEN" else RESET)  # type: ignore[union-attr]
        for r in compress(inputs, (kind == OPERATOR).tolist())
    ]
    return _Fields(
        kind,
        ts,
        np.fromiter(map(_id_hash, event_ids), np.int64, n),
        event_ids,
        w_codes,
        worker_ids,
        hw_codes,
        classes,
        tt_codes,
        task_types,
        task_codes,
        np.array(codes, np.int8),
        operators,
    )


def _encode(f: _Fields) -> EncodedHistory:
    """Every step after field extraction, shared by `encode` and `encode_columns`."""
    kind, ts, w_codes, hw_codes = f.kind, f.ts, f.w_codes, f.hw_codes
    n = len(kind)
    end_ts = int(ts.max()) if n else 0
    is_worker = kind <= FAILURE
    widx = np.flatnonzero(is_worker)
    wkind = kind[widx]
    has_task = (wkind != HEARTBEAT) & (wkind != CHECKPOINT)
    tidx = widx[has_task]
    n_work, n_cls = len(f.worker_ids), len(f.classes)
    # Circuits: workers, then classes, then task types, then any only an operator names.
    names = [*f.worker_ids, *f.classes]
    ranks = [0] * n_work + [1] * n_cls
    tt_circuit = np.full(len(f.task_types) + 1, -1, np.int64)  # code -> circuit (None: -1)
    for code, name in enumerate(f.task_types):
        if name is not None:
            tt_circuit[code] = len(names)
            names.append(name)
            ranks.append(2)
    circuits = {(r, name): index for index, (r, name) in enumerate(zip(ranks, names, strict=True))}

    worker = np.full(n, -1, np.int32)
    worker[widx] = w_codes
    hw = np.full(n, -1, np.int32)
    hw[widx] = hw_codes + n_work
    tt = np.full(n, -1, np.int32)
    tt[tidx] = tt_circuit[f.tt_codes]
    ftype = np.full(n, -1, np.int8)
    ftype[kind == FAILURE] = f.failure_codes
    for i, (rank, circuit_id, action) in zip(
        np.flatnonzero(kind == OPERATOR).tolist(), f.operators, strict=True
    ):
        key = (rank, circuit_id)
        if key not in circuits:
            circuits[key] = len(names)
            names.append(circuit_id)
            ranks.append(rank)
        hw[i] = circuits[key]
        ftype[i] = action

    # Task pairs (worker, task_id).
    pair_ids, pair_first = _key_ids(f.task_codes, w_codes[has_task])
    task = np.full(n, -1, np.int32)
    task[tidx] = pair_ids
    pair_worker_arr = w_codes[has_task][pair_first].astype(np.int64)

    # Repeated ids: the core's bounded windows (per worker, one for control records) and
    # the scoring function's unbounded set of (worker, event_id), over the same keys.
    group = np.where(is_worker, worker, n_work).astype(np.int64)
    key_ids, key_first = _key_ids(f.ids, group)
    if f.event_ids is not None:  # ids are hashes: re-check every repeat on the strings
        firsts = key_first[key_ids]
        repeats = np.flatnonzero(firsts != np.arange(n))
        if len(repeats) and not _same_ids(f.event_ids, repeats, firsts[repeats]):
            key_ids = _exact_key_ids(f.event_ids, group)  # two ids, one hash
    window = np.full(n_work + 1, SEEN_IDS_PER_WORKER, np.int64)
    window[n_work] = SEEN_CONTROL_IDS
    skip, scored = _dedupe(kind, group, key_ids, window)

    n_circuits = len(names)
    circuit_rank = np.array(ranks, np.int64)
    keys = [
        f"{('worker', 'hardware_class', 'task_type')[r]}:{name}"
        for r, name in zip(ranks, names, strict=True)
    ]
    # Due moments that tie are ordered by id string, across circuits and workers alike.
    order_of = {name: r for r, name in enumerate(sorted(set(names)))}
    circuit_order = np.array([order_of[name] for name in names], np.int64)
    circuit_worker = np.full(n_circuits, -1, np.int64)
    worker_circuit_arr = np.arange(n_work, dtype=np.int64)
    circuit_worker[:n_work] = worker_circuit_arr
    worker_tasks_offsets, worker_tasks = _csr(
        pair_worker_arr, np.arange(len(pair_worker_arr), dtype=np.int64), n_work
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
        len(pair_first),
        ok_offsets,
        ok_ts,
        deferred,
        end_ts,
        keys,
    )


_get_kind, _get_event_id = itemgetter("kind"), itemgetter("event_id")


def _received_at(fields: dict[str, Any]) -> int:
    """Decision time (models.received_at) of a record's field values."""
    at = fields.get("received_at")
    return fields["ts"] if at is None else at


_get_worker_id, _get_hardware_class = itemgetter("worker_id"), itemgetter("hardware_class")
_get_task_type, _get_task_id = itemgetter("task_type"), itemgetter("task_id")
_get_failure_type = itemgetter("failure_type")
_id_hash = hash  # str caches it; a test swaps in a colliding one


def _factorize(values: list) -> tuple[np.ndarray, list]:
    """Codes in order of first appearance, and the distinct values."""
    distinct = list(dict.fromkeys(values))
    index = {value: code for code, value in enumerate(distinct)}
    return np.fromiter(map(index.__getitem__, values), np.int64, len(values)), distinct


def _same_ids(event_ids: list[str] | pa.ChunkedArray, rows: np.ndarray, firsts: np.ndarray) -> bool:
    """Whether each of `rows` holds the same event id string as its `firsts` row."""
    if isinstance(event_ids, list):
        return all(
            event_ids[i] == event_ids[j]
            for i, j in zip(rows.tolist(), firsts.tolist(), strict=True)
        )
    same = pc.equal(event_ids.take(pa.array(rows)), event_ids.take(pa.array(firsts)))
    return bool(pc.all(same).as_py())


def _exact_key_ids(event_ids: list[str] | pa.ChunkedArray, group: np.ndarray) -> np.ndarray:
    """`_key_ids` keyed on the strings themselves (after a hash collision)."""
    if isinstance(event_ids, list):
        keys_of: dict[tuple[int, str], int] = {}
        pairs = zip(group.tolist(), event_ids, strict=True)
        return np.fromiter(
            (keys_of.setdefault(p, len(keys_of)) for p in pairs), np.int64, len(group)
        )
    codes, _ = _dictionary(event_ids, values=False)
    return _key_ids(codes, group)[0]


@njit(cache=True, nogil=True)
def _key_ids(values, groups):
    """Compact ids of the (value, group) pairs in order of first appearance (open
    addressing), and the first record of each id."""
    n = values.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    slots = np.full(size, -1, np.int32)  # a key's index; its first record holds the key
    first = np.empty(n, np.int64)
    ids = np.empty(n, np.int64)
    n_keys = 0
    for i in range(n):
        value = values[i]
        g = groups[i]
        mixed = (np.uint64(value) ^ (np.uint64(g) * np.uint64(0x9E3779B97F4A7C15))) * np.uint64(
            0xBF58476D1CE4E5B9
        )
        s = np.int64((mixed ^ (mixed >> np.uint64(31))) & mask)
        while True:
            k = slots[s]
            if k < 0:
                slots[s] = n_keys
                first[n_keys] = i
                ids[i] = n_keys
                n_keys += 1
                break
            j = first[k]
            if values[j] == value and groups[j] == g:
                ids[i] = k
                break
            s = (s + 1) & (size - 1)
    return ids, first[:n_keys].copy()


@njit(cache=True, nogil=True)
def _dedupe(kind, group, key_ids, window):
    """skip: the core ignores the record (its key is among the group's newest `window`
    remembered ids); scored: the first outcome of its key (the score's unbounded set)."""
    n = kind.shape[0]
    skip = np.zeros(n, np.int8)
    scored = np.zeros(n, np.int8)
    n_keys = key_ids.max() + 1 if n else 0
    added_at = np.zeros(n_keys, np.int64)  # the key's newest remembering, 1-based
    outcome_seen = np.zeros(n_keys, np.int8)
    remembered = np.zeros(window.shape[0], np.int64)
    for i in range(n):
        key = key_ids[i]
        g = group[i]
        if added_at[key] > 0 and added_at[key] > remembered[g] - window[g]:
            skip[i] = 1
        else:
            remembered[g] += 1
            added_at[key] = remembered[g]
        if (kind[i] == SUCCESS or kind[i] == FAILURE) and outcome_seen[key] == 0:
            outcome_seen[key] = 1
            scored[i] = 1
    return skip, scored


def _csr(groups: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """`values` grouped by `groups` (each group sorted): (offsets, values)."""
    groups = np.asarray(groups, np.int64)
    values = np.asarray(values, np.int64)
    order = np.lexsort((values, groups))
    counts = np.bincount(groups, minlength=n_groups) if len(groups) else np.zeros(n_groups, int)
    offsets = np.zeros(n_groups + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, values[order]


# --- from Arrow columns -----------------------------------------------------------------

# The columns `encode_columns` reads (a source's `input_columns` table holds at least these).
COLUMNS = TUNER_COLUMNS
# Optional: `hash(event_id)` as the source computed it (any hash: repeats are re-checked).
EVENT_HASH = "event_hash"


def encode_columns(table: pa.Table) -> EncodedHistory:
    """`encode` of the same history stored as Arrow columns (one row per input record, in
    order; the `COLUMNS`): the low-cardinality strings are factorized by Arrow's dictionary
    encoding in C++, each column filtered on its own. Event ids are keyed on the table's
    `EVENT_HASH` column when it has one (every repeat re-checked on the strings), else
    dictionary-encoded: at millions of distinct ids that encoding is the costliest step."""
    return _encode(_column_fields(table))


def _dictionary(column: pa.ChunkedArray | pa.Array, values: bool = True) -> tuple[np.ndarray, list]:
    """Codes in order of first appearance (None is a value too), and the distinct values
    (not turned into Python strings unless `values`)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary.to_pylist() if values else []


def _decision_times(table: pa.Table) -> np.ndarray:
    """Each row's decision time: `received_at`, or its `ts` where there is none."""
    ts = table["ts"]
    if "received_at" in table.column_names and table["received_at"].null_count < len(ts):
        ts = pc.coalesce(table["received_at"], ts)
    return ts.combine_chunks().to_numpy(zero_copy_only=False).astype(np.int64)


def _column_fields(table: pa.Table) -> _Fields:
    kind_codes, kinds = _dictionary(table["kind"])
    kind = _kind_codes(kinds)[kind_codes] if kinds else np.zeros(0, np.int8)
    ts = _decision_times(table)
    event_ids = table["event_id"]
    if EVENT_HASH in table.column_names and table[EVENT_HASH].null_count == 0:
        # The source hashed the ids (in parallel, as it read them): far cheaper than
        # dictionary-encoding millions of distinct strings; repeats are re-checked.
        hashes = table[EVENT_HASH].combine_chunks().to_numpy(zero_copy_only=False)
        ids, exact_ids = hashes.astype(np.uint64).view(np.int64), event_ids
    else:
        ids, exact_ids = _dictionary(event_ids, values=False)[0], None
    is_worker = kind <= FAILURE
    has_task = is_worker & (kind != HEARTBEAT) & (kind != CHECKPOINT)

    def rows(name: str, mask: np.ndarray) -> pa.ChunkedArray:  # one column, not the table
        return table[name].filter(pa.array(mask))

    w_codes, worker_ids = _dictionary(rows("worker_id", is_worker))
    hw_codes, classes = _dictionary(rows("hardware_class", is_worker))
    tt_codes, task_types = _dictionary(rows("task_type", has_task))
    task_codes, _ = _dictionary(rows("task_id", has_task), values=False)

    is_failure = kind == FAILURE
    type_codes, failure_types = _dictionary(rows("failure_type", is_failure))
    by_type = np.array([-1 if t is None else _FAILURE_CODE[t] for t in failure_types], np.int8)
    failure_codes = by_type[type_codes] if len(failure_types) else np.zeros(0, np.int8)
    unclassified = np.flatnonzero(failure_codes == -1)
    if len(unclassified):  # classified from the message, once per distinct message
        message_codes, messages = _dictionary(rows("message", is_failure).take(unclassified))
        by_message = np.array([_FAILURE_CODE[classify_message(m)] for m in messages], np.int8)
        failure_codes[unclassified] = by_message[message_codes]

    is_operator = kind == OPERATOR
    operators = [
        (_RANK[circuit_kind], circuit_id, FORCE_OPEN if action == "FORCE_OPEN" else RESET)
        for circuit_kind, circuit_id, action in zip(
            rows("circuit_kind", is_operator).to_pylist(),
            rows("circuit_id", is_operator).to_pylist(),
            rows("action", is_operator).to_pylist(),
            strict=True,
        )
    ]
    return _Fields(
        kind,
        ts,
        ids,
        exact_ids,
        w_codes,
        worker_ids,
        hw_codes,
        classes,
        tt_codes,
        task_types,
        task_codes,
        failure_codes,
        operators,
    )
