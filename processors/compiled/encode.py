"""A history and its settings as flat numpy arrays for the compiled core (`kernel.py`).

Built on the tuner's encoder (`tuning/encode.py`: ids to indices, failure types, repeated
event ids, circuit tie order, (worker, task) pairs), plus what the full core needs and the
tuner does not: attempts, checkpoints, task ids, the rungs a failure's attributes allow,
the class membership slots, and every CONFIG_CHANGED resolved up front into a table of
settings versions (`CoreSettings.merged` does not depend on the core's state, only on the
settings in force, which only CONFIG_CHANGED records change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

import numpy as np

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import (
    CircuitKind,
    InputRecord,
    RecoveryStrategy,
    Tick,
)
from faultstream.processors.core.circuit import CircuitParams
from faultstream.processors.core.recovery import _LOWER_PRECISION, LADDERS, _positive_int
from faultstream.processors.offline.tune.encode import (
    CHECKPOINT,
    FAILURE,
    FAILURE_TYPES,
    TASK_STARTED,
    EncodedHistory,
    UnsupportedHistory,
    attribution_ranks,
    encode,
)

CONFIG = 7  # beside the tuner's kind codes (HEARTBEAT..OPERATOR = 0..6)
STRATEGIES = tuple(RecoveryStrategy)
STRATEGY_CODE = {s: i for i, s in enumerate(STRATEGIES)}
RUNG_BATCH, RUNG_PRECISION = 1, 2  # bits of `rungs`: which attribute rungs can apply
BACKOFF_STEPS = 4096
_INT64_MAX = 2**63 - 1
_CONFIG_STANDIN = "CONFIG_CHANGED"


@dataclass(frozen=True)
class Versions:
    """Every settings version of a replay (0 = the initial one), as kernel arrays."""

    settings: list[CoreSettings]
    failure_threshold: np.ndarray  # int64 [v, rank]
    success_threshold: np.ndarray  # int64 [v, rank]
    recovery_timeout_s: np.ndarray  # float64 [v, rank]
    backoff_s: np.ndarray  # float64 [v, rank, step]: reset_timeout_s after trip step+1
    backoff_len: np.ndarray  # int64 [v, rank]
    backoff_done: np.ndarray  # int64 [v, rank]: 1 = the last step repeats forever
    ranks: np.ndarray  # int64 [v, failure type]: the circuit rank a failure counts on
    max_retries: np.ndarray  # int64 [v]
    heartbeat_s: np.ndarray  # float64 [v]
    heartbeat_ms: np.ndarray  # float64 [v]
    guard_fraction: np.ndarray  # float64 [v]
    guard_min: np.ndarray  # int64 [v]


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
    """An encoded history: the tuner's columns (`base`) and the full core's extras."""

    fields: RecordFields
    base: EncodedHistory
    kind: np.ndarray  # int8: the tuner's codes, CONFIG for CONFIG_CHANGED
    config_version: np.ndarray  # int64: the version a CONFIG_CHANGED switches to, or -1
    attempt: np.ndarray  # int64
    task_key: np.ndarray  # int64: the task_id string's code (checkpoints), -1 when none
    checkpoint_seq: np.ndarray  # int64
    rungs: np.ndarray  # int8 RUNG_* bits per FAILURE
    pair_task_key: np.ndarray  # int64 per (worker, task) pair
    worker_pairs_offsets: np.ndarray  # int64 CSR: a worker's pairs in task_id order
    worker_pairs: np.ndarray  # int64
    n_task_keys: int
    worker_order: np.ndarray  # int64: rank of the worker id among all circuit ids
    class_offsets: np.ndarray  # int64 [circuit + 1]: member slots of each class circuit
    cpu_circuit: int  # the hardware_class circuit "cpu", or -1
    ladders: np.ndarray  # int64 [failure type, rung]: strategy codes, -1 past the end
    names: list[tuple[CircuitKind, str]]  # circuit index -> (kind, id)
    versions: Versions

    def __len__(self) -> int:
        return len(self.kind)


@dataclass(frozen=True)
class Extras:
    """What the full core reads beyond the tuner's encoding, however it was stored: per
    record (zero where it does not apply), and the task ids' codes."""

    attempt: np.ndarray  # int64, records that carry a task
    task_key: np.ndarray  # int64: code of the task_id string, -1 when none
    key_rank: np.ndarray  # int64: a task key's rank in task_id string order
    checkpoint_seq: np.ndarray  # int64, CHECKPOINT records
    rungs: np.ndarray  # int8 RUNG_* bits, FAILURE records


