"""The pytest plugin's agent: one process per test session that does the fleet's side.

The plugin (faultstream/pytest_plugin.py) starts it (`python -m faultstream.pytest_agent`)
and every test process of the session — the one pytest process, or each pytest-xdist
worker — talks to it over a local socket (faultstream/pytest_link.py). From their lines it
builds and validates the worker events: TASK_STARTED and SUCCESS or FAILURE per attempt of
a test, HEARTBEATs while a test process is connected, a HEARTBEAT marking the session's
start and finish, and one per quarantined test (attributes `pytest.*`, docs/ci.md). Then:

- **embedded** (no broker configured): a FleetCore restored from the last session decides
  as the events come (each failure is answered with its recovery command at once); once
  the session is over, the embedded pipeline — the same FleetCore and HistoryWriter as
  `faultstream demo` — records them into a DuckDB file kept across sessions (one writer:
  this process, under a file lock the next session and `faultstream report` wait for).
  Beside the file it keeps a snapshot of the core and of the circuits (`<db>.state`), so
  the next session starts without DuckDB or a replay; without one it replays the history.
- **kafka**: the events go to `<prefix>.events` through the SDK's KafkaTransport, the
  circuits are followed with CircuitView, and each failure is answered with the
  processor's command from `<prefix>.commands` (or none, after `--command-timeout`).

A process of its own on purpose: validation, the core, DuckDB and librdkafka run beside
the tests instead of inside them, and the test process imports none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import pickle
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

# Only what `ready` needs: on the embedded path with default settings, the agent answers
# before pydantic is even imported (the settings are read once the session is over).
from faultstream.events.exceptions import FaultstreamError
from faultstream.pytest_link import QUARANTINED, RUN, SESSION, TEST, TOKEN_ENV, now_ms

if TYPE_CHECKING:
    from faultstream.events.config import Settings

STATE_VERSION = 1
LAND_AT_INPUTS = 50_000  # inputs kept in memory before the history is written mid-session
LAND_EVERY_S = 1.0  # then, a transaction this often
LOCK_WAIT_S = 120.0  # for the last session's agent to finish writing
ACTOR = "pytest-plugin"
_LOOP_S = 0.1
_IDLE_EXIT_S = 120.0  # nobody connected (pytest died before it could): give up
_WORKERS_GONE_S = 60.0  # after the session's bye, how long test processes may take to hang up
_TEST_ROLES = frozenset({"single", "worker"})


def _dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8", "surrogatepass") + b"\n"


def _new_id() -> str:
    return uuid.uuid4().hex


def _command_dict(command: Any) -> dict[str, Any]:
    return {
        "command_id": command.command_id,
        "strategy": str(command.strategy),
        "attempt": command.attempt,
        "delay_s": command.delay_s,
        "reason": command.reason,
        "target_worker_id": command.target_worker_id,
        "target_hardware_class": command.target_hardware_class,
    }


class Backend(Protocol):
    mode: str

    def start(self) -> dict[str, Any]:
        """What `ready` says: the circuits not CLOSED, `where`, and a `warning` or None."""

    def after_ready(self) -> None:
        """The slow part of starting, done once the test processes can go on."""

    def send(self, fields: dict[str, Any], ask: bool = False) -> dict[str, Any] | None:
        """Deliver one worker event; with `ask` (a FAILURE), its recovery command if known
        now (embedded), else None (kafka: `answers` brings it later)."""

    def answers(self) -> dict[str, dict[str, Any]]:
        """Recovery commands that arrived since the last call, by the failure's event_id."""

    def land(self) -> None:
        """Write what is buffered, if it is time (called between messages)."""

    def changes(self) -> list[dict[str, Any]]:
        """Circuit changes since the last call (Circuit.as_dict())."""

    def summary(self) -> dict[str, Any]:
        """What the session's terminal says about it (no I/O: the session is told before
        `finish` writes)."""

    def finish(self) -> None:
        """Write and close everything."""


# --- embedded -------------------------------------------------------------------------


