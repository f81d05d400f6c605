"""The test process's side of the pytest plugin: its messages, the history's lock, the agent.

The plugin (faultstream/pytest_plugin.py) leaves everything that costs to an agent process
(faultstream/pytest_agent.py): validating events, the core, DuckDB, Kafka. Here is what
the test process itself runs, standard library alone, so that a passing test costs an
append to a list. Messages (dicts with "t") pile up and a daemon thread writes them every
PUSH_EVERY_S as JSON lines (the tests that simply ended, together on one `batch` line) to
one of two sinks:

- a **spool file** (`<db>.spool/<run>.jsonl`), while no agent runs: the embedded mode
  with the default settings starts none for a passing session. When the session ends,
  an agent lands the spool into the history after pytest is gone; should pytest die, the
  next session lands it. The circuits it starts from are read from `<db>.circuits.json`,
  which the last agent left.
- the **agent's socket**, once an agent runs: from the session's start when it must check
  settings, use Kafka, replay the history or serve xdist workers; else from the first
  failure, whose recovery command must be asked (the spool so far is handed over first).

Messages to the agent: `auth` (the token, on a socket), `hello` (identity), `b` (a test
began; sent only for a test still running after ANNOUNCE_AFTER_S), `be`/`e` (it ended:
ok, or a failure that may `ask` for its command), `s` (it skipped after being announced),
`q` (it was quarantined), `bye`.
From the agent: `ready` (the circuits not CLOSED) or `error`, `circuit` (a change),
`command` (the answer to an `ask`), `done` (every decision is made).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TOKEN_ENV = "FAULTSTREAM_PYTEST_TOKEN"
STATE_VERSION = 1
MAX_ID_CHARS = 128  # task_id, task_type and worker_id (topics-and-schemas.md)
MAX_HARDWARE_CLASS_CHARS = 64
# Attribute keys of the plugin's events: what `faultstream report` reads back.
RUN = "pytest.run"
TEST = "pytest.test"
SESSION = "pytest.session"
QUARANTINED = "pytest.quarantined"
_READ_CHUNK = 1 << 16
_LOG_MAX_BYTES = 1 << 20
_encode_json = json.JSONEncoder(separators=(",", ":")).encode  # ASCII: escapes the rest


def fit(text: str, limit: int = MAX_ID_CHARS) -> str:
    """`text` if it fits a field of `limit` characters, else its head and a hash of the
    whole: stable from run to run, so a long node id keeps its circuit."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[: limit - 17]}~{digest}"


def new_run_id() -> str:
    """Sortable by start time, unique: 20251205T021000Z-3fa2c1."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    """Epoch milliseconds as 2025-12-05T02:10:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


BATCH_PREFIX = b'{"t":"batch"'


def encode(messages: list[dict[str, Any]]) -> bytes:
    """JSON lines: the tests that ended without asking anything go together in a `batch`
    line (which an agent may keep unread until it must decide); every other message, an
    `ask` above all, on a line of its own, in order."""
    lines: list[str] = []
    batch: list[dict[str, Any]] = []
    for message in messages:
        if message.get("t") in ("be", "e") and not message.get("ask"):
            batch.append(message)
            continue
        if batch:
            lines.append(_encode_json({"t": "batch", "m": batch}))
            batch = []
        lines.append(_encode_json(message))
    if batch:
        lines.append(_encode_json({"t": "batch", "m": batch}))
    return ("\n".join(lines) + "\n").encode("ascii")


# The plugin's own variables; any other FAULTSTREAM_ variable may be a setting, and has
# the settings read (and checked) before the first test.
NOT_SETTINGS = frozenset(
    {"FAULTSTREAM_HARDWARE_CLASS", "FAULTSTREAM_WORKER_ID", TOKEN_ENV, "FAULTSTREAM_DEBUG"}
)


def settings_given(config: str | None) -> bool:
    """Whether anything but the defaults could apply: a file, or a FAULTSTREAM_ variable."""
    if config or os.environ.get("FAULTSTREAM_CONFIG") or Path("faultstream.toml").is_file():
        return True
    names = (name.upper() for name in os.environ)
    return any(name.startswith("FAULTSTREAM_") and name not in NOT_SETTINGS for name in names)


# --- the files beside the history -----------------------------------------------------


def sibling(db: Path, suffix: str) -> Path:
    """`history.duckdb` + `.lock`, `.state`, `.circuits.json`, `.spool`, `.agent.log`."""
    return db.with_name(db.name + suffix)


