"""The HTTP API of the read side (CONTRACT.md), a Starlette app served by uvicorn.

    GET /api/circuit-breakers         the fleet's circuits and health (the seed's shape)
    GET /api/circuits/{kind}/{id}     one circuit: state, health, totals, the core's newest
                                      figures of it, its transitions
    GET /api/checkpoints/{task_id}    a task's newest checkpoint, state in base64
    GET /api/alerts                   the newest alerts (404 in a history without alerts)
    GET /healthz                      the process answers
    GET /readyz                       the history opens (and, in the projector, its lag)
    GET /metrics                      Prometheus
    GET /openapi.json                 this list, as OpenAPI 3.1

`faultstream api` serves it from a DuckDB file or read models, the projector from its own
read models. Answers come from a `History`. Every answer but /metrics is JSON, errors
included (`{"error": ...}`: 400 for a malformed request, 404, 405 for another method, 501
for an unknown one, 500, 503 while the history cannot be read); no stack trace reaches a
client. HEAD answers as GET without the body. It listens on 127.0.0.1 unless told
otherwise, with a deep listen backlog (the seed's 5 made a burst of 200 clients wait for
SYN retransmits: p99 1.2 s).
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faultstream.events.exceptions import FaultstreamError
from faultstream.metrics import CONTENT_TYPE, circuits_registry, exposition

from . import metrics
from .queries import History

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# The listen backlog (uvicorn's default); the kernel caps it at net.core.somaxconn.
BACKLOG = 2048
ALLOWED_METHODS = "GET, HEAD"
# Methods HTTP defines: another one on a known path is 405, one outside these 501.
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
CIRCUIT_SECTIONS = {"worker": "workers", "hardware_class": "hardware_classes",
                    "task_type": "task_types"}  # fmt: skip
TRANSITIONS_SHOWN = 100  # a circuit's newest transitions in /api/circuits/{kind}/{id}
ALERTS_LIMIT = (100, 10_000)  # default and largest ?limit= of /api/alerts
JSON_TYPE = "application/json"
# For /readyz: whether the process behind the history is current enough, and its figures
# (the projector's lag); None when there is only the history.
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- the documents --------------------------------------------------------------------------


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


# What /api/circuits/{kind}/{id} adds from the circuit's newest circuit_figures record (the
# rest of it is already in the entry, or identifies the record).
_FIGURES_SHOWN = ("ts", "consecutive_failures", "half_open_successes", "trips", "total_trips",
                  "hardware_class", "live", "available", "workers", "live_workers",
                  "available_workers", "caused_by")  # fmt: skip


def circuit_document(history: History, kind: str, circuit_id: str) -> dict[str, Any]:
    """One circuit as /api/circuit-breakers shows it, with the rest of the core's newest
    figures of it (`figures`: as of `figures.ts`, the TICK that published them; the kind's
    fields only) and its newest transitions."""
    section = CIRCUIT_SECTIONS.get(kind)
    if section is None:
        kinds = ", ".join(CIRCUIT_SECTIONS)
        raise ApiError(HTTPStatus.NOT_FOUND, f"no circuit kind {kind!r} (one of {kinds})")
    fleet = history.circuit_breakers()
    entry = fleet[section].get(circuit_id)
    if entry is None:
        raise ApiError(HTTPStatus.NOT_FOUND, f"no {kind} circuit {circuit_id!r}")
    row = history.circuit_figures(kind, circuit_id) or {}
    figures = {k: row[k] for k in _FIGURES_SHOWN if row.get(k) is not None}
    # History has no per-circuit query: its locked connection, as its own methods use it.
    rows = history._rows(
        "SELECT * EXCLUDE (circuit_kind, circuit_id) FROM circuit_transitions "
        "WHERE circuit_kind = ? AND circuit_id = ? ORDER BY ts DESC, event_id DESC LIMIT ?",
        [kind, circuit_id, TRANSITIONS_SHOWN],
    )
    return {
        "timestamp": fleet["timestamp"],
        "kind": kind,
        "id": circuit_id,
        **entry,
        "figures": figures,
        "transitions": rows[::-1],  # oldest first, as they happened
    }


def alerts_document(history: History, limit: int) -> dict[str, Any]:
    """The newest `limit` alerts, newest first; 404 when the history has no alerts table
    (histories written before alerts existed)."""
    (found,) = history._rows(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'alerts'"
    )
    if not found["n"]:
        raise ApiError(HTTPStatus.NOT_FOUND, "no alerts in this history")
    rows = history._rows("SELECT * FROM alerts ORDER BY ts DESC LIMIT ?", [limit])
    return {"alerts": rows}


# --- OpenAPI --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One route, as the app serves it and as /openapi.json describes it."""

    path: str
    name: str
    summary: str
    responses: dict[int, str]
    parameters: list[dict[str, Any]] = field(default_factory=list)
    content_type: str = JSON_TYPE


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}  # fmt: skip


