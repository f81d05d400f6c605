"""A live, in-process table of every circuit: what coordinators and guards ask.

`CircuitView` holds each circuit's newest `circuit_state_changed` record. It is fed by
`apply(record)`: from the compacted `<prefix>.circuits` topic (`CircuitView.from_kafka`,
which loads the topic to its end, then follows it on a daemon thread), from the embedded
pipeline (`EmbeddedPipeline.circuit_view()`), or from a recorded history. Nothing here
decides anything: a circuit is in the state its newest record says, and an OPEN circuit
past its due moment is reported as due, never half-opened (only the processor does that,
on its next input).

Reads (`state`, `is_open`, `admits`, `acquire`) are plain dict lookups, safe from any
thread while one writer applies records. A circuit that never changed state has no record
and is CLOSED. Health is the figure of the newest transition: a CLOSED circuit's
consecutive failures between transitions are not on the topic.

Half-open probes: `acquire` lets at most `half_open_max_calls` (per kind, from the
settings) calls run at once through a HALF_OPEN circuit, in this process. The limit is
per view: processes that each hold a view each get the allowance.

Worker-side module: it needs confluent-kafka, pydantic and fastavro only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from .admin import end_offsets
from .codec import DEFAULT_SCHEMA_IDS, HEADER, MAGIC, Codec
from .config import CircuitsSettings, KafkaSettings, Settings
from .exceptions import FaultstreamError
from .kafka_clients import librdkafka_config
from .kafka_connection import cluster_metadata
from .models import CircuitKind, CircuitState, CircuitStateChanged

log = logging.getLogger(__name__)

__all__ = [
    "Circuit",
    "CircuitOpenError",
    "CircuitView",
    "CircuitViewError",
    "Permit",
    "Staleness",
]

KINDS = (CircuitKind.WORKER, CircuitKind.HARDWARE_CLASS, CircuitKind.TASK_TYPE)
STATES = (
    CircuitState.CLOSED,
    CircuitState.OPEN,
    CircuitState.HALF_OPEN,
    CircuitState.FORCED_OPEN,
)
CLOSED, OPEN, HALF_OPEN, FORCED_OPEN = STATES
_KIND_NAMES = frozenset(kind.value for kind in KINDS)

DEFAULT_LOAD_TIMEOUT_S = 60.0
_POLL_S = 0.2
_BATCH = 10_000
_PROBE_EVERY_S = 2.0  # while the broker looks down, how often to ask it again
_SETTLE_S = 3.0  # how long a topic created a moment ago may stay out of the metadata
# Past librdkafka's prefetch thresholds it pauses fetching for fetch.queue.backoff.ms:
# loading 300k records took about 2.5x as long with the defaults (bench/bench_circuit_view.py).
# Prefetch is bounded at 256 MiB.
FETCH_CONFIG = {
    "queued.min.messages": 1_000_000,
    "queued.max.messages.kbytes": 256 * 1024,
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
}


class CircuitViewError(FaultstreamError):
    """The circuits topic cannot be read (missing, unreachable, not loaded in time)."""


class Circuit(NamedTuple):
    """One circuit as its newest `circuit_state_changed` record left it (immutable)."""

    kind: CircuitKind
    id: str
    state: CircuitState
    since: int  # the record's ts, ms: when it entered `state`
    health: float
    reason: str
    trips: int
    consecutive_failures: int
    reset_timeout_s: float
    from_state: CircuitState
    event_id: str
    caused_by: str

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.id}"

    @property
    def due_at(self) -> int | None:
        """When an OPEN circuit is due to half-open (ms); None in any other state. The
        processor half-opens it on its first input at or after this moment."""
        if self.state is not OPEN:
            return None
        # As the core computes it (processors/core/circuit.py): rounded to the ns, then up.
        return math.ceil(round(self.since + self.reset_timeout_s * 1000.0, 6))

    def is_due(self, now_ms: int) -> bool:
        due = self.due_at
        return due is not None and now_ms >= due

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (enums as their text), `due_at` included."""
        out: dict[str, Any] = self._asdict()
        out["kind"] = self.kind.value
        out["state"] = self.state.value
        out["from_state"] = self.from_state.value
        out["due_at"] = self.due_at
        return out

    @classmethod
    def of_record(cls, record: CircuitStateChanged) -> Circuit:
        return cls(
            CircuitKind(record.circuit_kind),
            record.circuit_id,
            CircuitState(record.to_state),
            record.ts,
            record.health,
            record.reason,
            record.trips,
            record.consecutive_failures,
            record.reset_timeout_s,
            CircuitState(record.from_state),
            record.event_id,
            record.caused_by,
        )