def encode_history(records: Sequence[InputRecord], settings: CoreSettings | None = None) -> Encoded:
    """Everything the kernel reads, decided once; raises UnsupportedHistory for what the
    kernel cannot replay exactly (numbers beyond int64, unknown kinds)."""
    configs = [i for i, r in enumerate(records) if r.kind == _CONFIG_STANDIN]
    standins = list(records)
    for i in configs:  # a control record like a TICK for the tuner's encoder
        record = records[i]
        standins[i] = Tick.model_construct(
            event_id=record.event_id, ts=record.ts, received_at=record.received_at
        )
    base = encode(standins)
    n = len(records)
    kind = base.kind.copy()
    kind[configs] = CONFIG

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
    task_ids = list(map(attrgetter("task_id"), task_records))
    key_of: dict[str, int] = {}
    task_key[with_task] = [key_of.setdefault(t, len(key_of)) for t in task_ids]
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
    extras = Extras(attempt, task_key, key_rank, checkpoint_seq, rungs)
    configs_in_force = [(i, records[i].config) for i in configs]  # type: ignore[union-attr]
    return assemble(ModelFields(records), base, kind, extras, configs_in_force, settings)


def rung_bits(batch_size: str | None, precision: str | None) -> int:
    """Which attribute rungs of the ladder a failure's attributes allow (RUNG_* bits), as
    recovery.py `ladder_plan` reads them."""
    batch = _positive_int(batch_size)
    bits = RUNG_BATCH if batch is not None and batch > 1 else 0
    if (precision or "") in _LOWER_PRECISION:
        bits |= RUNG_PRECISION
    return bits


def assemble(
    fields: RecordFields,
    base: EncodedHistory,
    kind: np.ndarray,
    extras: Extras,
    configs: list[tuple[int, dict[str, Any]]],
    settings: CoreSettings | None,
) -> Encoded:
    """The rest of the encoding, from the tuner's (`base`, CONFIG_CHANGED read as TICK)
    and the `extras`; `configs` is each CONFIG_CHANGED's (record index, config)."""
    if (base.tt[kind == TASK_STARTED] < 0).any() or (base.tt[kind == FAILURE] < 0).any():
        raise UnsupportedHistory("an outcome without a task_type")
    versions, config_version = _versions(len(kind), configs, base.skip, settings or CoreSettings())
    task_key = extras.task_key
    # (worker, task) pairs: their task key, and each worker's in task_id string order.
    has_pair = np.flatnonzero(base.task >= 0)
    pair_task_key = np.zeros(base.n_tasks, np.int64)
    pair_task_key[base.task[has_pair]] = task_key[has_pair]
    pair_worker = np.zeros(base.n_tasks, np.int64)
    pair_worker[base.task[has_pair]] = base.worker[has_pair]
    n_work = len(base.worker_circuit)
    order = np.lexsort((extras.key_rank[pair_task_key], pair_worker))
    counts = np.bincount(pair_worker, minlength=n_work) if base.n_tasks else np.zeros(n_work)
    worker_pairs_offsets = np.zeros(n_work + 1, np.int64)
    np.cumsum(counts, out=worker_pairs_offsets[1:])

    names = [_name(key) for key in base.keys]
    n_circ = len(names)
    # Member slots: one per worker that ever reports the class.
    is_worker = np.flatnonzero(kind <= FAILURE)
    pairs = np.unique(base.worker[is_worker].astype(np.int64) * n_circ + base.hw[is_worker])
    class_offsets = np.zeros(n_circ + 1, np.int64)
    np.cumsum(np.bincount(pairs % n_circ, minlength=n_circ), out=class_offsets[1:])
    cpu = (CircuitKind.HARDWARE_CLASS, "cpu")
    return Encoded(
        fields,
        base,
        kind,
        config_version,
        extras.attempt,
        task_key,
        extras.checkpoint_seq,
        extras.rungs,
        pair_task_key,
        worker_pairs_offsets,
        order.astype(np.int64),
        len(extras.key_rank),
        base.circuit_order[base.worker_circuit].astype(np.int64),
        class_offsets,
        names.index(cpu) if cpu in names else -1,
        _ladders(),
        names,
        versions,
    )