SPECS = [
    Spec("/api/circuit-breakers", "circuit_breakers",
         "Every circuit's state and health, and the fleet aggregate",
         {200: "timestamp, aggregate, workers, hardware_classes, task_types",
          503: "the history cannot be read"}),
    Spec("/api/circuits/{kind}/{id}", "circuit",
         "One circuit: state, health, totals, the core's newest figures of it and its "
         "newest transitions",
         {200: "the circuit", 404: "no such kind or circuit", 503: "the history cannot be read"},
         [_path_parameter("kind", "worker, hardware_class or task_type"),
          _path_parameter("id", "the worker id, hardware class or task type")]),
    Spec("/api/checkpoints/{task_id}", "checkpoint",
         "A task's newest checkpoint (state in base64)",
         {200: "the checkpoint", 404: "the task has none", 503: "the history cannot be read"},
         [_path_parameter("task_id", "the task")]),
    Spec("/api/alerts", "alerts", "The newest alerts, newest first",
         {200: "{alerts: [...]}", 400: "a bad limit", 404: "this history has no alerts",
          503: "the history cannot be read"},
         [{"name": "limit", "in": "query", "required": False,
           "description": f"how many (default {ALERTS_LIMIT[0]}, at most {ALERTS_LIMIT[1]})",
           "schema": {"type": "integer", "minimum": 1, "maximum": ALERTS_LIMIT[1]}}]),
    Spec("/healthz", "healthz", "The process answers", {200: "{status: ok}"}),
    Spec("/readyz", "readyz", "The history opens and, in the projector, its lag is small",
         {200: "ready, with the figures", 503: "not ready, with the reason"}),
    Spec("/metrics", "metrics", "Prometheus metrics", {200: "the text exposition format"},
         content_type="text/plain"),
    Spec("/openapi.json", "openapi", "This description", {200: "OpenAPI 3.1"}),
]  # fmt: skip


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for spec in SPECS:
        responses = {
            str(status): {
                "description": text,
                "content": {
                    spec.content_type if status < 400 else JSON_TYPE: {"schema": {"type": "object"}}
                },
            }
            for status, text in spec.responses.items()
        }
        responses.setdefault("405", {"description": "another method: the API is read-only"})
        operation = {"operationId": spec.name, "summary": spec.summary, "responses": responses}
        if spec.parameters:
            operation["parameters"] = spec.parameters
        paths[spec.path] = {"get": operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": "faultstream", "version": _version(), "description":
                 "The read side of faultstream: circuits, checkpoints, alerts, health."},
        "paths": paths,
    }  # fmt: skip


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("faultstream")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- the app --------------------------------------------------------------------------------


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(body), status, headers, media_type=JSON_TYPE)


def _encode(body: Any) -> bytes:
    return json.dumps(body, default=_jsonable).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


