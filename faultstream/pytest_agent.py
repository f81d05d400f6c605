"""The pytest plugin's agent: the fleet's side of a test session, in a process of its own.

The plugin (faultstream/pytest_plugin.py) starts it (`python -m faultstream.pytest_agent`)
with the session's spool and/or a listening socket (faultstream/pytest_link.py). From the
session's messages it builds and validates the worker events: TASK_STARTED and SUCCESS or
FAILURE per attempt of a test, a HEARTBEAT marking the session's start and finish, one
per quarantined test (attributes `pytest.*`, docs/ci.md) and, while a test process is
connected, HEARTBEATs that keep its worker alive. Then:

- **embedded** (no broker configured): a FleetCore restored from the last session's
  snapshot decides what a failure asks (its recovery command), and once the session is
  over the embedded pipeline — the same FleetCore and HistoryWriter as `faultstream demo`
  — records everything into a DuckDB file kept across sessions: one writer, this process,
  under the lock the session handed it, which the next session and `faultstream report`
  wait for. Beside the file it leaves the core's snapshot (`<db>.state`) and the circuits
  not CLOSED (`<db>.circuits.json`), so the next session starts without DuckDB or a
  replay; without them it replays the history. A spool no agent landed (its pytest or
  agent died) is landed first, by the next agent.
- **kafka**: the events go to `<prefix>.events` through the SDK's KafkaTransport, the
  circuits are followed with CircuitView, and a failure is answered with the processor's
  command from `<prefix>.commands` (or none, after `--command-timeout`).

A process of its own on purpose: validation, the core, DuckDB and librdkafka run beside
the tests (or after them), never inside them, and the test process imports none of them.
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

from faultstream.pytest_link import (
    BATCH_PREFIX,
    QUARANTINED,
    RUN,
    SESSION,
    STATE_VERSION,
    TEST,
    TOKEN_ENV,
    db_stamp,
    now_ms,
    settings_given,
    sibling,
)

if TYPE_CHECKING:
    from faultstream.events.config import Settings

ACTOR = "pytest-plugin"
LAND_AT_INPUTS = 50_000  # inputs kept in memory before the history is written mid-session
LAND_EVERY_S = 1.0  # then, a transaction this often
_LOOP_S = 0.1
_IDLE_EXIT_S = 120.0  # nobody connected (pytest died before it could): give up
_WORKERS_GONE_S = 60.0  # after the session's bye, how long test processes may take to hang up
_UNREAD_MAX = 1_000  # batch lines kept unread (a few minutes of a worker's pushes)
_TEST_ROLES = frozenset({"single", "worker"})
_SESSION_ROLES = frozenset({"single", "controller"})


def _dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


def _new_id() -> str:
    return uuid.uuid4().hex


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.splitlines())


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


def _command_for(out: list[Any], event_id: str) -> dict[str, Any] | None:
    from faultstream.events.models import RecoveryCommand

    for derived in out:
        if isinstance(derived, RecoveryCommand) and derived.caused_by == event_id:
            return _command_dict(derived)
    return None


class Backend(Protocol):
    mode: str

    def start(self) -> dict[str, Any]:
        """`where`, and a `warning` or None."""

    def settle(self) -> None:
        """Decide everything that arrived (the spools of dead sessions, before `ready`)."""

    def circuits(self) -> list[dict[str, Any]]:
        """The circuits not CLOSED now (Circuit.as_dict()), for `ready`."""

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

    What arrives is kept as it came: a passing session costs the agent a JSON parse per
    batch and no more. A failure that asks for its recovery command has everything before
    it decided by a FleetCore restored from the last session's snapshot. Once the session
    is over (or LAND_AT_INPUTS inputs are waiting), the embedded pipeline starts from the
    same snapshot, takes the same inputs in the same order — the core is deterministic, so
    it makes the same decisions — and records them with the HistoryWriter; DuckDB is not
    even imported before.
    """

    mode = "embedded"

    def __init__(self, settings: Settings | None, db: Path, *, record: bool) -> None:
        self._settings = settings  # None: the defaults (and the environment), read on demand
        self.db = db
        self.record = record  # False: the history is another session's (decide, don't write)
        self.warning: str | None = None
        self._circuits: dict[str, dict[str, Any]] = {}
        self._start: bytes | None = None  # the core's snapshot at the session's start
        self._start_settings: dict[str, Any] | None = None
        self._raw: list[Any] = []  # arrived: worker event fields
        self._records: list[Any] = []  # built, not yet in the pipeline
        self._live: Any = None  # a FleetCore answering asks before the pipeline exists
        self._live_at = 0  # how many of _records it has taken
        self._pipeline: Any = None
        self._changes: list[dict[str, Any]] = []
        self._landed_at = time.monotonic()
        self._built = False
        self.events = 0

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from faultstream.events.config import load_settings

            self._settings = load_settings()
        return self._settings

    def start(self) -> dict[str, Any]:
        state = self._read_state()
        if state is None and self.db.exists():
            state = self._replay()
        if state is not None:
            self._start = state["core"]
            self._start_settings = state["settings"]
            self._circuits = state["circuits"]
        if not self.record:
            self.warning = f"{self.db} is locked by another session: this one is not recorded"
        return {"where": str(self.db), "warning": self.warning}

    def _read_state(self) -> dict[str, Any] | None:
        """The snapshot the last session left, if it describes the file as it is now (same
        stamp, nothing pending in a WAL); else None and the history is replayed."""
        try:
            with open(sibling(self.db, ".state"), "rb") as fh:
                state = pickle.load(fh)
            with open(sibling(self.db, ".circuits.json"), encoding="utf-8") as fh:
                circuits = json.load(fh)
        except FileNotFoundError:
            return None
        except Exception:  # a truncated or foreign file: replay instead
            return None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return None
        stamp = db_stamp(self.db)
        if state.get("db") != stamp or circuits.get("db") != stamp:
            return None
        if sibling(self.db, ".wal").exists():
            return None
        by_key = {f"{c['kind']}:{c['id']}": c for c in circuits.get("circuits", [])}
        return {**state, "circuits": by_key}

    def _replay(self) -> dict[str, Any]:
        """The core and circuits after every input of the history, through the same core."""
        from faultstream.events.circuit_view import Circuit
        from faultstream.events.exceptions import FaultstreamError
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

    def settle(self) -> None:
        self._decide("")

    def circuits(self) -> list[dict[str, Any]]:
        return [c for c in self._circuits.values() if c["state"] != "CLOSED"]

    def send(self, fields: dict[str, Any], ask: bool = False) -> dict[str, Any] | None:
        self._raw.append(fields)
        self.events += 1
        return self._decide(fields["event_id"]) if ask else None

    def _build(self) -> None:
        from faultstream.events.build import build_worker_event
        from faultstream.events.exceptions import FaultstreamError

        raw, self._raw = self._raw, []
        if not self._built and raw:
            self._built = True
            settings = self.settings.core.model_dump(mode="json")
            if self._start_settings is not None and self._start_settings != settings:
                # The settings changed since the last session: a record, so replay agrees.
                from faultstream.events.models import ConfigChanged

                ts = int(raw[0]["ts"])
                self._records.append(
                    ConfigChanged(event_id=_new_id(), ts=ts, config=settings, actor=ACTOR)
                )
        for fields in raw:
            try:
                self._records.append(build_worker_event(fields))
            except FaultstreamError as exc:  # a field the contract refuses: said, skipped
                print(f"event not recorded: {exc}", file=sys.stderr)

    def _take(self, out: list[Any], push: bool) -> None:
        from faultstream.events.circuit_view import Circuit
        from faultstream.events.models import CircuitStateChanged

        for derived in out:
            if isinstance(derived, CircuitStateChanged):
                circuit = Circuit.of_record(derived).as_dict()
                self._circuits[derived.key] = circuit
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
        if not self.record:
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
            "recorded": self.record,
        }

    def finish(self) -> None:
        if not self.record or (self._pipeline is None and not self._raw and not self._records):
            return
        if self._pipeline is None:
            self._open_pipeline()
        self._decide("")
        pipeline, self._pipeline = self._pipeline, None
        pipeline.close()
        stamp = db_stamp(self.db)
        state = {
            "version": STATE_VERSION,
            "db": stamp,
            "core": pipeline.core.snapshot(),
            "settings": pipeline.core.settings.model_dump(mode="json"),
        }
        openish = [c for c in self._circuits.values() if c["state"] != "CLOSED"]
        _write_atomic(sibling(self.db, ".state"), pickle.dumps(state, pickle.HIGHEST_PROTOCOL))
        circuits = {"version": STATE_VERSION, "db": stamp, "circuits": openish}
        _write_atomic(sibling(self.db, ".circuits.json"), json.dumps(circuits).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


# --- Kafka ----------------------------------------------------------------------------


class _CommandWaiter:
    """Recovery commands from `<prefix>.commands`, from its end at start, by `caused_by`."""

    KEPT = 10_000

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        from faultstream.events.codec import Codec
        from faultstream.events.exceptions import FaultstreamError
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
        from faultstream.events.exceptions import FaultstreamError
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
        where = f"{kafka.bootstrap_servers} {kafka.topic('events')}"
        return {"where": where, "warning": "; ".join(warnings) or None}

    def settle(self) -> None:
        return None

    def circuits(self) -> list[dict[str, Any]]:
        view = self._view
        return [c.as_dict() for c in view if c.state != "CLOSED"] if view is not None else []

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
    """A test process's messages: over a socket, or read back from a spool (sock None)."""

    sock: socket.socket | None
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    authed: bool = False
    role: str | None = None  # single | controller | worker, once it said hello
    run: str = ""
    worker_id: str = ""
    hardware_class: str = ""
    last_event_ms: int = 0
    last_ts: int = 0  # the newest moment its messages name
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)  # tests announced
    closed: bool = False


