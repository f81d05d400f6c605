"""A history as flat numpy arrays for the compiled twin, decided once per history.

Everything that does not depend on the settings is decided here: ids become indices
(circuits, workers, (worker, task) pairs), messages become failure types, repeated event
ids are marked (the core's bounded windows, replayed exactly, and the score's unbounded
set), and a failure's attributes become the ladder rungs they allow. The settings in force
at each input (`versions.py`) and the lost workers (`liveness.py`) are computed from it.

Two depths. With `commands` (the default) it holds what the recovery commands read too:
attempts, task ids, checkpoints, ladder attributes, class member slots, and every
CONFIG_CHANGED (`configs`). Without, only what the circuits read: the scoring of many
configurations, each of one settings version, so a CONFIG_CHANGED is refused. From Arrow
columns, the same encoding is `columns.encode_table`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from faultstream.events.classify import classify_message
from faultstream.events.config import CoreSettings
from faultstream.events.models import CircuitKind, InputRecord
from faultstream.processors.core.recovery import _LOWER_PRECISION, LADDERS, _positive_int
from faultstream.processors.core.repeats import (
    MAX_DIGITS,
    PRODUCERS_PER_WORKER,
    RANGES_PER_PRODUCER,
    SEEN_CONTROL_IDS,
    SEEN_IDS_PER_WORKER,
)

from .codes import (
    CHECKPOINT,
    CONFIG,
    FAILURE,
    FAILURE_CODE,
    FAILURE_TYPES,
    FORCE_OPEN,
    HEARTBEAT,
    KIND_CODE,
    KINDS,
    OPERATOR,
    RANK,
    RESET,
    RUNG_BATCH,
    RUNG_PRECISION,
    STRATEGY_CODE,
    SUCCESS,
    TASK_STARTED,
    UnsupportedHistory,
)
from .versions import Versions, settings_versions

_INT64_MAX = 2**63 - 1
_NONE = np.zeros(0, np.int64)


class Inputs(NamedTuple):
    """Per input record, in order."""

    kind: np.ndarray  # int8 codes.KIND_CODE
    ts: np.ndarray  # int64: the decision time (received_at, or ts without one)
    skip: np.ndarray  # int8: 1 = the core ignores it (a repeated event_id)
    scored: np.ndarray  # int8: 1 = an outcome the scoring function counts
    worker: np.ndarray  # int32, -1 for control records
    hardware_class: np.ndarray  # int32: the class's circuit; OPERATOR: the circuit it acts on
    task_type: np.ndarray  # int32: the task type's circuit, -1 when none
    failure_type: np.ndarray  # int8 failure type code; OPERATOR: its action; else -1
    pair: np.ndarray  # int32 (worker, task_id) pair, -1 when none
    skew: np.ndarray  # int64: a worker event's ts - its decision time (clock_skew), else 0
    # Only with commands (empty without):
    attempt: np.ndarray  # int64
    task_key: np.ndarray  # int64: the task_id's code (checkpoints), -1 when none
    checkpoint_seq: np.ndarray  # int64
    rungs: np.ndarray  # int8 RUNG_* bits per FAILURE
    # Only when a settings version learns (adaptive ladders) or times calls (slow calls),
    # empty otherwise: the key of (task_id, attempt), and of (task_id, attempt + 1) (the
    # attempt a command for it asks for)
    trial_now: np.ndarray  # int64, -1 for records without a task
    trial_next: np.ndarray  # int64


class Fleet(NamedTuple):
    """Per circuit, worker and (worker, task) pair."""

    circuit_rank: np.ndarray  # int64: codes.WORKER, HARDWARE_CLASS or TASK_TYPE
    circuit_order: np.ndarray  # int64: rank of its id string among every circuit's
    circuit_worker: np.ndarray  # int64: the worker a worker circuit belongs to, or -1
    worker_circuit: np.ndarray  # int64
    worker_order: np.ndarray  # int64: its circuit's circuit_order
    worker_pairs_offsets: np.ndarray  # int64 [worker + 1]: its pairs in worker_pairs
    worker_pairs: np.ndarray  # int64: by worker, then task_id (with commands) or first use
    pair_task_key: np.ndarray  # int64 per pair (with commands)
    class_offsets: np.ndarray  # int64 [circuit + 1]: member slots of each class circuit
    ladders: np.ndarray  # int64 [failure type, rung]: strategy codes, -1 past the end
    cpu_circuit: int  # the hardware_class circuit "cpu", or -1
    classes_by_id: np.ndarray  # int64: the hardware_class circuits in id order (outliers)


class RecordFields(Protocol):
    """A history's input fields by record index: what `materialize.py` reads of the few
    records that cause derived output (strings the kernel only knew as indices)."""

    def column(self, name: str, rows: np.ndarray) -> list:
        """Field `name` of each of `rows` (record indices; repeats allowed)."""
        ...

    def attributes(self, rows: np.ndarray) -> list[Mapping[str, str]]:
        """What the recovery ladder reads of each row's attributes."""
        ...