class _Endpoints:
    """The route handlers over one history. Queries run in Starlette's thread pool: DuckDB
    blocks, and the event loop must keep answering /healthz meanwhile."""

    def __init__(self, history: History, readiness: Readiness | None) -> None:
        self.history = history
        self.readiness = readiness
        self.registry = circuits_registry(history.circuit_breakers)
        self._fleet: tuple[Any, bytes] | None = None  # the cached document, encoded

    async def circuit_breakers(self, request: Request) -> Response:
        return Response(await run_in_threadpool(self._fleet_body), media_type=JSON_TYPE)

    def _fleet_body(self) -> bytes:
        # The History caches the document until the read models change; encode it once too.
        document = self.history.circuit_breakers()
        cached = self._fleet
        if cached is None or cached[0] is not document:
            cached = self._fleet = (document, _encode(document))
        return cached[1]

    async def circuit(self, request: Request) -> Response:
        kind, circuit_id = request.path_params["kind"], request.path_params["id"]
        return json_response(
            await run_in_threadpool(circuit_document, self.history, kind, circuit_id)
        )

    async def checkpoint(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        row = await run_in_threadpool(self.history.checkpoint, task_id)
        if row is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no checkpoint for task {task_id!r}")
        return json_response(checkpoint_document(row))

    async def alerts(self, request: Request) -> Response:
        raw = request.query_params.get("limit", str(ALERTS_LIMIT[0]))
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= ALERTS_LIMIT[1]:
            message = f"limit: {raw!r} is not a whole number from 1 to {ALERTS_LIMIT[1]}"
            raise ApiError(HTTPStatus.BAD_REQUEST, message)
        return json_response(await run_in_threadpool(alerts_document, self.history, limit))

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            now = await run_in_threadpool(self.history.now)
        except Exception as exc:
            reason = f"history unavailable: {_one_line(exc)}"
            return json_response({"status": "unavailable", "error": reason}, 503)
        body: dict[str, Any] = {"status": "ready", "history": {"timestamp": now}}
        if self.readiness is not None:
            ready, figures = self.readiness()
            body["projector"] = figures
            if not ready:
                reason = figures.get("reason", "projector not ready")
                return json_response({**body, "status": "unavailable", "error": reason}, 503)
        return json_response(body)

    async def metrics(self, request: Request) -> Response:
        body = await run_in_threadpool(exposition, self.registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())


def _guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
    """Every failure as a JSON answer, here rather than in the server's log as a crash."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return json_response({"error": str(exc)}, exc.status)
        except FaultstreamError as exc:  # the read models missing, a history that will not open
            return json_response({"error": _one_line(exc)}, HTTPStatus.SERVICE_UNAVAILABLE)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return json_response({"error": "internal error"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    endpoint.__name__ = handler.__name__
    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method) in JSON."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        message = f"method {request.method} not allowed: the API is read-only (GET)"
        return json_response({"error": message}, 405, {"Allow": ALLOWED_METHODS})
    if exc.status_code == HTTPStatus.NOT_FOUND:
        return json_response({"error": f"no such resource: {request.url.path}"}, 404)
    return json_response({"error": exc.detail}, exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The last resort; the endpoints catch their own failures.
    return json_response({"error": "internal error"}, HTTPStatus.INTERNAL_SERVER_ERROR)


class _Edge:
    """The outer edge of the app: an unknown method is 501 before routing, and every
    request is counted and timed by route template (bounded label values)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = HTTPStatus.INTERNAL_SERVER_ERROR.value

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            method = scope["method"]
            if method in HTTP_METHODS:
                await self.app(scope, receive, send_status)
            else:
                message = f"method {method} not implemented: the API is read-only (GET)"
                response = json_response({"error": message}, HTTPStatus.NOT_IMPLEMENTED)
                await response(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            metrics.API_REQUESTS.labels(label, str(status)).inc()
            metrics.API_LATENCY.labels(label).observe(time.perf_counter() - started)


def create_app(history: History, readiness: Readiness | None = None) -> Starlette:
    """The API over `history`; `readiness` adds the projector's lag to /readyz."""
    endpoints = _Endpoints(history, readiness)
    routes = [
        Route(spec.path, _guarded(getattr(endpoints, spec.name)), methods=["GET"], name=spec.name)
        for spec in SPECS
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Edge)],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    # /api/circuit-breakers/ is a 404 like any other unknown path, not a redirect.
    app.router.redirect_slashes = False
    return app


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- the server -----------------------------------------------------------------------------


def _protocol() -> type:
    """uvicorn's HTTP/1.1 protocol (httptools when installed, as its "auto"), with its
    answer to a malformed request in JSON like every other."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class JsonErrorsProtocol(base):  # type: ignore[valid-type, misc]
        def send_400_response(self, msg: str) -> None:
            body = _encode({"error": f"bad request: {msg}"})
            head = (
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
            self.transport.close()

    return JsonErrorsProtocol


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (OSError now, in the caller's thread, if it cannot be)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As every server does: a port left in TIME_WAIT by a stopped one can be reused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class ApiServer:
    """uvicorn serving `create_app(history, readiness)` in a background thread until
    `close()`. The socket is bound in the constructor, so a busy port or a bad address is
    an OSError for the caller to say in one line."""

    def __init__(
        self,
        history: History,
        host: str = DEFAULT_HOST,
        port: int = 8765,
        *,
        readiness: Readiness | None = None,
    ) -> None:
        self.app = create_app(history, readiness)
        self.socket = listen_socket(host, port)
        self._address = self.socket.getsockname()  # still known once closed
        self.config = uvicorn.Config(
            self.app,
            http=_protocol(),
            ws="none",
            lifespan="off",
            backlog=BACKLOG,
            # Our logging stays as the command set it up; requests are counted in /metrics
            # rather than logged one line each.
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(self.config)
        # uvicorn's start and stop lines say what the command says already; its warnings stay.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="faultstream-api",
            daemon=True,
        )  # fmt: skip

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        return self._address[1]

    def start(self, timeout_s: float = 30.0) -> ApiServer:
        """Serve, and return once the server listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise FaultstreamError(f"the HTTP API on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.socket.close()