@dataclass
class _Run:
    """One session's records: who speaks for it, and whether it said goodbye."""

    primary: tuple[str, str] | None = None  # the identity of its session records
    bye: dict[str, Any] | None = None
    finished: bool = False


class Agent:
    """Spools first, then the select loop: messages in, events out, answers back."""

    def __init__(
        self,
        listener: socket.socket | None,
        token: str,
        backend: Backend | None,
        start_error: str | None,
        command_timeout_s: float,
        heartbeat_s: float,
    ) -> None:
        self.listener = listener
        self.token = token
        self.backend = backend
        self.error = start_error
        self.command_timeout_s = command_timeout_s
        self.heartbeat_ms = int(heartbeat_s * 1000)
        self.selector = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        self.runs: dict[str, _Run] = {}
        self.session_conn: _Conn | None = None  # where `done` goes
        self.spooled: _Conn | None = None  # the session's spool, continued over the socket
        self.start_info: dict[str, Any] = {}
        self.bye_at: float | None = None
        self.deadlines: dict[str, tuple[_Conn, int, float]] = {}
        # Embedded: batches of ended tests are kept as they came until needed (Kafka
        # wants its events as they happen).
        self.defer = backend is not None and backend.mode == "embedded"
        self.unread: list[tuple[_Conn, bytes]] = []

    # --- the loop -------------------------------------------------------------------

    def run(self, spool: Path | None, leftovers: list[Path]) -> int:
        if self.backend is not None and self.error is None:
            try:
                self.start_info = self.backend.start()
            except Exception as exc:
                self.error = _one_line(exc)
        if self.error is None:
            for path in leftovers:
                self._read_spool(path, leftover=True)
            if leftovers:
                self._guard(self.backend.settle)  # type: ignore[union-attr]  # counts for ready
            if spool is not None and spool.exists():
                self.spooled = self._read_spool(spool, leftover=False)
        if self.listener is None:  # landing a spool after its session: nothing to wait for
            return self._finish([*leftovers, spool] if spool else leftovers)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        started = time.monotonic()
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
            self._guard(self._housekeeping)
            if self._session_over():
                break
            idle = not self.conns and self.session_conn is None
            if idle and time.monotonic() - started > _IDLE_EXIT_S:
                return 1
        return self._finish([*leftovers, spool] if spool else leftovers)

    def _session_over(self) -> bool:
        if self.bye_at is None:
            return False
        workers = [c for c in self.conns if c.role == "worker" and not c.closed]
        return not workers or time.monotonic() - self.bye_at > _WORKERS_GONE_S

    def _read_spool(self, path: Path, *, leftover: bool) -> _Conn:
        conn = _Conn(None, authed=True)
        with open(path, "rb") as fh:
            for line in fh:
                if line.endswith(b"\n"):  # a last line cut short by a crash is dropped
                    self._guard(self._line, conn, line)
        if leftover:
            # Its session died: tests it had begun and not ended show as started, so the
            # core moves them when it finds the worker lost.
            for begin in list(conn.pending.values()):
                self._guard(self._started, conn, begin)
            run = self.runs.get(conn.run)
            if run is not None and not run.finished:
                ts = conn.last_ts or now_ms()  # when it was last heard of, not now
                self._session_record(conn.run, "finish", ts, "interrupted", None)
        return conn

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self.conns.append(conn)
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        assert conn.sock is not None
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
            line = bytes(conn.inbuf[: end + 1])
            del conn.inbuf[: end + 1]
            self._guard(self._line, conn, line)

    def _line(self, conn: _Conn, line: bytes) -> None:
        if self.defer and conn.sock is not None and conn.authed and line.startswith(BATCH_PREFIX):
            # Tests that ended without asking: read when something must be decided (an
            # ask, a heartbeat, the end), so a passing session costs the agent no CPU.
            self.unread.append((conn, line))
            conn.last_event_ms = now_ms()
            return
        self._read_unread()  # what came before this message, first
        message = json.loads(line)
        if not conn.authed:
            token = str(message.get("token", "")) if message.get("t") == "auth" else ""
            if not hmac.compare_digest(token, self.token):
                self._hang_up(conn)
                return
            conn.authed = True
            return
        if message.get("t") == "batch":
            for item in message["m"]:
                self._guard(self._handle, conn, item)
        else:
            self._handle(conn, message)

    def _read_unread(self) -> None:
        unread, self.unread = self.unread, []
        for conn, line in unread:
            for item in json.loads(line)["m"]:
                self._guard(self._handle, conn, item)

    def _send(self, conn: _Conn, message: dict[str, Any]) -> None:
        if conn.sock is None or conn.closed:
            return
        conn.out += _dumps(message)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.sock is None or conn.closed:
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
        if conn.sock is not None:
            self.selector.unregister(conn.sock)
            conn.sock.close()
        if conn is self.session_conn and self.bye_at is None:
            self.bye_at = time.monotonic()  # pytest went away without a bye: land what came

    def _guard(self, function: Any, *args: Any) -> None:
        """Run one step; a bug or a bad record is logged, never the end of the session."""
        try:
            function(*args)
        except Exception:
            traceback.print_exc()

    # --- messages ---------------------------------------------------------------------

    def _handle(self, conn: _Conn, message: dict[str, Any]) -> None:
        kind = message.get("t")
        conn.last_ts = max(conn.last_ts, int(message.get("te") or message.get("ts") or 0))
        if kind == "be":  # a test that began and ended between two pushes
            conn.pending[int(message["k"])] = message
            self._end(conn, message)
        elif kind == "b":
            conn.pending[int(message["k"])] = message
        elif kind == "e":
            self._end(conn, message)
        elif kind == "s":
            conn.pending.pop(int(message["k"]), None)
        elif kind == "q":
            self._quarantined(conn, message)
        elif kind == "hello":
            self._hello(conn, message)
        elif kind == "bye":
            self.runs.setdefault(conn.run, _Run()).bye = message
            if conn is self.session_conn:
                self.bye_at = time.monotonic()

    def _hello(self, conn: _Conn, message: dict[str, Any]) -> None:
        role = str(message.get("role"))
        if role == "spooled" and self.spooled is not None:
            # The session that spooled so far goes on over this socket.
            spooled = self.spooled
            role, conn.run = str(spooled.role), spooled.run
            conn.worker_id, conn.hardware_class = spooled.worker_id, spooled.hardware_class
            conn.pending = spooled.pending
        else:
            conn.run = str(message.get("run"))
            conn.worker_id = str(message.get("worker_id"))
            conn.hardware_class = str(message.get("hardware_class"))
        conn.role = role
        if role in _SESSION_ROLES and conn.sock is not None:
            self.session_conn = conn
        if conn.sock is not None:
            if self.error is not None:
                self._send(conn, {"t": "error", "message": self.error})
                return
            assert self.backend is not None
            circuits = self.backend.circuits()
            self._send(
                conn,
                {"t": "ready", "mode": self.backend.mode, "circuits": circuits, **self.start_info},
            )
        if role in _TEST_ROLES:
            conn.last_event_ms = now_ms()
            run = self.runs.setdefault(conn.run, _Run())
            if run.primary is None:
                run.primary = (conn.worker_id, conn.hardware_class)
                self._session_record(conn.run, "start", int(message.get("ts") or now_ms()))

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
        fields = self._fields(conn, kind, ts, {RUN: conn.run, TEST: str(begin["test"])})
        fields["task_id"] = begin["task_id"]
        fields["task_type"] = begin["task_type"]
        fields["attempt"] = int(begin["attempt"])
        fields["recovery_command_id"] = begin.get("cmd")
        return fields

    def _deliver(self, fields: dict[str, Any], ask: bool = False) -> dict[str, Any] | None:
        if self.backend is None or self.error is not None:
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
        ts = int(message["te"])
        if message.get("ok"):
            self._deliver(self._task_fields(conn, "SUCCESS", ts, begin))
            return
        fields = self._task_fields(conn, "FAILURE", ts, begin)
        fields["failure_type"] = message.get("ft")
        fields["message"] = message.get("msg")
        if message.get("exc"):
            fields["attributes"]["pytest.exception"] = str(message["exc"])
        ask = bool(message.get("ask")) and conn.sock is not None
        command = self._deliver(fields, ask)
        if not ask:
            return
        self._push_changes()  # before the answer: a circuit this failure opened stops a retry
        if command is not None or self.backend is None or self.backend.mode != "kafka":
            why = None if command is not None else "no recovery command"
            self._send(conn, {"t": "command", "k": key, "command": command, "why": why})
            return
        deadline = time.monotonic() + self.command_timeout_s
        self.deadlines[fields["event_id"]] = (conn, key, deadline)

    def _quarantined(self, conn: _Conn, message: dict[str, Any]) -> None:
        attributes = {
            RUN: conn.run,
            TEST: str(message["test"]),
            QUARANTINED: str(message["why"]),
            "pytest.task_type": str(message["task_type"]),
            "pytest.circuit_state": str(message["state"]),
            "pytest.quarantine": str(message["mode"]),
        }
        self._deliver(self._fields(conn, "HEARTBEAT", int(message["ts"]), attributes))

    def _session_record(
        self, run_id: str, phase: str, ts: int, exitstatus: str | None = None, tests: Any = None
    ) -> None:
        run = self.runs.get(run_id)
        if run is None or run.primary is None or run.finished:
            return
        attributes = {RUN: run_id, SESSION: phase}
        if phase == "finish":
            run.finished = True
            attributes["pytest.exitstatus"] = str(exitstatus)
            if tests is not None:
                attributes["pytest.tests"] = str(tests)
        worker_id, hardware_class = run.primary
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
        if backend is None or self.error is not None:
            return
        now = now_ms()
        due = any(
            not c.closed and c.role in _TEST_ROLES and now - c.last_event_ms >= self.heartbeat_ms
            for c in self.conns
        )
        if due or len(self.unread) >= _UNREAD_MAX or any(c.pending for c in self.conns):
            self._read_unread()  # before anything is added after them (or a long session)
        for conn in self.conns:
            if conn.closed or conn.role not in _TEST_ROLES:
                continue
            # A test announced and running longer than a heartbeat shows as started (a
            # crash then moves it); others are reported whole when they end.
            for begin in conn.pending.values():
                if not begin.get("sent") and now - int(begin["ts"]) >= self.heartbeat_ms:
                    self._guard(self._started, conn, begin)
            if now - conn.last_event_ms >= self.heartbeat_ms:
                fields = self._fields(conn, "HEARTBEAT", now, {RUN: conn.run})
                self._guard(self._deliver, fields)
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
        backend.land()

    def _push_changes(self) -> None:
        if self.backend is None or self.error is not None:
            return
        changes = self.backend.changes()
        if changes:
            for conn in self.conns:
                if conn.role in _TEST_ROLES:
                    for circuit in changes:
                        self._send(conn, {"t": "circuit", "circuit": circuit})

    def _finish(self, spools: list[Path]) -> int:
        working = self.backend is not None and self.error is None
        summary: dict[str, Any] = self.backend.summary() if working else {}  # type: ignore[union-attr]
        if self.unread:
            summary["later"] = True  # read, decided and written after this answer
        # Every question is answered: the session may end now. What follows (reading the
        # rest, recording) is this process's alone; the next session and `faultstream
        # report` wait for it (the history's lock).
        conn = self.session_conn
        if conn is not None and conn.sock is not None and not conn.closed:
            conn.out += _dumps({"t": "done", "summary": summary})
            conn.sock.setblocking(True)
            with contextlib.suppress(OSError):
                conn.sock.sendall(conn.out)
            conn.sock.close()
        with contextlib.suppress(OSError):
            os.nice(10)  # bookkeeping: yield to whatever runs next
        self._read_unread()
        for run_id, run in self.runs.items():
            bye = run.bye or {}
            status = str(bye.get("exitstatus", "interrupted"))
            self._session_record(run_id, "finish", now_ms(), status, bye.get("tests"))
        if not working:
            return 1
        landed = True
        try:
            self.backend.finish()  # type: ignore[union-attr]
        except Exception:
            traceback.print_exc()
            landed = False
        if getattr(self.backend, "record", True):
            for path in spools:
                # Landed: not again. Not landable: kept aside, not retried forever.
                with contextlib.suppress(OSError):
                    if landed:
                        path.unlink()
                    else:
                        path.rename(path.with_name(path.name + ".failed"))
        return 0 if landed else 1