class ModelFields:
    """`RecordFields` of pydantic records."""

    def __init__(self, records: Sequence[InputRecord]) -> None:
        self.records = records

    def column(self, name: str, rows: np.ndarray) -> list:
        records = self.records
        return [getattr(records[i], name) for i in rows.tolist()]

    def attributes(self, rows: np.ndarray) -> list[Mapping[str, str]]:
        return self.column("attributes", rows)


@dataclass(frozen=True)
class Encoded:
    """An encoded history and the settings it is replayed under."""

    inputs: Inputs
    fleet: Fleet
    names: list[tuple[CircuitKind, str]]  # circuit index -> (kind, id)
    configs: list[tuple[int, dict[str, Any]]]  # each CONFIG_CHANGED: (record index, config)
    fields: RecordFields
    versions: Versions
    end_ts: int  # the newest decision time of the history
    commands: bool

    def __len__(self) -> int:
        return len(self.inputs.kind)


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
    own_ts: np.ndarray  # the records' own `ts` (ts is the decision time)
    ids: np.ndarray
    event_ids: list[str] | pa.ChunkedArray | None
    producers: np.ndarray  # sequenced ids (core/repeats.py): producer code, else -1
    numbers: np.ndarray  # and their numbers
    w_codes: np.ndarray
    worker_ids: list
    hw_codes: np.ndarray
    classes: list
    tt_codes: np.ndarray
    task_types: list
    task_codes: np.ndarray
    failure_codes: np.ndarray
    operators: list[tuple[int, str, int]]


@dataclass(frozen=True)
class CommandFields:
    """What the recovery commands read beyond the circuits, however it was stored: per
    record (zero where it does not apply), and the task ids' codes."""

    attempt: np.ndarray  # int64, records that carry a task
    task_key: np.ndarray  # int64: code of the task_id string, -1 when none
    key_rank: np.ndarray  # int64: a task key's rank in task_id string order
    checkpoint_seq: np.ndarray  # int64, CHECKPOINT records
    rungs: np.ndarray  # int8 RUNG_* bits, FAILURE records
    configs: list[tuple[int, dict[str, Any]]]  # each CONFIG_CHANGED: (record index, config)


def encode_history(
    records: Sequence[InputRecord],
    settings: CoreSettings | None = None,
    *,
    commands: bool = True,
) -> Encoded:
    """Everything the kernel reads of `records`, decided once; raises UnsupportedHistory
    for what the kernel cannot replay exactly (numbers beyond int64, unknown kinds)."""
    fields = _model_fields(records)
    extras = _model_commands(records, fields.kind) if commands else None
    return assemble(fields, extras, ModelFields(records), settings)


def rung_bits(batch_size: str | None, precision: str | None) -> int:
    """Which attribute rungs of the ladder a failure's attributes allow (RUNG_* bits), as
    recovery.py `ladder_plan` reads them."""
    batch = _positive_int(batch_size)
    bits = RUNG_BATCH if batch is not None and batch > 1 else 0
    if (precision or "") in _LOWER_PRECISION:
        bits |= RUNG_PRECISION
    return bits


# --- from records -------------------------------------------------------------------------


def _kind_codes(kinds: Iterable) -> np.ndarray:
    kinds = list(kinds)
    try:
        return np.fromiter(map(KIND_CODE.__getitem__, kinds), np.int8, len(kinds))
    except KeyError as exc:
        raise UnsupportedHistory(f"{exc.args[0]} records in the history") from None