class EmbeddedBackend:
    """The embedded pipeline on a DuckDB history file that outlives the session.

    What arrives is kept as it came, stamped with its arrival: a passing session costs the
    agent a JSON parse per line and no more. A failure that asks for its recovery command
    has everything before it decided by a FleetCore restored from the last session's
    snapshot. Once the session is told `done` (or LAND_AT_INPUTS inputs are waiting), the
    embedded pipeline starts from the same snapshot, takes the same inputs in the same
    order — the core is deterministic, so it makes the same decisions — and records them
    with the HistoryWriter; DuckDB is not even imported before.
    """

    mode = "embedded"

    def __init__(self, settings: Settings | None, db: Path) -> None:
        self._settings = settings  # None: the defaults (and the environment), read on demand
        self.db = db
        self.state_path = db.with_name(db.name + ".state")
        self.read_only = False
        self.warning: str | None = None
        self.circuits: dict[str, dict[str, Any]] = {}
        self._start: bytes | None = None  # the core's snapshot at the session's start
        self._start_settings: dict[str, Any] | None = None
        self._raw: list[Any] = []  # arrived: worker event fields, or control records
        self._records: list[Any] = []  # built, not yet in the pipeline
        self._live: Any = None  # a FleetCore answering asks before the pipeline exists
        self._live_at = 0  # how many of _records it has taken
        self._pipeline: Any = None
        self._changes: list[dict[str, Any]] = []
        self._landed_at = time.monotonic()
        self._clock = 0
        self._opened = self._stamp()  # the session's TICK: before anything it decides
        self._built = False
        self.events = 0

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from faultstream.events.config import load_settings

            self._settings = load_settings()
        return self._settings

    def start(self) -> dict[str, Any]:
        from faultstream.events.locks import FileLock, LockedError

        self.db.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.db.with_name(self.db.name + ".lock"))
        give_up = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                self._lock.acquire()
                break
            except LockedError as exc:
                # The last session's agent finishing its writes, or another session on the
                # same project (then, after a while: decide, don't record).
                if time.monotonic() < give_up:
                    time.sleep(0.02)
                    continue
                self.read_only = True
                self.warning = (
                    f"{self.db} is being written by {exc.holder}: this session's circuits "
                    "are decided but not recorded"
                )
                break
        state = self._read_state()
        if state is None and self.db.exists():
            state = self._replay()
        if state is not None:
            self._start = state["core"]
            self._start_settings = state["settings"]
            self.circuits = state["circuits"]
        return {
            "circuits": [c for c in self.circuits.values() if c["state"] != "CLOSED"],
            "where": str(self.db),
            "warning": self.warning,
        }

    def _db_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.db.stat()
        except FileNotFoundError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def _read_state(self) -> dict[str, Any] | None:
        """The snapshot the last session left, if it describes the file as it is now (same
        size and time, nothing pending in a WAL); else None and the history is replayed."""
        try:
            with open(self.state_path, "rb") as fh:
                state = pickle.load(fh)
        except FileNotFoundError:
            return None
        except Exception:  # a truncated or foreign file: replay instead
            return None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return None
        wal = self.db.with_name(self.db.name + ".wal")
        if state.get("db") != self._db_stamp() or wal.exists():
            return None
        return state

    def _replay(self) -> dict[str, Any]:
        """The core and circuits after every input of the history, through the same core."""
        from faultstream.events.circuit_view import Circuit
        from faultstream.events.models import CircuitStateChanged
        from faultstream.processors.core import FleetCore
        from faultstream.projections.queries import History

        core = FleetCore(self.settings.core)
        circuits: dict[str, dict[str, Any]] = {}
        try:
            history = History.from_db(self.db)
        except FaultstreamError as exc:
            raise FaultstreamError(f"{self.db}: {exc}; delete it to start a new history") from None
        try:
            tables = "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'events'"
            if history.con.execute(tables).fetchone()[0]:  # else: made, never written
                for record in history.input_records():
                    for out in core.process(record):
                        if isinstance(out, CircuitStateChanged):
                            circuits[out.key] = Circuit.of_record(out).as_dict()
        except Exception as exc:
            raise FaultstreamError(
                f"{self.db}: not a readable history ({type(exc).__name__}: {exc}); "
                "delete it to start a new history"
            ) from None
        finally:
            history.close()
        settings = core.settings.model_dump(mode="json")
        return {"core": core.snapshot(), "settings": settings, "circuits": circuits}

    def _restore(self) -> Any:
        """A core as the session started: from the snapshot, or new for a new history."""
        from faultstream.processors.core import FleetCore

        if self._start is None:
            return FleetCore(self.settings.core)
        try:
            return FleetCore.restore(self._start)
        except ValueError:  # a snapshot of another code version: replay instead
            self._start = self._replay()["core"]
            return FleetCore.restore(self._start)

    def after_ready(self) -> None:
        return None  # nothing to do until something must be decided

    def _opening(self) -> list[Any]:
        """The session's first inputs, dated when it began."""
        from faultstream.events.models import ConfigChanged, Tick

        now = self._opened
        records: list[Any] = []
        settings = self.settings.core.model_dump(mode="json")
        if self._start_settings is not None and self._start_settings != settings:
            # The settings changed since the last session: a record, so replay agrees.
            config = ConfigChanged(
                event_id=_new_id(), ts=now, config=settings, actor=ACTOR, received_at=now
            )
            records.append(config)
        # Reveals what fell due since the last session (circuits half-open, workers lost).
        records.append(Tick(event_id=_new_id(), ts=now, received_at=now))
        return records

    def _stamp(self) -> int:
        # The agent plays the broker: inputs are dated by their arrival here.
        self._clock = max(self._clock, now_ms())
        return self._clock

    def send(self, fields: dict[str, Any], ask: bool = False) -> dict[str, Any] | None:
        fields["received_at"] = self._stamp()
        self._raw.append(fields)
        self.events += 1
        return self._decide(fields["event_id"]) if ask else None

    def _build(self) -> None:
        from faultstream.events.build import build_worker_event

        if not self._built:
            self._built = True
            self._records.extend(self._opening())
        raw, self._raw = self._raw, []
        for item in raw:
            if isinstance(item, dict):
                try:
                    item = build_worker_event(item)
                except FaultstreamError as exc:  # a field the contract refuses: said, skipped
                    print(f"event not recorded: {exc}", file=sys.stderr)
                    continue
            self._records.append(item)

    def _take(self, out: list[Any], push: bool) -> None:
        from faultstream.events.circuit_view import Circuit
        from faultstream.events.models import CircuitStateChanged

        for derived in out:
            if isinstance(derived, CircuitStateChanged):
                circuit = Circuit.of_record(derived).as_dict()
                self.circuits[derived.key] = circuit
                if push:
                    self._changes.append(circuit)

    def _decide(self, event_id: str) -> dict[str, Any] | None:
        """Decide everything that arrived; the recovery command caused by `event_id`."""
        self._build()
        command = None
        if self._pipeline is not None:
            records, self._records = self._records, []
            for record in records:
                out = self._pipeline.ingest(record)
                self._take(out, push=True)
                command = _command_for(out, event_id) or command
            return command
        if self._live is None:
            self._live = self._restore()
        for record in self._records[self._live_at :]:
            out = self._live.process(record)
            self._take(out, push=True)
            command = _command_for(out, event_id) or command
        self._live_at = len(self._records)
        return command

    def _open_pipeline(self) -> None:
        """The embedded pipeline from the session's start, given every input so far."""
        from faultstream.projections.embedded import EmbeddedPipeline
        from faultstream.projections.tables import HistoryWriter

        self._build()
        pipeline = EmbeddedPipeline(self.settings.core, writer=HistoryWriter(self.db))
        pipeline.core = self._restore()
        records, self._records = self._records, []
        for index, record in enumerate(records):
            # What the live core decided already is not news; the rest is.
            self._take(pipeline.ingest(record), push=index >= self._live_at)
        self._pipeline, self._live, self._live_at = pipeline, None, 0

    def answers(self) -> dict[str, dict[str, Any]]:
        return {}

    def land(self) -> None:
        if self.read_only:
            return
        if self._pipeline is None:
            if len(self._raw) + len(self._records) >= LAND_AT_INPUTS:
                self._open_pipeline()  # a long session: record as it goes
                self._landed_at = time.monotonic()
            return
        if time.monotonic() - self._landed_at >= LAND_EVERY_S:
            self._decide("")
            self._pipeline.flush()
            self._landed_at = time.monotonic()

    def changes(self) -> list[dict[str, Any]]:
        changes, self._changes = self._changes, []
        return changes

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "where": str(self.db),
            "events": self.events,
            "recorded": not self.read_only,
        }

    def finish(self) -> None:
        if self.read_only:
            return
        if self._pipeline is None:
            self._open_pipeline()
        self._decide("")
        pipeline, self._pipeline = self._pipeline, None
        pipeline.close()
        state = {
            "version": STATE_VERSION,
            "db": self._db_stamp(),
            "core": pipeline.core.snapshot(),
            "settings": pipeline.core.settings.model_dump(mode="json"),
            "circuits": self.circuits,
        }
        partial = self.state_path.with_name(self.state_path.name + ".partial")
        with open(partial, "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, self.state_path)
        self._lock.release()


def _command_for(out: list[Any], event_id: str) -> dict[str, Any] | None:
    from faultstream.events.models import RecoveryCommand

    for derived in out:
        if isinstance(derived, RecoveryCommand) and derived.caused_by == event_id:
            return _command_dict(derived)
    return None


# --- Kafka ----------------------------------------------------------------------------


class _CommandWaiter:
    """Recovery commands from `<prefix>.commands`, from its end at start, by `caused_by`."""

    KEPT = 10_000

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        from faultstream.events.codec import Codec
        from faultstream.events.kafka_clients import librdkafka_config

        kafka = settings.kafka
        self.topic = kafka.topic("commands")
        self.codec = Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
        self._consumer = Consumer(
            librdkafka_config(
                kafka, {"group.id": f"faultstream-pytest-{_new_id()}", "enable.auto.commit": False}
            )
        )
        metadata = self._consumer.list_topics(self.topic, timeout=10)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            self._consumer.close()
            raise FaultstreamError(f"no topic {self.topic}")
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_END) for p in sorted(topic.partitions)]
        )
        self._found: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="commands", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        from faultstream.events.models import RecoveryCommand

        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            try:
                record = self.codec.decode(msg.value() or b"")
            except FaultstreamError:
                continue
            if isinstance(record, RecoveryCommand):
                with self._lock:
                    self._found[record.caused_by] = _command_dict(record)
                    if len(self._found) > self.KEPT:
                        self._found.popitem(last=False)

    def take(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            found, self._found = self._found, OrderedDict()
        return dict(found)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


class KafkaBackend:
    """Events to Kafka; circuits and commands from the processor's topics."""

    mode = "kafka"

    def __init__(self, settings: Settings, circuits_timeout_s: float) -> None:
        self.settings = settings
        self.circuits_timeout_s = circuits_timeout_s
        self._changes: deque[dict[str, Any]] = deque()
        self._view: Any = None
        self._commands: _CommandWaiter | None = None
        self.events = 0

    def start(self) -> dict[str, Any]:
        from faultstream.events.circuit_view import CircuitView, CircuitViewError
        from faultstream.events.transport import KafkaTransport

        kafka = self.settings.kafka
        self._transport = KafkaTransport(self.settings)
        warnings = []
        try:
            self._view = CircuitView.from_kafka(self.settings, timeout_s=self.circuits_timeout_s)
        except CircuitViewError as exc:
            warnings.append(f"circuits not followed, nothing is quarantined ({exc})")
        else:
            self._view.on_change(lambda before, after: self._changes.append(after.as_dict()))
        try:
            self._commands = _CommandWaiter(self.settings)
        except Exception as exc:
            warnings.append(f"recovery commands not followed, nothing is retried ({exc})")
        circuits = [c.as_dict() for c in self._view if c.state != "CLOSED"] if self._view else []
        where = f"{kafka.bootstrap_servers} {kafka.topic('events')}"
        return {"circuits": circuits, "where": where, "warning": "; ".join(warnings) or None}

    def after_ready(self) -> None:
        return None

    def send(self, fields: dict[str, Any], ask: bool = False) -> dict[str, Any] | None:
        from faultstream.events.build import build_worker_event

        self._transport.send(build_worker_event(fields))
        self.events += 1
        return None

    def answers(self) -> dict[str, dict[str, Any]]:
        return self._commands.take() if self._commands is not None else {}

    def land(self) -> None:
        return None  # the transport sends as it goes

    def changes(self) -> list[dict[str, Any]]:
        changes = []
        while self._changes:
            changes.append(self._changes.popleft())
        return changes

    def summary(self) -> dict[str, Any]:
        kafka = self.settings.kafka
        return {
            "mode": self.mode,
            "where": f"{kafka.bootstrap_servers} {kafka.topic('events')}",
            "events": self.events,
            "recorded": True,
        }

    def finish(self) -> None:
        self._transport.close(self.settings.emitter.close_timeout_s)
        if self._view is not None:
            self._view.close()
        if self._commands is not None:
            self._commands.close()


# --- connections ----------------------------------------------------------------------


@dataclass
class _Conn:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    role: str | None = None  # single | controller | worker, once it said hello
    worker_id: str = ""
    hardware_class: str = ""
    last_event_ms: int = 0
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)  # tests running
    asks: dict[str, int] = field(default_factory=dict)  # failure event_id -> message key
    closed: bool = False