def db_stamp(db: Path) -> list[int] | None:
    """What says the history file changed: its size and modification time."""
    try:
        stat = db.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def read_circuits(db: Path) -> list[dict[str, Any]] | None:
    """The circuits not CLOSED as the last session left them, when that describes the
    history as it is now (same stamp, nothing in a WAL, nothing left to land); None when
    only a replay of the history can tell (the agent's job)."""
    if not db.exists():
        return [] if not leftover_spools(db) else None
    try:
        data = json.loads(sibling(db, ".circuits.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return None
    if data.get("db") != db_stamp(db) or sibling(db, ".wal").exists() or leftover_spools(db):
        return None
    return list(data.get("circuits", []))


def leftover_spools(db: Path) -> list[Path]:
    """Spools no agent landed (their pytest or agent died): landed by the next agent."""
    folder = sibling(db, ".spool")
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


class HistoryLock:
    """An exclusive `flock` on `<db>.lock`: one session at a time records into the history.
    The session takes it and hands it to its agent (the descriptor is inherited), so it is
    held until the history is written, however long after pytest that is; the kernel drops
    it when the last holder exits, however it exits. (events/locks.py's FileLock does the
    same but imports pydantic, which the test process must not pay for.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self, timeout_s: float, note: str = "pytest --faultstream") -> str | None:
        """None once held; after `timeout_s`, who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the lock's life)
        give_up = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= give_up:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    fh.close()
                    return holder
                time.sleep(0.01)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} ({note})\n")
        fh.flush()
        self._file = fh
        return None

    def fileno(self) -> int:
        assert self._file is not None
        return self._file.fileno()

    def release(self) -> None:
        """This process's hold (an agent that inherited it keeps it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def start_agent(
    arguments: list[str], log_path: Path, *, listen: bool, keep_fds: tuple[int, ...] = ()
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the agent. With `listen`, on a listening socket made here and passed down, so
    this process can connect at once instead of waiting for the agent's interpreter to
    start; returns its address ("127.0.0.1:PORT") and the process."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM) if listen else None
    try:
        fds = keep_fds
        address = ""
        if listener is not None:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            address = f"127.0.0.1:{listener.getsockname()[1]}"
            arguments = ["--listen-fd", str(listener.fileno()), *arguments]
            fds = (*fds, listener.fileno())
        command = [sys.executable, "-m", "faultstream.pytest_agent", *arguments]
        nice = shutil.which("nice")
        if not listen and nice:  # only landing what a finished session spooled: no hurry
            command = [nice, "-n", "10", *command]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        big = log_path.exists() and log_path.stat().st_size > _LOG_MAX_BYTES
        with open(log_path, "wb" if big else "ab") as log:  # the agents' errors, recent ones
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=fds,
            )
    finally:
        if listener is not None:
            listener.close()
    return address, process


def last_line(path: Path) -> str:
    """The last non-empty line of the agent's log: what it said before it died."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class AgentError(Exception):
    """The agent refused (bad settings), died or did not answer; the message is one line."""


class Link:
    """The session's messages to the agent, and its answers.

    The test process appends (`send`, `begin`, `end`); a daemon thread encodes what piled
    up every PUSH_EVERY_S and writes it to the spool or the socket. Replies and circuit
    changes are read only when the plugin asks (`poll`, `wait`, `ask`), so nothing runs
    behind the tests' back. A test is one message when it ends; one still running after
    ANNOUNCE_AFTER_S is announced (`b`), so the agent can tell it started and move it
    should its process die."""

    PUSH_EVERY_S = 0.25
    ANNOUNCE_AFTER_S = 1.0

    def __init__(
        self,
        hello: dict[str, Any],
        *,
        spool: Path | None = None,
        address: str | None = None,
        token: str = "",
        start: Callable[[Path | None], tuple[str, str]] | None = None,
    ) -> None:
        """Either `address` (an agent runs), or `spool` (none yet: `start(spool)` starts
        one when an answer is needed and returns its address and token)."""
        self._lock = threading.Lock()  # the queue, and whatever the pusher writes to
        self._queue: list[dict[str, Any]] = [hello]
        self._running: list[Any] | None = None  # [begin message, monotonic start, announced]
        self.spool_path = spool
        self._spool: IO[bytes] | None = None
        self._start = start
        self._sock: socket.socket | None = None
        self._out = bytearray()
        self._in = bytearray()
        self.token = token
        self.closed = False
        self.ready: dict[str, Any] | None = None
        self.error: str | None = None
        self.done: dict[str, Any] | None = None
        self.replies: dict[int, dict[str, Any]] = {}
        self.on_circuit: Callable[[dict[str, Any]], None] | None = None
        if address is not None:
            self._connect(address)
        else:
            assert spool is not None
            spool.parent.mkdir(parents=True, exist_ok=True)
            self._spool = open(spool, "ab")  # noqa: SIM115 (closed by close/connect)
        self._stop = threading.Event()
        self._pusher = threading.Thread(target=self._push_often, name="faultstream", daemon=True)
        self._pusher.start()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # --- the test process's side --------------------------------------------------------

    def send(self, message: dict[str, Any], *, flush: bool = False) -> None:
        with self._lock:
            self._queue.append(message)
        if flush:
            self.push()

    def begin(self, message: dict[str, Any]) -> None:
        """A test begins (`b`): kept, and sent only should it run long."""
        self._running = [message, time.monotonic(), False]

    def end(self, key: int, ts: int, fields: dict[str, Any] | None = None) -> None:
        """The running test ended: its begin message becomes `be` (or, announced, an `e`
        follows it), with `ok` or the failure's `fields`."""
        with self._lock:
            running, self._running = self._running, None
            if running is not None and not running[2]:
                message = running[0]
                message["t"] = "be"
            else:
                message = {"t": "e", "k": key}
            message["te"] = ts
            if fields is None:
                message["ok"] = True
            else:
                message.update(fields)
            self._queue.append(message)

    def forget(self, key: int) -> None:
        """The running test did not run after all (skipped): nothing, unless announced."""
        with self._lock:
            running, self._running = self._running, None
            if running is not None and running[2]:
                self._queue.append({"t": "s", "k": key})

    # --- writing ------------------------------------------------------------------------

    def _push_often(self) -> None:
        while not self._stop.wait(self.PUSH_EVERY_S):
            running = self._running
            long = running is not None and time.monotonic() - running[1] >= self.ANNOUNCE_AFTER_S
            if long and not running[2]:  # type: ignore[index]
                with self._lock:
                    if self._running is running:  # still the same test, under the lock
                        running[2] = True  # type: ignore[index]
                        self._queue.append(dict(running[0]))  # type: ignore[index]
            self.push()

    def push(self) -> None:
        """Encode what piled up and write it: to the spool, or what the socket takes now
        (the rest on the next push)."""
        with self._lock:
            if self._queue:
                batch, self._queue = self._queue, []
                line = encode(batch)
                if self._spool is not None:
                    self._spool.write(line)
                    self._spool.flush()  # should pytest die, the next session lands it
                else:
                    self._out += line
            if self._sock is not None and self._out and not self.closed:
                try:
                    sent = self._sock.send(self._out)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self.closed = True
                    return
                del self._out[:sent]

    def connect(self) -> None:
        """Have an agent answer from now on: start it on the spool so far."""
        if self._sock is not None or self.closed:
            return
        assert self._start is not None
        self.push()
        with self._lock:
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            # Its hello opened the spool; the socket gets a hello of its own.
            hello = {"t": "hello", "role": "spooled"}
        try:
            address, self.token = self._start(self.spool_path)
            self._connect(address)
        except OSError:  # no agent: the spool is landed by the next session
            self.closed = True
            return
        self.send(hello, flush=True)

    def _connect(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        with self._lock:
            self._out += (_encode_json({"t": "auth", "token": self.token}) + "\n").encode()
            self._sock = sock

    # --- reading ------------------------------------------------------------------------

    def poll(self) -> None:
        """Read and handle whatever the agent has sent, without waiting."""
        if self._sock is None or self.closed:
            return
        while True:
            try:
                chunk = self._sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self._in += chunk
        while (end := self._in.find(b"\n")) >= 0:
            line = bytes(self._in[:end])
            del self._in[: end + 1]
            self._handle(json.loads(line))

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "ready":
            self.ready = message
        elif kind == "error":
            self.error = str(message.get("message"))
        elif kind == "circuit":
            if self.on_circuit is not None:
                self.on_circuit(message["circuit"])
        elif kind == "command":
            self.replies[int(message["k"])] = message
        elif kind == "done":
            self.done = message

    def wait(self, until: Callable[[], bool], timeout_s: float) -> bool:
        """Push and read until `until()` holds (True), the agent is gone or the time is up
        (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.push()
            self.poll()
            if until():
                return True
            remaining = deadline - time.monotonic()
            if self._sock is None or self.closed or remaining <= 0:
                return False
            writing = [self._sock] if self._out else []
            try:
                select.select([self._sock], writing, [], min(remaining, 1.0))
            except (OSError, ValueError):
                self.closed = True

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        if not self.wait(lambda: self.ready is not None or self.error is not None, timeout_s):
            raise AgentError("the agent died" if self.closed else "the agent did not answer")
        if self.error is not None:
            raise AgentError(self.error)
        assert self.ready is not None
        return self.ready

    def ask(self, key: int, timeout_s: float) -> dict[str, Any] | None:
        """The agent's reply to message `key` (an `e` with `ask`), or None."""
        self.connect()
        self.wait(lambda: key in self.replies, timeout_s)
        return self.replies.pop(key, None)

    def close(self) -> None:
        """Stop the pusher and write the rest (to the agent: as much as it takes in 5 s)."""
        self._stop.set()
        self._pusher.join(timeout=5)
        self.push()
        if self._sock is not None:
            if not self.closed:
                self.wait(lambda: not self._out, 5.0)
            self._sock.close()
        with self._lock:
            if self._spool is not None:
                self._spool.close()
                self._spool = None
        self.closed = True
