"""The projector's HTTP API (CONTRACT.md), on the standard library's http.server.

    GET /api/circuit-breakers        the fleet's circuits and health
    GET /api/checkpoints/{task_id}   a task's newest checkpoint, state in base64

Answers come from a `History` over the projector's own read models. Every answer is JSON,
errors included (`{"error": ...}` with the right status: 404, 405 for another method, 500,
and the 400/414/501 the standard library raises for a malformed request); no stack trace
ever reaches a client. It listens on 127.0.0.1 unless told otherwise, one thread a request.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from .queries import History
from .read_models import ReadModelsMissingError

log = logging.getLogger(__name__)
CHECKPOINTS_PREFIX = "/api/checkpoints/"
DEFAULT_HOST = "127.0.0.1"
# The listen backlog: socketserver's default of 5 made connections beyond it wait for SYN
# retransmits (p99 1.2 s at 200 parallel requests). The kernel caps it at somaxconn.
REQUEST_QUEUE_SIZE = 1024
ALLOWED_METHODS = "GET, HEAD"
_MAX_DISCARDED_BODY = 1 << 20  # a refused request's body is read (and dropped) up to this


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def checkpoint_document(row: dict[str, Any]) -> dict[str, Any]:
    state = row.get("checkpoint_state")
    return {
        "task_id": row["task_id"],
        "event_id": row["event_id"],
        "ts": row["ts"],
        "worker_id": row["worker_id"],
        "hardware_class": row["hardware_class"],
        "task_type": row["task_type"],
        "checkpoint_seq": row["checkpoint_seq"],
        "checkpoint_state": None if state is None else base64.b64encode(state).decode(),
    }


def route(history: History, path: str) -> dict[str, Any]:
    """The JSON document for a GET of `path`; ApiError for anything else."""
    path = urlsplit(path).path
    try:
        if path == "/api/circuit-breakers":
            return history.circuit_breakers()
        if path.startswith(CHECKPOINTS_PREFIX):
            task_id = unquote(path[len(CHECKPOINTS_PREFIX) :])
            if not task_id or "/" in task_id:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such resource: {path}")
            row = history.checkpoint(task_id)
            if row is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no checkpoint for task {task_id!r}")
            return checkpoint_document(row)
    except ReadModelsMissingError as exc:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
    raise ApiError(HTTPStatus.NOT_FOUND, f"no such resource: {path}")


def _handler(history: History) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "faultstream"

        def do_GET(self) -> None:
            self._answer()

        def do_HEAD(self) -> None:
            self._answer()

        def _answer(self) -> None:
            try:
                status, body = HTTPStatus.OK, route(history, self.path)
            except ApiError as exc:
                status, body = exc.status, {"error": str(exc)}
            except Exception:
                log.exception("%s %s failed", self.command, self.path)
                status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}
            self._send(status, body)

        def _not_allowed(self) -> None:
            self._discard_body()
            self._send(
                HTTPStatus.METHOD_NOT_ALLOWED,
                {"error": f"method {self.command} not allowed: the API is read-only (GET)"},
                {"Allow": ALLOWED_METHODS},
            )

        do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            # The standard library's own errors (bad request line, unknown method, ...)
            # would be an HTML page: the same JSON as every other answer instead.
            try:
                status = HTTPStatus(code)
            except ValueError:
                status = HTTPStatus.INTERNAL_SERVER_ERROR
            self.log_error("code %d, message %s", code, message)
            self.close_connection = True
            self._send(status, {"error": message or status.phrase}, {"Connection": "close"})

        def _discard_body(self) -> None:
            """Read a refused request's body, so closing the socket does not reset the
            connection before the client has read the answer."""
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = 0
            if 0 < length <= _MAX_DISCARDED_BODY:
                self.rfile.read(length)
            elif length:
                self.close_connection = True

        def _send(
            self, status: HTTPStatus, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = REQUEST_QUEUE_SIZE
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is routine: a debug line, not a traceback
        # on the projector's stderr.
        log.debug("request from %s failed", client_address, exc_info=True)


class ApiServer:
    """Serves the API in a background thread until `close()`."""

    def __init__(self, history: History, host: str = DEFAULT_HOST, port: int = 8765) -> None:
        self.httpd = _Server((host, port), _handler(history))
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="faultstream-api", daemon=True
        )

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