def main(argv: list[str] | None = None) -> int:
    if os.fork():
        # Out of pytest's children at once: the session reaps this parent right away and
        # never waits for the writing the agent does after answering `done`.
        os._exit(0)
    # A Ctrl-C meant for pytest reaches its whole process group: the agent still records
    # what the session did (pytest hangs up, and that ends the session here).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="python -m faultstream.pytest_agent")
    parser.add_argument("--listen-fd", type=int, help="serve the session on this socket")
    parser.add_argument("--lock-fd", type=int, help="the history's lock, held for us")
    parser.add_argument("--spool", help="the session's spool so far")
    parser.add_argument("--leftover", action="append", default=[], help="a spool to land first")
    parser.add_argument("--mode", choices=["auto", "embedded", "kafka"], default="auto")
    parser.add_argument("--db", required=True)
    parser.add_argument("--config")
    parser.add_argument("--command-timeout", type=float, default=10.0)
    parser.add_argument("--circuits-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    listener = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None else None
    token = os.environ.get(TOKEN_ENV, "")
    backend: Backend | None = None
    error = None
    heartbeat_s = 10.0
    try:
        settings = None
        if args.mode == "kafka" or settings_given(args.config):
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
            record = args.lock_fd is not None
            backend = EmbeddedBackend(settings, Path(args.db), record=record)
    except Exception as exc:  # a FaultstreamError (bad settings) or worse: said in one line
        error = _one_line(exc)
    agent = Agent(listener, token, backend, error, args.command_timeout, heartbeat_s)
    spool = Path(args.spool) if args.spool else None
    return agent.run(spool, [Path(p) for p in args.leftover])


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and closed: skip the interpreter's teardown (DuckDB, Arrow).
    os._exit(code)