class Agent:
    """The select loop: connections in, events out, answers back."""

    def __init__(
        self,
        listener: socket.socket,
        token: str,
        run_id: str,
        backend: Backend | None,
        start_error: str | None,
        command_timeout_s: float,
        heartbeat_s: float,
    ) -> None:
        self.listener = listener
        self.token = token
        self.run_id = run_id
        self.backend = backend
        self.start_error = start_error
        self.start_info: dict[str, Any] | None = None
        self.command_timeout_s = command_timeout_s
        self.heartbeat_ms = int(heartbeat_s * 1000)
        self.selector = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        self.primary: tuple[str, str] | None = None  # the identity of session records
        self.bye: dict[str, Any] | None = None
        self.bye_at: float | None = None
        self.session_conn: _Conn | None = None
        self.ready_sent = False
        self.after_ready_done = False
        self.deadlines: dict[str, tuple[_Conn, int, float]] = {}
        self.broken: str | None = None  # after_ready failed: events are dropped

    # --- the loop -------------------------------------------------------------------

    def run(self) -> int:
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        started = time.monotonic()
        if self.backend is not None and self.start_error is None:
            try:
                self.start_info = self.backend.start()
            except Exception as exc:
                self.start_error = _one_line(exc)
        while True:
            for key, mask in self.selector.select(_LOOP_S):
                if key.data is None:
                    self._accept()
                    continue
                conn: _Conn = key.data
                if mask & selectors.EVENT_READ:
                    self._read(conn)
                if mask & selectors.EVENT_WRITE:
                    self._flush(conn)
            if self.ready_sent and not self.after_ready_done:
                self.after_ready_done = True
                self._guard(self.backend.after_ready)  # type: ignore[union-attr]
            self._housekeeping()
            if self._session_over():
                break
            idle = not self.conns and self.session_conn is None
            if idle and time.monotonic() - started > _IDLE_EXIT_S:
                return 1
        return self._finish()

    def _session_over(self) -> bool:
        if self.bye_at is None:
            return False
        testers = [c for c in self.conns if c.role == "worker" and not c.closed]
        return not testers or time.monotonic() - self.bye_at > _WORKERS_GONE_S

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self.conns.append(conn)
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        while True:
            try:
                chunk = conn.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._hang_up(conn)
                break
            conn.inbuf += chunk
        while (end := conn.inbuf.find(b"\n")) >= 0:
            line = bytes(conn.inbuf[:end])
            del conn.inbuf[: end + 1]
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if conn.role is None and message.get("t") != "hello":
                self._hang_up(conn)
                return
            self._guard(self._handle, conn, message)

    def _send(self, conn: _Conn, message: dict[str, Any]) -> None:
        if conn.closed:
            return
        conn.out += _dumps(message)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.closed:
            return
        try:
            sent = conn.sock.send(conn.out) if conn.out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._hang_up(conn)
            return
        del conn.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        self.selector.modify(conn.sock, events, conn)

    def _hang_up(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.selector.unregister(conn.sock)
        conn.sock.close()
        if conn.role in ("single", "controller") and self.bye_at is None:
            self.bye_at = time.monotonic()  # pytest went away without a bye: land what came

    def _guard(self, function: Any, *args: Any) -> None:
        """Run one step; a bug or a bad record is logged, never the end of the session."""
        try:
            function(*args)
        except Exception as exc:
            traceback.print_exc()
            if function is getattr(self.backend, "after_ready", None):
                self.broken = _one_line(exc)

    # --- messages ---------------------------------------------------------------------

    def _handle(self, conn: _Conn, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "hello":
            self._hello(conn, message)
        elif kind == "b":
            conn.pending[int(message["k"])] = message
        elif kind == "e":
            self._end(conn, message)
        elif kind == "s":
            conn.pending.pop(int(message["k"]), None)
        elif kind == "q":
            self._quarantined(conn, message)
        elif kind == "bye":
            self.bye = message
            self.bye_at = time.monotonic()

    def _hello(self, conn: _Conn, message: dict[str, Any]) -> None:
        if not hmac.compare_digest(str(message.get("token", "")), self.token):
            self._hang_up(conn)
            return
        conn.role = str(message.get("role"))
        conn.worker_id = str(message.get("worker_id"))
        conn.hardware_class = str(message.get("hardware_class"))
        if conn.role in ("single", "controller"):
            self.session_conn = conn
        if self.start_error is not None:
            self._send(conn, {"t": "error", "message": self.start_error})
            return
        assert self.start_info is not None and self.backend is not None
        self._send(conn, {"t": "ready", "mode": self.backend.mode, **self.start_info})
        self.ready_sent = True
        if conn.role in _TEST_ROLES:
            conn.last_event_ms = now_ms()
            if self.primary is None:
                self.primary = (conn.worker_id, conn.hardware_class)
                self._session_record("start", int(message.get("ts") or now_ms()), {})

    def _fields(self, conn: _Conn, kind: str, ts: int, attributes: dict[str, str]) -> dict:
        conn.last_event_ms = max(conn.last_event_ms, now_ms())
        return {
            "event_id": _new_id(),
            "kind": kind,
            "ts": ts,
            "worker_id": conn.worker_id,
            "hardware_class": conn.hardware_class,
            "attributes": attributes,
        }

    def _task_fields(self, conn: _Conn, kind: str, ts: int, begin: dict[str, Any]) -> dict:
        fields = self._fields(conn, kind, ts, {RUN: self.run_id, TEST: str(begin["test"])})
        fields["task_id"] = begin["task_id"]
        fields["task_type"] = begin["task_type"]
        fields["attempt"] = int(begin["attempt"])
        fields["recovery_command_id"] = begin.get("cmd")
        return fields

    def _deliver(self, fields: dict[str, Any], ask: bool = False) -> dict[str, Any] | None:
        if self.backend is None or self.broken is not None:
            return None
        return self.backend.send(fields, ask)

    def _started(self, conn: _Conn, begin: dict[str, Any]) -> None:
        if not begin.get("sent"):
            begin["sent"] = True
            self._deliver(self._task_fields(conn, "TASK_STARTED", int(begin["ts"]), begin))

    def _end(self, conn: _Conn, message: dict[str, Any]) -> None:
        key = int(message["k"])
        begin = conn.pending.pop(key, None)
        if begin is None:
            return
        self._started(conn, begin)
        ts = int(message["ts"])
        if message.get("ok"):
            self._deliver(self._task_fields(conn, "SUCCESS", ts, begin))
            return
        fields = self._task_fields(conn, "FAILURE", ts, begin)
        fields["failure_type"] = message.get("ft")
        fields["message"] = message.get("msg")
        if message.get("exc"):
            fields["attributes"]["pytest.exception"] = str(message["exc"])
        ask = bool(message.get("ask"))
        try:
            command = self._deliver(fields, ask)
        except FaultstreamError as exc:  # an event the contract refuses: said, not fatal
            if ask:
                self._send(
                    conn, {"t": "command", "k": key, "command": None, "why": f"not reported: {exc}"}
                )
            raise
        if not ask:
            return
        self._push_changes()  # before the answer: a circuit this failure opened stops a retry
        if command is not None or self.backend is None or self.backend.mode != "kafka":
            why = None if command is not None else (self.broken or "no recovery command")
            self._send(conn, {"t": "command", "k": key, "command": command, "why": why})
            return
        deadline = time.monotonic() + self.command_timeout_s
        self.deadlines[fields["event_id"]] = (conn, key, deadline)

    def _quarantined(self, conn: _Conn, message: dict[str, Any]) -> None:
        attributes = {
            RUN: self.run_id,
            TEST: str(message["test"]),
            QUARANTINED: str(message["why"]),
            "pytest.task_type": str(message["task_type"]),
            "pytest.circuit_state": str(message["state"]),
            "pytest.quarantine": str(message["mode"]),
        }
        self._deliver(self._fields(conn, "HEARTBEAT", int(message["ts"]), attributes))

    def _session_record(self, phase: str, ts: int, extra: dict[str, str]) -> None:
        if self.primary is None:
            return
        worker_id, hardware_class = self.primary
        attributes = {RUN: self.run_id, SESSION: phase, **extra}
        fields = {
            "event_id": _new_id(),
            "kind": "HEARTBEAT",
            "ts": ts,
            "worker_id": worker_id,
            "hardware_class": hardware_class,
            "attributes": attributes,
        }
        self._guard(self._deliver, fields)

    # --- timers -----------------------------------------------------------------------

    def _housekeeping(self) -> None:
        backend = self.backend
        if backend is None or self.start_error is not None:
            return
        now = now_ms()
        for conn in self.conns:
            if conn.closed or conn.role not in _TEST_ROLES:
                continue
            # A test running longer than a heartbeat shows as started (a crash then moves
            # it); short ones are reported whole when they end.
            for begin in conn.pending.values():
                if not begin.get("sent") and now - int(begin["ts"]) >= self.heartbeat_ms:
                    self._guard(self._started, conn, begin)
            if now - conn.last_event_ms >= self.heartbeat_ms:
                self._guard(self._deliver, self._fields(conn, "HEARTBEAT", now, {RUN: self.run_id}))
        if self.deadlines:
            found = backend.answers()
            clock = time.monotonic()
            for event_id, (conn, key, deadline) in list(self.deadlines.items()):
                command = found.get(event_id)
                if command is None and clock < deadline:
                    continue
                del self.deadlines[event_id]
                why = (
                    None
                    if command is not None
                    else (
                        f"no recovery command within {self.command_timeout_s:g}s "
                        "(is `faultstream processor` running?)"
                    )
                )
                self._send(conn, {"t": "command", "k": key, "command": command, "why": why})
        self._push_changes()
        if self.broken is None:
            self._guard(backend.land)

    def _push_changes(self) -> None:
        if self.backend is None or self.start_error is not None:
            return
        changes = self.backend.changes()
        if changes:
            for conn in self.conns:
                if conn.role in _TEST_ROLES:
                    for circuit in changes:
                        self._send(conn, {"t": "circuit", "circuit": circuit})

    def _finish(self) -> int:
        bye = self.bye or {}
        extra = {"pytest.exitstatus": str(bye.get("exitstatus", "interrupted"))}
        if "tests" in bye:
            extra["pytest.tests"] = str(bye["tests"])
        self._session_record("finish", now_ms(), extra)
        working = self.backend is not None and self.start_error is None
        summary: dict[str, Any] = self.backend.summary() if working else {}  # type: ignore[union-attr]
        if self.broken is not None:
            summary["error"] = self.broken
        # Every decision is made: the session may end now. The writing that follows is
        # this process's alone; the next session (and `faultstream report`) wait for it.
        conn = self.session_conn
        if conn is not None and not conn.closed:
            conn.out += _dumps({"t": "done", "summary": summary})
            conn.sock.setblocking(True)
            with contextlib.suppress(OSError):
                conn.sock.sendall(conn.out)
            conn.sock.close()
        if working:
            with contextlib.suppress(OSError):
                os.nice(10)  # what is left is bookkeeping: yield to whatever runs next
            try:
                self.backend.finish()  # type: ignore[union-attr]
            except Exception:
                traceback.print_exc()
                return 1
        return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.splitlines())


# The plugin's own variables and the project's; any other FAULTSTREAM_ variable may be a
# setting, and has the settings read (and checked) before the first test.
_NOT_SETTINGS = frozenset(
    {"FAULTSTREAM_HARDWARE_CLASS", "FAULTSTREAM_WORKER_ID", TOKEN_ENV, "FAULTSTREAM_DEBUG"}
)


def _settings_given(config: str | None) -> bool:
    """Whether anything but the defaults could apply: a file, or a FAULTSTREAM_ variable."""
    if config or os.environ.get("FAULTSTREAM_CONFIG") or Path("faultstream.toml").is_file():
        return True
    names = (name.upper() for name in os.environ)
    return any(name.startswith("FAULTSTREAM_") and name not in _NOT_SETTINGS for name in names)


def main(argv: list[str] | None = None) -> int:
    if os.fork():
        # Out of pytest's children at once: the session reaps this parent right away and
        # never waits for the writing the agent does after answering `done`.
        os._exit(0)
    # A Ctrl-C meant for pytest reaches its whole process group: the agent still records
    # what the session did (pytest hangs up, and that ends the session here).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="python -m faultstream.pytest_agent")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--mode", choices=["auto", "embedded", "kafka"], default="auto")
    parser.add_argument("--db", required=True)
    parser.add_argument("--config")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--command-timeout", type=float, default=10.0)
    parser.add_argument("--circuits-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    listener = socket.socket(fileno=args.listen_fd)
    token = os.environ.get(TOKEN_ENV, "")
    backend: Backend | None = None
    error = None
    heartbeat_s = 10.0
    try:
        settings = None
        if args.mode != "embedded" or _settings_given(args.config):
            from faultstream.events.config import load_settings

            settings = load_settings(args.config)  # a bad file or value: said before any test
            # Several heartbeats per timeout, so a connected test process never looks lost.
            heartbeat_s = min(heartbeat_s, settings.recovery.heartbeat_timeout_s / 3)
        mode = args.mode
        if mode == "auto":
            # A broker counts as configured when a file or the environment names one.
            named = settings is not None and "bootstrap_servers" in settings.kafka.model_fields_set
            mode = "kafka" if named else "embedded"
        if mode == "kafka":
            assert settings is not None
            backend = KafkaBackend(settings, args.circuits_timeout)
        else:
            backend = EmbeddedBackend(settings, Path(args.db))
    except FaultstreamError as exc:
        error = _one_line(exc)
    agent = Agent(listener, token, args.run_id, backend, error, args.command_timeout, heartbeat_s)
    return agent.run()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and closed: skip the interpreter's teardown (DuckDB, Arrow),
    # which the session would otherwise wait for.
    os._exit(code)