_get_kind, _get_event_id = itemgetter("kind"), itemgetter("event_id")
_get_worker_id, _get_hardware_class = itemgetter("worker_id"), itemgetter("hardware_class")
_get_task_type, _get_task_id = itemgetter("task_type"), itemgetter("task_id")
_get_ts = itemgetter("ts")
_id_hash = hash  # str caches it; a test swaps in a colliding one


def _received_at(fields: dict[str, Any]) -> int:
    """Decision time (models.received_at) of a record's field values."""
    at = fields.get("received_at")
    return fields["ts"] if at is None else at


def _model_fields(inputs: Sequence[InputRecord]) -> _Fields:
    """Columnar: one C-level pass per field over the records (no per-record Python code),
    strings factorized through dicts, repeated ids found over the ids' hashes (every match
    re-checked on the strings, so a hash collision cannot merge two ids)."""
    n = len(inputs)
    fields = list(map(vars, inputs))  # a model's field values live in its __dict__
    kind = _kind_codes(map(_get_kind, fields))
    ts = np.fromiter(map(_received_at, fields), np.int64, n)
    own_ts = np.fromiter(map(_get_ts, fields), np.int64, n)
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
    classified: dict[str | None, int] = {}
    codes = []
    for record in compress(inputs, (kind == FAILURE).tolist()):
        failure_type = record.failure_type  # type: ignore[union-attr]
        if failure_type is None:  # classified from the message, once per message
            message = record.message  # type: ignore[union-attr]
            if message not in classified:
                classified[message] = FAILURE_CODE[classify_message(message)]
            codes.append(classified[message])
        else:
            codes.append(FAILURE_CODE[failure_type])
    operators = [
        (RANK[r.circuit_kind], r.circuit_id, FORCE_OPEN if r.action == "FORCE_OPEN" else RESET)  # type: ignore[union-attr]
        for r in compress(inputs, (kind == OPERATOR).tolist())
    ]
    return _Fields(
        kind,
        ts,
        own_ts,
        np.fromiter(map(_id_hash, event_ids), np.int64, n),
        event_ids,
        *_sequenced(event_ids),
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


def _model_commands(records: Sequence[InputRecord], kind: np.ndarray) -> CommandFields:
    n = len(records)
    attempt = np.zeros(n, np.int64)
    task_key = np.full(n, -1, np.int64)
    checkpoint_seq = np.zeros(n, np.int64)
    rungs = np.zeros(n, np.int8)
    with_task = np.flatnonzero((kind >= TASK_STARTED) & (kind <= FAILURE))
    task_records = [records[i] for i in with_task.tolist()]
    attempts = list(map(attrgetter("attempt"), task_records))
    if attempts and max(attempts) > _INT64_MAX:
        raise UnsupportedHistory("an attempt beyond int64")
    attempt[with_task] = attempts
    key_of: dict[str, int] = {}
    task_key[with_task] = [key_of.setdefault(r.task_id, len(key_of)) for r in task_records]  # type: ignore[union-attr]
    key_rank = np.zeros(len(key_of), np.int64)
    key_rank[[key_of[t] for t in sorted(key_of)]] = np.arange(len(key_of))
    checkpoints = np.flatnonzero(kind == CHECKPOINT)
    seqs = [records[i].checkpoint_seq for i in checkpoints.tolist()]  # type: ignore[union-attr]
    if seqs and max(seqs) > _INT64_MAX:
        raise UnsupportedHistory("a checkpoint_seq beyond int64")
    checkpoint_seq[checkpoints] = seqs
    for i in np.flatnonzero(kind == FAILURE).tolist():
        attributes = records[i].attributes  # type: ignore[union-attr]
        if attributes:
            rungs[i] = rung_bits(attributes.get("batch_size"), attributes.get("precision"))
    configs = [(i, records[i].config) for i in np.flatnonzero(kind == CONFIG).tolist()]  # type: ignore[union-attr]
    return CommandFields(attempt, task_key, key_rank, checkpoint_seq, rungs, configs)


# --- the encoding, from what was read -----------------------------------------------------


def assemble(
    f: _Fields,
    extras: CommandFields | None,
    record_fields: RecordFields,
    settings: CoreSettings | None,
) -> Encoded:
    """Every step after reading the fields, shared by records and Arrow columns."""
    kind, ts, w_codes, hw_codes = f.kind, f.ts, f.w_codes, f.hw_codes
    n = len(kind)
    if extras is None and (kind == CONFIG).any():
        raise UnsupportedHistory("CONFIG_CHANGED records in the history")
    is_worker = kind <= FAILURE
    widx = np.flatnonzero(is_worker)
    wkind = kind[widx]
    has_task = (wkind != HEARTBEAT) & (wkind != CHECKPOINT)
    tidx = widx[has_task]
    n_work, n_cls = len(f.worker_ids), len(f.classes)
    # Circuits: workers, then classes, then task types, then any only an operator names.
    ids = [*f.worker_ids, *f.classes]
    ranks = [0] * n_work + [1] * n_cls
    tt_circuit = np.full(len(f.task_types) + 1, -1, np.int64)  # code -> circuit (None: -1)
    for code, name in enumerate(f.task_types):
        if name is not None:
            tt_circuit[code] = len(ids)
            ids.append(name)
            ranks.append(2)
    circuits = {(r, name): index for index, (r, name) in enumerate(zip(ranks, ids, strict=True))}

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
            circuits[key] = len(ids)
            ids.append(circuit_id)
            ranks.append(rank)
        hw[i] = circuits[key]
        ftype[i] = action
    is_outcome = (kind == TASK_STARTED) | (kind == SUCCESS) | (kind == FAILURE)
    if (tt[is_outcome] < 0).any():
        raise UnsupportedHistory("an outcome without a task_type")
    skew = np.where(is_worker, f.own_ts - ts, 0)

    # Task pairs (worker, task_id).
    pair_ids, pair_first = _key_ids(f.task_codes, w_codes[has_task])
    pair = np.full(n, -1, np.int32)
    pair[tidx] = pair_ids
    pair_worker = w_codes[has_task][pair_first].astype(np.int64)
    n_pairs = len(pair_first)

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
    # Sequenced ids: one key per (worker, producer).
    producer = np.full(n, -1, np.int64)
    sequenced = np.flatnonzero((f.producers >= 0) & is_worker)
    producer[sequenced] = _key_ids(f.producers[sequenced], group[sequenced])[0]
    skip, scored, gappy = _dedupe(kind, group, key_ids, window, producer, f.numbers)
    if gappy:
        raise UnsupportedHistory(
            f"a producer of sequenced ids with more than {RANGES_PER_PRODUCER} gaps"
        )

    n_circ = len(ids)
    circuit_rank = np.array(ranks, np.int64)
    # Due moments that tie are ordered by id string, across circuits and workers alike.
    order_of = {name: r for r, name in enumerate(sorted(set(ids)))}
    circuit_order = np.array([order_of[name] for name in ids], np.int64)
    circuit_worker = np.full(n_circ, -1, np.int64)
    worker_circuit = np.arange(n_work, dtype=np.int64)
    circuit_worker[:n_work] = worker_circuit
    names = [(KINDS[r], name) for r, name in zip(ranks, ids, strict=True)]
    cpu = (CircuitKind.HARDWARE_CLASS, "cpu")
    class_offsets = np.zeros(n_circ + 1, np.int64)
    if extras is None:
        blank = _NONE
        inputs = Inputs(
            kind,
            ts,
            skip,
            scored,
            worker,
            hw,
            tt,
            ftype,
            pair,
            skew,
            blank,
            blank,
            blank,
            np.zeros(0, np.int8),
            blank,
            blank,
        )
        by_task = np.arange(n_pairs)
        pair_task_key, configs = _NONE, []
    else:
        inputs = Inputs(
            kind,
            ts,
            skip,
            scored,
            worker,
            hw,
            tt,
            ftype,
            pair,
            skew,
            extras.attempt,
            extras.task_key,
            extras.checkpoint_seq,
            extras.rungs,
            _NONE,
            _NONE,
        )
        has_pair = np.flatnonzero(pair >= 0)
        pair_task_key = np.zeros(n_pairs, np.int64)
        pair_task_key[pair[has_pair]] = extras.task_key[has_pair]
        by_task = extras.key_rank[pair_task_key]
        # Member slots: one per worker that ever reports the class.
        slots = np.unique(worker[widx].astype(np.int64) * n_circ + hw[widx])
        np.cumsum(np.bincount(slots % n_circ, minlength=n_circ), out=class_offsets[1:])
        configs = extras.configs
    counts = np.bincount(pair_worker, minlength=n_work) if n_pairs else np.zeros(n_work, int)
    worker_pairs_offsets = np.zeros(n_work + 1, np.int64)
    np.cumsum(counts, out=worker_pairs_offsets[1:])
    fleet = Fleet(
        circuit_rank,
        circuit_order,
        circuit_worker,
        worker_circuit,
        circuit_order[worker_circuit],
        worker_pairs_offsets,
        np.lexsort((by_task, pair_worker)).astype(np.int64),
        pair_task_key,
        class_offsets,
        _ladders(),
        names.index(cpu) if cpu in names else -1,
        np.flatnonzero(circuit_rank == 1)[
            np.argsort(circuit_order[circuit_rank == 1], kind="stable")
        ].astype(np.int64),
    )
    versions = settings_versions(settings or CoreSettings(), configs, skip)
    if extras is not None and any(_attempts_matter(s) for s in versions.settings):
        inputs = inputs._replace(**_trial_keys(kind, extras))
    end_ts = int(ts.max()) if n else 0
    return Encoded(
        inputs, fleet, names, configs, record_fields, versions, end_ts, extras is not None
    )


def _attempts_matter(settings: CoreSettings) -> bool:
    """Whether the kernel keys anything on (task_id, attempt): adaptive ladders' trials, or
    the slow-call rule's starts."""
    circuits = settings.circuits
    slow = any(circuits.for_kind(kind).slow_call_duration_s > 0 for kind in CircuitKind)
    return slow or settings.recovery.adaptive


def _trial_keys(kind: np.ndarray, extras: CommandFields) -> dict[str, np.ndarray]:
    """fleet.py `_awaiting`'s keys as compact ids: (task_id, attempt) of each record with a
    task, and (task_id, attempt + 1), the attempt a command for it asks for."""
    n = len(kind)
    with_task = np.flatnonzero((kind >= TASK_STARTED) & (kind <= FAILURE))
    attempt = extras.attempt[with_task]
    if len(attempt) and attempt.max() >= _INT64_MAX:
        raise UnsupportedHistory("an attempt at the end of int64 (adaptive ladders)")
    task = extras.task_key[with_task]
    ids, _ = _key_ids(np.concatenate([attempt, attempt + 1]), np.concatenate([task, task]))
    trial_now = np.full(n, -1, np.int64)
    trial_next = np.full(n, -1, np.int64)
    trial_now[with_task] = ids[: len(with_task)]
    trial_next[with_task] = ids[len(with_task) :]
    return {"trial_now": trial_now, "trial_next": trial_next}


def _ladders() -> np.ndarray:
    table = np.full((len(FAILURE_TYPES), 3), -1, np.int64)
    for code, failure_type in enumerate(FAILURE_TYPES):
        for rung, strategy in enumerate(LADDERS[failure_type]):
            table[code, rung] = STRATEGY_CODE[strategy]
    return table


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
    codes, _ = dictionary_codes(event_ids, values=False)
    return _key_ids(codes, group)[0]


def dictionary_codes(
    column: pa.ChunkedArray | pa.Array, values: bool = True
) -> tuple[np.ndarray, list]:
    """Codes in order of first appearance (None is a value too), and the distinct values
    (not turned into Python strings unless `values`)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary.to_pylist() if values else []


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
def _dedupe(kind, group, key_ids, window, producer, number):
    """skip: the core ignores the record (core/repeats.py): a sequenced id already among
    its producer's numbers while the worker still holds that producer (among the
    PRODUCERS_PER_WORKER it used last); any other id among the group's newest `window`.
    scored: the first outcome of its key (the score's unbounded set). gappy: a producer
    may have held more than RANGES_PER_PRODUCER ranges, which the core would start to
    forget (each arrival that is not its previous number + 1 adds at most one range)."""
    n = kind.shape[0]
    n_groups = window.shape[0]
    skip = np.zeros(n, np.int8)
    scored = np.zeros(n, np.int8)
    n_keys = key_ids.max() + 1 if n else 0
    added_at = np.zeros(n_keys, np.int64)  # plain: its newest remembering; sequenced: life
    outcome_seen = np.zeros(n_keys, np.int8)
    remembered = np.zeros(n_groups, np.int64)
    # Producers, held least recently used first: a producer is still held while fewer
    # than PRODUCERS_PER_WORKER others of its worker were used since its own last use. A
    # Fenwick tree per worker over its arrivals marks each producer's last use.
    n_producers = producer.max() + 1 if n else 0
    life = np.zeros(n_producers, np.int64)  # its current life (0: none yet)
    last_use = np.zeros(n_producers, np.int64)  # arrival number within its worker
    previous = np.zeros(n_producers, np.int64)  # its previous arrival's number
    breaks = np.zeros(n_producers, np.int64)  # arrivals that were not previous + 1
    arrivals = np.zeros(n_groups + 1, np.int64)
    for i in range(n):
        if producer[i] >= 0:
            arrivals[group[i] + 1] += 1
    base = np.cumsum(arrivals)  # the worker's slice of the tree
    tree = np.zeros(base[-1] + 1, np.int64)
    used = np.zeros(n_groups, np.int64)  # its arrivals so far
    marked = np.zeros(n_groups, np.int64)  # its producers used at least once
    lives = 0
    gappy = False
    for i in range(n):
        key = key_ids[i]
        g = group[i]
        p = producer[i]
        if p >= 0:
            b = base[g]
            size = base[g + 1] - b
            held = False
            t = last_use[p]
            if t > 0:
                since = marked[g] - _prefix(tree, b, t)  # producers used after it
                held = since < PRODUCERS_PER_WORKER
                _add(tree, b, size, t, -1)
                marked[g] -= 1
            if not held:  # new, or forgotten: a fresh life
                lives += 1
                life[p] = lives
                previous[p] = 0
                breaks[p] = 0
            used[g] += 1
            last_use[p] = used[g]
            _add(tree, b, size, used[g], 1)
            marked[g] += 1
            if number[i] != previous[p] + 1:
                breaks[p] += 1
                if breaks[p] >= RANGES_PER_PRODUCER:
                    gappy = True
            previous[p] = number[i]
            if added_at[key] == life[p]:
                skip[i] = 1
            else:
                added_at[key] = life[p]
        elif added_at[key] > 0 and added_at[key] > remembered[g] - window[g]:
            skip[i] = 1
        else:
            remembered[g] += 1
            added_at[key] = remembered[g]
        if (kind[i] == SUCCESS or kind[i] == FAILURE) and outcome_seen[key] == 0:
            outcome_seen[key] = 1
            scored[i] = 1
    return skip, scored, gappy


@njit(cache=True, nogil=True)
def _add(tree, base, size, i, delta):
    """Fenwick tree over positions 1..size at tree[base + 1 : base + size + 1]."""
    while i <= size:
        tree[base + i] += delta
        i += i & -i


@njit(cache=True, nogil=True)
def _prefix(tree, base, i):
    total = 0
    while i > 0:
        total += tree[base + i]
        i -= i & -i
    return total


def _sequenced(event_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`sequenced_column` of a list of ids."""
    return sequenced_column(pa.array(event_ids, pa.string()))


# core/repeats.py `sequence_number`: a number after the last dot, all before it the producer.
_NUMBER = rf"^[1-9][0-9]{{0,{MAX_DIGITS - 1}}}$"


def sequenced_column(event_ids: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per id: its producer's code (-1 for an id that is not sequenced) and number."""
    if isinstance(event_ids, pa.ChunkedArray):
        event_ids = event_ids.combine_chunks()
    n = len(event_ids)
    producers = np.full(n, -1, np.int64)
    numbers = np.zeros(n, np.int64)
    dotted = np.flatnonzero(pc.match_substring(event_ids, ".").to_numpy(zero_copy_only=False))
    if not len(dotted):
        return producers, numbers
    parts = pc.split_pattern(event_ids.take(pa.array(dotted)), ".", max_splits=1, reverse=True)
    producer, number = pc.list_element(parts, 0), pc.list_element(parts, 1)
    valid = pc.and_(
        pc.greater(pc.utf8_length(producer), 0), pc.match_substring_regex(number, _NUMBER)
    )
    ok = valid.to_numpy(zero_copy_only=False)
    rows = dotted[ok]
    if len(rows):
        producers[rows] = dictionary_codes(producer.filter(valid), values=False)[0]
        numbers[rows] = pc.cast(number.filter(valid), pa.int64()).to_numpy(zero_copy_only=False)
    return producers, numbers
