"""The projector's HTTP API (CONTRACT.md), on the standard library's http.server.

    GET /api/circuit-breakers        the fleet's circuits and health
    GET /api/checkpoints/{task_id}   a task's newest checkpoint, state in base64

Answers come from a `History` over the projector's own read models. Every error is a JSON
object `{"error": ...}` with the right status; no stack trace ever reaches a client.
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
            try:
                self._send(HTTPStatus.OK, route(history, self.path))
            except ApiError as exc:
                self._send(exc.status, {"error": str(exc)})
            except Exception:
                log.exception("GET %s failed", self.path)
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class ApiServer:
    """Serves the API in a background thread until `close()`."""

    def __init__(self, history: History, host: str = "0.0.0.0", port: int = 8765) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _handler(history))
        self.httpd.daemon_threads = True
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