class CircuitOpenError(FaultstreamError):
    """A call refused because a circuit refuses it: OPEN, FORCED_OPEN, or HALF_OPEN with
    every probe taken. `due_at` (ms) is when an OPEN circuit is due to half-open."""

    def __init__(
        self,
        kind: CircuitKind,
        circuit_id: str,
        state: CircuitState,
        *,
        due_at: int | None = None,
        probes: int | None = None,
    ) -> None:
        self.kind = kind
        self.circuit_id = circuit_id
        self.state = state
        self.due_at = due_at
        self.probes = probes
        if state is HALF_OPEN:
            detail = f"all {probes} half-open probes are running"
        elif due_at is not None:
            detail = f"due to half-open at {_iso(due_at)}"
        else:
            detail = "until an operator resets it" if state is FORCED_OPEN else "refusing"
        super().__init__(f"{kind.value} circuit {circuit_id} is {state.value}: {detail}")

    def retry_after_s(self, now_ms: int | None = None) -> float | None:
        """Seconds until the circuit is due to half-open by this clock (0 once due; None
        when it has no due moment)."""
        if self.due_at is None:
            return None
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return max(0.0, (self.due_at - now) / 1000.0)


@dataclass(frozen=True)
class Staleness:
    """How current a view is.

    `caught_up`: every partition read to the end the broker last reported. `behind`:
    records the broker has reported and the view has not applied. `since_poll_s`: seconds
    since the follower last asked the broker (None without Kafka). `newest_age_s`: now
    minus the `ts` of the newest record applied (None before any record; it grows in a
    quiet fleet too, so read it with `behind`). `broker_error`: the last connection error,
    until the broker answers again."""

    caught_up: bool
    behind: int
    since_poll_s: float | None
    newest_age_s: float | None
    broker_error: str | None = None


ChangeListener = Callable[["Circuit | None", Circuit], None]


class Permit:
    """The half-open probes one admitted call holds; `release()` (or leaving the `with`)
    gives them back. A call through only CLOSED circuits holds none."""

    __slots__ = ("_probes", "_view")

    def __init__(self, view: CircuitView | None, probes: tuple[tuple[str, str, str], ...]) -> None:
        self._view = view
        self._probes = probes

    @property
    def probes(self) -> tuple[tuple[str, str], ...]:
        """(kind, id) of the half-open circuits this call probes."""
        return tuple((kind, cid) for kind, cid, _ in self._probes)

    def release(self) -> None:
        view, self._view = self._view, None
        if view is not None and self._probes:
            view._release(self._probes)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_NO_PROBES = Permit(None, ())


