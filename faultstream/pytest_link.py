"""The test process's side of the pytest plugin's agent: starting it, and talking to it.

The plugin (faultstream/pytest_plugin.py) hands everything that costs to an agent process
(faultstream/pytest_agent.py): validating events, the core, DuckDB, Kafka. Here is only
what the test process itself runs, standard library alone, so a passing suite pays for a
JSON line per test and a non-blocking send, while the agent works on another core.

The conversation is JSON lines over a local TCP socket (each message a dict with "t"):

- to the agent: `hello` (token, role, identity), `b` (a test began), `e` (it ended; a
  failure with `ask` wants the recovery command back), `s` (it skipped: forget it), `q`
  (it was quarantined), `bye` (the session is over);
- from the agent: `ready` (the circuits not CLOSED) or `error`, `circuit` (a change),
  `command` (the answer to an `ask`), `done` (the history is written).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TOKEN_ENV = "FAULTSTREAM_PYTEST_TOKEN"
MAX_ID_CHARS = 128  # task_id, task_type and worker_id (topics-and-schemas.md)
MAX_HARDWARE_CLASS_CHARS = 64
# Attribute keys of the plugin's events: what `faultstream report` reads back.
RUN = "pytest.run"
TEST = "pytest.test"
SESSION = "pytest.session"
QUARANTINED = "pytest.quarantined"
_READ_CHUNK = 1 << 16


class AgentError(Exception):
    """The agent refused (bad settings), died or did not answer; the message is one line."""


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


def start_agent(arguments: list[str], log_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the agent on a listening socket made here and passed down, so this process
    can connect at once instead of waiting for the agent's interpreter to start. Returns
    the address ("127.0.0.1:PORT") and the process."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "faultstream.pytest_agent",
                    "--listen-fd",
                    str(listener.fileno()),
                    *arguments,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(listener.fileno(),),
                env=os.environ.copy(),
            )
    finally:
        listener.close()
    return f"127.0.0.1:{port}", process


def last_line(path: Path) -> str:
    """The last non-empty line of the agent's log: what it said before it died."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class Link:
    """One connection to the agent. Messages are buffered; a daemon thread pushes them
    every PUSH_EVERY_S without blocking (a send per test would cost a syscall and a wake
    of the agent each), and `flush`, `wait` and `ask` push at once. Replies and circuit
    changes are read only when the plugin asks, so nothing runs behind the tests' back."""

    PUSH_EVERY_S = 0.25

    def __init__(self, address: str, token: str, hello: dict[str, Any]) -> None:
        host, _, port = address.rpartition(":")
        self._sock = socket.create_connection((host, int(port)), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.setblocking(False)
        self._out = bytearray()
        self._out_lock = threading.Lock()  # the pusher thread sends from the same buffer
        self._in = bytearray()
        self.closed = False
        self.ready: dict[str, Any] | None = None
        self.error: str | None = None
        self.done: dict[str, Any] | None = None
        self.replies: dict[int, dict[str, Any]] = {}
        self.on_circuit: Callable[[dict[str, Any]], None] | None = None
        self.send({"t": "hello", "token": token, **hello}, flush=True)
        self._stop = threading.Event()
        self._pusher = threading.Thread(target=self._push_often, name="faultstream", daemon=True)
        self._pusher.start()

    # --- sending ---------------------------------------------------------------------

    def send(self, message: dict[str, Any], *, flush: bool = False) -> None:
        line = json.dumps(message, separators=(",", ":")).encode("utf-8", "surrogatepass")
        with self._out_lock:
            self._out += line
            self._out += b"\n"
            if flush or len(self._out) > _READ_CHUNK:
                self._push()

    def push(self) -> None:
        """Send what the kernel takes now; keep the rest for the next push."""
        with self._out_lock:
            self._push()

    def _push(self) -> None:
        if not self._out or self.closed:
            return
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        del self._out[:sent]

    def _push_often(self) -> None:
        while not self._stop.wait(self.PUSH_EVERY_S):
            if self._out:
                self.push()

    # --- receiving -------------------------------------------------------------------

    def poll(self) -> None:
        """Read and handle whatever the agent has sent, without waiting."""
        if self.closed:
            return
        while True:
            try:
                chunk = self._sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._lost()
                break
            if not chunk:
                self._lost()
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
            if self.closed or remaining <= 0:
                return False
            writing = [self._sock] if self._out else []
            try:
                select.select([self._sock], writing, [], min(remaining, 1.0))
            except (OSError, ValueError):
                self._lost()

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        if not self.wait(lambda: self.ready is not None or self.error is not None, timeout_s):
            raise AgentError("the agent did not answer" if not self.closed else "the agent died")
        if self.error is not None:
            raise AgentError(self.error)
        assert self.ready is not None
        return self.ready

    def ask(self, key: int, timeout_s: float) -> dict[str, Any] | None:
        """The agent's reply to message `key` (an `e` with `ask`), or None."""
        self.wait(lambda: key in self.replies, timeout_s)
        return self.replies.pop(key, None)

    def _lost(self) -> None:
        self.closed = True

    def close(self) -> None:
        self._stop.set()
        if not self.closed:
            self.wait(lambda: not self._out, 5.0)
        self.closed = True
        self._sock.close()