def _name(key: str) -> tuple[CircuitKind, str]:
    kind, circuit_id = key.split(":", 1)
    return CircuitKind(kind), circuit_id


def _ladders() -> np.ndarray:
    table = np.full((len(FAILURE_TYPES), 3), -1, np.int64)
    for code, failure_type in enumerate(FAILURE_TYPES):
        for rung, strategy in enumerate(LADDERS[failure_type]):
            table[code, rung] = STRATEGY_CODE[strategy]
    return table


def _versions(
    n: int, configs: list[tuple[int, dict[str, Any]]], skip: np.ndarray, initial: CoreSettings
) -> tuple[Versions, np.ndarray]:
    """The settings after each CONFIG_CHANGED the core applies (a repeat is skipped, an
    invalid one is ignored as FleetCore ignores it)."""
    settings = [initial]
    config_version = np.full(n, -1, np.int64)
    for i, config in configs:
        if skip[i]:
            continue
        try:
            settings.append(settings[-1].merged(config))
        except ConfigError:
            continue
        config_version[i] = len(settings) - 1
    return _tables(settings), config_version


def _tables(settings: list[CoreSettings]) -> Versions:
    n = len(settings)
    kinds = tuple(CircuitKind)
    params = [[CircuitParams.of(s.circuits.for_kind(k)) for k in kinds] for s in settings]
    backoffs = [[_backoff(p) for p in row] for row in params]
    width = max(len(table) for row in backoffs for table, _ in row)
    backoff_s = np.zeros((n, 3, width))
    backoff_len = np.zeros((n, 3), np.int64)
    backoff_done = np.zeros((n, 3), np.int64)
    for v, row in enumerate(backoffs):
        for rank, (table, done) in enumerate(row):
            backoff_s[v, rank, : len(table)] = table
            backoff_len[v, rank] = len(table)
            backoff_done[v, rank] = done
    return Versions(
        settings,
        np.array([[p.failure_threshold for p in row] for row in params], np.int64),
        np.array([[p.success_threshold for p in row] for row in params], np.int64),
        np.array([[p.recovery_timeout_s for p in row] for row in params], np.float64),
        backoff_s,
        backoff_len,
        backoff_done,
        np.array([attribution_ranks(s.circuits.attribution) for s in settings], np.int64),
        np.array([s.recovery.max_retries for s in settings], np.int64),
        np.array([s.recovery.heartbeat_timeout_s for s in settings], np.float64),
        np.array([s.recovery.heartbeat_timeout_s * 1000.0 for s in settings], np.float64),
        np.array([s.circuits.worker.max_open_fraction for s in settings], np.float64),
        np.array([s.circuits.worker.guard_min_workers for s in settings], np.int64),
    )


def _backoff(params: CircuitParams) -> tuple[list[float], bool]:
    """`reset_timeout_s` for trips 1, 2, … by the core's own `backoff_s`; complete once it
    stays at the cap (every later trip waits the same)."""
    table: list[float] = []
    cap = params.max_reset_timeout_s
    for trips in range(1, BACKOFF_STEPS + 1):
        table.append(params.backoff_s(trips))
        if params.reset_timeout_factor == 1.0 or table[-1] == cap:
            return table, True
    return table, False


__all__ = [
    "CONFIG",
    "STRATEGIES",
    "Encoded",
    "Extras",
    "ModelFields",
    "RecordFields",
    "UnsupportedHistory",
    "Versions",
    "assemble",
    "encode_history",
    "rung_bits",
]