class CircuitView(AbstractContextManager["CircuitView"]):
    """Every circuit's newest state, kept current by `apply`. See the module docstring."""

    def __init__(self, circuits: CircuitsSettings | None = None) -> None:
        self.settings = circuits or CircuitsSettings()
        # kind -> {id: Circuit}: every circuit with a record; and, for the fast path of
        # admits/acquire, only those not CLOSED (usually few: a lookup that misses all
        # three is the whole check).
        self._all: dict[str, dict[str, Circuit]] = {kind.value: {} for kind in KINDS}
        self._not_closed: dict[str, dict[str, Circuit]] = {kind.value: {} for kind in KINDS}
        self._max_calls = {
            kind.value: self.settings.for_kind(kind).half_open_max_calls for kind in KINDS
        }
        # (kind, id) -> (event_id of the HALF_OPEN record, probes running)
        self._probes: dict[tuple[str, str], tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._listeners: list[ChangeListener] = []
        self.newest_ts: int | None = None
        self.applied = 0
        self.skipped = 0
        self._follower: _KafkaFollower | None = None

    # --- feeding -----------------------------------------------------------------------

    def apply(self, record: CircuitStateChanged) -> bool:
        """Take one record (the newest for its circuit); False if it repeats the current
        one (an at-least-once redelivery)."""
        return self._put(Circuit.of_record(record))

    def apply_many(self, records: Iterable[Any]) -> int:
        """Take every `CircuitStateChanged` among `records` (others, e.g. recovery
        commands, are ignored); returns how many changed the table. Subscribe it to an
        `EmbeddedPipeline` to follow that pipeline."""
        changed = 0
        for record in records:
            if isinstance(record, CircuitStateChanged) and self._put(Circuit.of_record(record)):
                changed += 1
        return changed

    def _put(self, circuit: Circuit) -> bool:
        kind, cid = circuit.kind.value, circuit.id
        table = self._all[kind]
        before = table.get(cid)
        if before is not None and before.event_id == circuit.event_id:
            return False
        table[cid] = circuit
        if circuit.state is CLOSED:
            self._not_closed[kind].pop(cid, None)
        else:
            self._not_closed[kind][cid] = circuit
        self.applied += 1
        if self.newest_ts is None or circuit.since > self.newest_ts:
            self.newest_ts = circuit.since
        if self._listeners:
            for listener in list(self._listeners):
                try:
                    listener(before, circuit)
                except Exception:  # a listener's bug must not stop the view
                    log.exception("circuit view: a change listener failed")
        return True

    def _remove(self, kind: str, cid: str) -> None:
        """A tombstone: the circuit is forgotten (CLOSED, no record)."""
        self._all[kind].pop(cid, None)
        self._not_closed[kind].pop(cid, None)

    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Call `listener(before, after)` for each change applied from now on (`before`
        is None for a circuit seen the first time), on the thread that applies it:
        the follower's for a Kafka view (`from_kafka` returns loaded, so loading calls
        nobody). Returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # --- asking ------------------------------------------------------------------------

    def get(self, kind: str, circuit_id: str) -> Circuit | None:
        """The circuit's newest record, or None if it never changed state (CLOSED)."""
        return self._table(kind).get(circuit_id)

    def state(self, kind: str, circuit_id: str) -> CircuitState:
        circuit = self._table(kind).get(circuit_id)
        return CLOSED if circuit is None else circuit.state

    def is_open(self, kind: str, circuit_id: str) -> bool:
        """True while the circuit diverts work: OPEN or FORCED_OPEN."""
        circuit = self._not_closed[_kind(kind)].get(circuit_id)
        # Only OPEN, HALF_OPEN and FORCED_OPEN are in `_not_closed`; identity checks, as
        # hashing an enum member (`in` a set) runs Python code.
        return circuit is not None and circuit.state is not HALF_OPEN

    def health(self, kind: str, circuit_id: str) -> float:
        """The health of the newest transition (100 for a circuit that never changed)."""
        circuit = self._table(kind).get(circuit_id)
        return 100.0 if circuit is None else circuit.health

    def due_at(self, kind: str, circuit_id: str) -> int | None:
        circuit = self._table(kind).get(circuit_id)
        return None if circuit is None else circuit.due_at

    def admits(self, worker_id: str, hardware_class: str, task_type: str) -> bool:
        """Whether a call for this worker, hardware class and task type may run now:
        none of the three circuits is OPEN or FORCED_OPEN, and each HALF_OPEN one has a
        probe free. Takes nothing; `acquire` takes the probes."""
        not_closed = self._not_closed
        if (
            worker_id not in not_closed["worker"]
            and hardware_class not in not_closed["hardware_class"]
            and task_type not in not_closed["task_type"]
        ):
            return True
        return self._refusal(worker_id, hardware_class, task_type) is None

    def refusal(
        self, worker_id: str, hardware_class: str, task_type: str
    ) -> CircuitOpenError | None:
        """Why a call would be refused now (worker circuit first, then hardware class,
        then task type), or None when it would be admitted."""
        return self._refusal(worker_id, hardware_class, task_type)

    def acquire(self, worker_id: str, hardware_class: str, task_type: str) -> Permit:
        """Admit one call or raise CircuitOpenError. The returned `Permit` holds a probe
        on each HALF_OPEN circuit among the three; release it when the call is over."""
        not_closed = self._not_closed
        if (
            worker_id not in not_closed["worker"]
            and hardware_class not in not_closed["hardware_class"]
            and task_type not in not_closed["task_type"]
        ):
            return _NO_PROBES
        with self._lock:
            refused = self._refusal(worker_id, hardware_class, task_type)
            if refused is not None:
                raise refused
            taken: list[tuple[str, str, str]] = []
            for kind, cid in (  # not zip(): strict=True costs more than all the rest
                ("worker", worker_id),
                ("hardware_class", hardware_class),
                ("task_type", task_type),
            ):
                circuit = not_closed[kind].get(cid)
                if circuit is not None and circuit.state is HALF_OPEN:
                    running = self._running(kind, circuit)
                    self._probes[(kind, cid)] = (circuit.event_id, running + 1)
                    taken.append((kind, cid, circuit.event_id))
        return Permit(self, tuple(taken)) if taken else _NO_PROBES

    def probes_running(self, kind: str, circuit_id: str) -> int:
        """Probes this view admitted into the circuit's current HALF_OPEN spell and not
        released yet."""
        circuit = self._not_closed[_kind(kind)].get(circuit_id)
        if circuit is None or circuit.state is not HALF_OPEN:
            return 0
        return self._running(circuit.kind.value, circuit)

    def _running(self, kind: str, circuit: Circuit) -> int:
        spell = self._probes.get((kind, circuit.id))
        # Probes of an earlier HALF_OPEN spell do not count against this one.
        return spell[1] if spell is not None and spell[0] == circuit.event_id else 0

    def _release(self, probes: tuple[tuple[str, str, str], ...]) -> None:
        with self._lock:
            for kind, cid, event_id in probes:
                spell = self._probes.get((kind, cid))
                if spell is None or spell[0] != event_id:
                    continue  # the circuit moved on: its count started again
                if spell[1] <= 1:
                    del self._probes[(kind, cid)]
                else:
                    self._probes[(kind, cid)] = (event_id, spell[1] - 1)

    def _refusal(
        self, worker_id: str, hardware_class: str, task_type: str
    ) -> CircuitOpenError | None:
        not_closed = self._not_closed
        for kind, cid in (
            ("worker", worker_id),
            ("hardware_class", hardware_class),
            ("task_type", task_type),
        ):
            circuit = not_closed[kind].get(cid)
            if circuit is None:
                continue
            if circuit.state is not HALF_OPEN:  # OPEN or FORCED_OPEN
                return CircuitOpenError(circuit.kind, cid, circuit.state, due_at=circuit.due_at)
            limit = self._max_calls[kind]
            if self._running(kind, circuit) >= limit:
                return CircuitOpenError(circuit.kind, cid, HALF_OPEN, probes=limit)
        return None

    # --- iterating ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[Circuit]:
        """Every circuit with a record, by kind (worker, hardware_class, task_type), then id."""
        for kind in _KIND_VALUES:
            table = self._all[kind]
            for cid in sorted(list(table)):
                circuit = table.get(cid)
                if circuit is not None:
                    yield circuit

    def __len__(self) -> int:
        return sum(len(table) for table in self._all.values())

    def select(self, kind: str | None = None, state: str | None = None) -> list[Circuit]:
        """The circuits of one kind and/or in one state, in iteration order."""
        kinds = _KIND_VALUES if kind is None else (_kind(kind),)
        wanted = None if state is None else CircuitState(state)
        out = []
        for k in kinds:
            table = self._all[k] if wanted is None or wanted is CLOSED else self._not_closed[k]
            for cid in sorted(list(table)):
                circuit = table.get(cid)
                if circuit is not None and (wanted is None or circuit.state is wanted):
                    out.append(circuit)
        return out

    def staleness(self) -> Staleness:
        newest = self.newest_ts
        age = None if newest is None else max(0.0, time.time() - newest / 1000.0)
        follower = self._follower
        if follower is None:
            return Staleness(caught_up=True, behind=0, since_poll_s=None, newest_age_s=age)
        behind = follower.behind
        return Staleness(
            caught_up=behind == 0 and follower.loaded,
            behind=behind,
            since_poll_s=time.monotonic() - follower.polled_at,
            newest_age_s=age,
            broker_error=follower.broker_error,
        )

    def _table(self, kind: str) -> dict[str, Circuit]:
        return self._all[_kind(kind)]

    # --- Kafka -------------------------------------------------------------------------

    @classmethod
    def from_kafka(
        cls,
        settings: Settings,
        *,
        follow: bool = True,
        timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ) -> CircuitView:
        """A view loaded from `<prefix>.circuits` to the end it had when asked; with
        `follow` (the default) it then keeps applying new records on a daemon thread
        until `close()`. CircuitViewError when the topic cannot be read."""
        view = cls(settings.circuits)
        follower = _KafkaFollower(view, settings.kafka)
        try:
            follower.load(timeout_s)
        except BaseException:
            follower.close()
            raise
        if follow:
            view._follower = follower
            follower.start()
        else:
            follower.close()
        return view

    def close(self) -> None:
        """Stop following (a no-op for a view without Kafka)."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_KIND_VALUES = tuple(kind.value for kind in KINDS)


def _kind(kind: str) -> str:
    if kind not in _KIND_NAMES:
        raise ValueError(f"circuit kind: {kind!r} is not one of {', '.join(_KIND_VALUES)}")
    return kind.value if isinstance(kind, CircuitKind) else kind


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


# --- the Kafka follower -------------------------------------------------------------------

_CIRCUIT_HEADER = HEADER.pack(MAGIC, DEFAULT_SCHEMA_IDS["circuit_state_changed"])
_DOUBLES = struct.Struct("<dd").unpack_from


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro long (zig-zag varint) at `pos`; returns (value, next position)."""
    byte = data[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    n, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos + 1
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def decode_circuit(data: bytes) -> Circuit:
    """A `circuit_state_changed` body written with the fixed schema id, read by hand: a
    third of the generic codec's cost, and loading 100k circuits is mostly this. Raises
    ValueError/IndexError/struct.error on anything else (the caller then falls back to the
    codec). Lengths, enums and counters are almost always one varint byte: that case is
    written out inline (a call per field was a third of the time)."""
    if data[:5] != _CIRCUIT_HEADER:
        raise ValueError("not a circuit_state_changed with the fixed schema id")
    b = data[5]
    n1, pos = ((b >> 1) ^ -(b & 1), 6) if b < 0x80 else _varint(data, 5)
    event_id = data[pos : pos + n1].decode()
    pos += n1
    ts, pos = _varint(data, pos)
    b = data[pos]
    kind, pos = ((b >> 1) ^ -(b & 1), pos + 1) if b < 0x80 else _varint(data, pos)
    b = data[pos]
    n2, pos = ((b >> 1) ^ -(b & 1), pos + 1) if b < 0x80 else _varint(data, pos)
    circuit_id = data[pos : pos + n2].decode()
    pos += n2
    b = data[pos]
    from_state, pos = ((b >> 1) ^ -(b & 1), pos + 1) if b < 0x80 else _varint(data, pos)
    b = data[pos]
    to_state, pos = ((b >> 1) ^ -(b & 1), pos + 1) if b < 0x80 else _varint(data, pos)
    b = data[pos]
    n3, pos = ((b >> 1) ^ -(b & 1), pos + 1) if b < 0x80 else _varint(data, pos)
    reason = data[pos : pos + n3].decode()
    pos += n3
    b = data[pos]
    consecutive_failures, pos = ((b >> 1) ^ -(b & 1), pos + 1) if b < 0x80 else _varint(data, pos)
    b = data[pos]
    trips, pos = ((b >> 1) ^ -(b & 1), pos + 1) if b < 0x80 else _varint(data, pos)
    reset_timeout_s, health = _DOUBLES(data, pos)
    pos += 16
    b = data[pos]
    n4, pos = ((b >> 1) ^ -(b & 1), pos + 1) if b < 0x80 else _varint(data, pos)
    caused_by = data[pos : pos + n4].decode()
    # Checked once at the end (a negative length or index only ever comes with garbage).
    if pos + n4 != len(data) or min(n1, n2, n3, n4, kind, from_state, to_state) < 0:
        raise ValueError("malformed circuit_state_changed")
    return _new_circuit(
        Circuit,
        (
            KINDS[kind],
            circuit_id,
            STATES[to_state],
            ts,
            health,
            reason,
            trips,
            consecutive_failures,
            reset_timeout_s,
            STATES[from_state],
            event_id,
            caused_by,
        ),
    )


# NamedTuple's own __new__ is a Python lambda around this: skipped on the loading path.
_new_circuit = tuple.__new__


class _KafkaFollower:
    """Reads every partition of the circuits topic from its beginning, without a group
    (nothing is committed: each view loads the whole compacted topic)."""

    def __init__(self, view: CircuitView, kafka: KafkaSettings) -> None:
        self.view = view
        self.kafka = kafka
        self.topic = kafka.topic("circuits")
        self.codec: Codec | None = None
        self.registry = bool(kafka.schema_registry_url)
        self.loaded = False
        self.behind = 0
        self.polled_at = time.monotonic()
        self.broker_error: str | None = None
        self._error_at = 0.0
        self._probed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._partitions: list[TopicPartition] = []
        self._warned = False
        self._consumer = Consumer(
            librdkafka_config(
                kafka,
                {
                    # Required by the client; never joined (assign) nor committed.
                    "group.id": "faultstream-circuit-view",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                    **FETCH_CONFIG,
                    "error_cb": self._on_error,
                    "logger": _quiet,
                },
            )
        )

    # --- loading -----------------------------------------------------------------------

    def load(self, timeout_s: float) -> None:
        """Read every partition to the end it has now; the view holds each circuit's
        newest record when this returns."""
        deadline = time.monotonic() + timeout_s
        partitions = self._topic_partitions(min(deadline, time.monotonic() + _SETTLE_S))
        self._partitions = [TopicPartition(self.topic, p) for p in partitions]
        ends = self._ends(partitions, deadline)
        # Only the newest value of each key matters: keep raw bytes while reading and
        # decode each circuit once at the end (the topic may hold many records per key
        # until compaction catches up).
        newest: dict[bytes, bytes | None] = {}
        pending = {p for p, (low, high) in ends.items() if high > low}
        self._consumer.assign([TopicPartition(self.topic, p, ends[p][0]) for p in partitions])
        consume = self._consumer.consume
        while pending:
            if time.monotonic() > deadline:
                raise CircuitViewError(
                    f"{self.topic}: not read to its end within {timeout_s:g} s "
                    f"({len(pending)} partitions left)"
                )
            for msg in consume(_BATCH, _POLL_S):
                error = msg.error()
                partition = msg.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                    elif error.fatal():
                        raise CircuitViewError(f"{self.topic}: {error.str()}")
                    continue
                key = msg.key()
                if key is not None:
                    newest[key] = msg.value()
                if msg.offset() >= ends[partition][1] - 1:
                    pending.discard(partition)
        for key, value in newest.items():
            self._apply_raw(key, value)
        self.polled_at = time.monotonic()
        self.loaded = True
        self._measure()

    def _topic_partitions(self, give_up_at: float) -> list[int]:
        """The topic's partitions; asked again for a moment while a topic created just
        now is not in every broker's metadata yet."""
        while True:
            try:
                metadata = cluster_metadata(self.kafka, timeout_s=10.0)
            except FaultstreamError as exc:
                raise CircuitViewError(f"{self.topic}: {exc}") from None
            info = metadata.topics.get(self.topic)
            if info is not None and info.error is None and info.partitions:
                return sorted(info.partitions)
            if time.monotonic() >= give_up_at:
                raise CircuitViewError(
                    f"topic {self.topic} does not exist on {self.kafka.bootstrap_servers} "
                    "(create it with `faultstream topics create`)"
                )
            time.sleep(0.2)

    def _ends(self, partitions: list[int], deadline: float) -> dict[int, tuple[int, int]]:
        try:
            return end_offsets(
                self._consumer,
                self.topic,
                partitions,
                timeout_s=max(1.0, deadline - time.monotonic()),
            )
        except KafkaException as exc:
            raise CircuitViewError(f"{self.topic}: {exc.args[0].str()}") from None

    # --- following ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._follow, name=f"faultstream-circuit-view-{self.topic}", daemon=True
        )
        self._thread.start()

    def _follow(self) -> None:
        consume = self._consumer.consume
        while not self._stop.is_set():
            try:
                messages = consume(_BATCH, _POLL_S)
            except RuntimeError:  # closed under us
                return
            self.polled_at = time.monotonic()
            for msg in messages:
                error = msg.error()
                if error is None:
                    self.broker_error = None
                    key = msg.key()
                    if key is not None:
                        try:
                            self._apply_raw(key, msg.value())
                        except Exception:  # a bug here must not stop the view silently
                            log.exception("circuit view: cannot apply a record; skipped")
                            self.view.skipped += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    self.broker_error = None
                elif error.fatal():
                    log.error("circuit view: %s; no longer following", error.str())
                    self.broker_error = error.str()
                    return
                else:
                    log.warning("circuit view: %s", error.str())
            self._measure()
            if self.broker_error is not None:
                self._probe()

    def _measure(self) -> None:
        """Records on the broker not applied yet, from the watermarks the last fetch
        responses carried (no request of its own)."""
        behind = 0
        try:
            positions = self._consumer.position(self._partitions)
            for tp in positions:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0:
                    behind += max(0, high - tp.offset)
        except (KafkaException, RuntimeError):
            return
        self.behind = behind

    def _probe(self) -> None:
        """While the broker looked down, ask it every few seconds whether it is back."""
        now = time.monotonic()
        if now - self._probed_at < _PROBE_EVERY_S or not self._partitions:
            return
        self._probed_at = now
        try:
            self._consumer.get_watermark_offsets(self._partitions[0], timeout=1.0)
        except (KafkaException, RuntimeError):
            return
        if self._error_at < now:
            self.broker_error = None

    def _on_error(self, error: KafkaError) -> None:
        self._error_at = time.monotonic()
        self.broker_error = error.str()

    # --- records -----------------------------------------------------------------------

    def _apply_raw(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            kind, _, cid = key.decode(errors="replace").partition(":")
            if kind in _KIND_NAMES:
                self.view._remove(kind, cid)
            return
        circuit = self._decode(value)
        if circuit is not None:
            self.view._put(circuit)

    def _decode(self, value: bytes) -> Circuit | None:
        if not self.registry:
            try:
                return decode_circuit(value)
            except (ValueError, IndexError, struct.error):
                pass  # the generic codec says what is wrong (or reads an older schema)
        if self.codec is None:
            self.codec = Codec(self.kafka.schema_registry_url, topic_prefix=self.kafka.topic_prefix)
        try:
            record = self.codec.decode(value)
        except FaultstreamError as exc:
            self._skip(str(exc))
            return None
        if not isinstance(record, CircuitStateChanged):
            self._skip(f"a {type(record).__name__}, not a circuit_state_changed")
            return None
        return Circuit.of_record(record)

    def _skip(self, why: str) -> None:
        self.view.skipped += 1
        if not self._warned:  # once: a topic full of them would flood the log
            self._warned = True
            log.warning(
                "circuit view: skipping records on %s that are unreadable: %s", self.topic, why
            )

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        with contextlib.suppress(RuntimeError):  # closed already
            self._consumer.close()


_quiet = logging.getLogger("faultstream.events.circuit_view.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
