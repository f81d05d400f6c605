"""The HTTP API as an ASGI app (Starlette's TestClient drives the real app in process) and
as a real uvicorn server on loopback; and `faultstream api` itself.

The history comes from the embedded pipeline, as in test_queries_and_api.py.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route
from starlette.testclient import TestClient
from test_queries_and_api import fleet_history

from faultstream.events.models import Alert
from faultstream.projections.api import ApiServer, create_app
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.queries import History
from faultstream.projections.read_models import MANIFEST, ReadModelPublisher
from faultstream.projections.tables import HistoryWriter

FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
SEED_KEYS = {"timestamp", "aggregate", "workers", "hardware_classes", "task_types"}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "history.duckdb"
    pipeline = EmbeddedPipeline(writer=HistoryWriter(path))
    pipeline.ingest_many(fleet_history())
    pipeline.close()
    return path


@pytest.fixture
def history(db: Path) -> Iterator[History]:
    with History.from_db(db) as history:
        yield history


@pytest.fixture
def client(history: History) -> TestClient:
    return TestClient(create_app(history), raise_server_exceptions=False)


# --- routes and documents -----------------------------------------------------------------


def test_every_route_of_the_app_is_in_the_openapi_document(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    served = {route.path for route in client.app.routes if isinstance(route, Route)}
    assert served == set(document["paths"])
    for path, item in document["paths"].items():
        operation = item["get"]
        assert operation["responses"]["200"], path
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == {part[1:-1] for part in path.split("/") if part.startswith("{")}


def test_circuit_breakers_keeps_the_seeds_shape(client: TestClient, history: History) -> None:
    response = client.get("/api/circuit-breakers")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == SEED_KEYS
    assert body == json.loads(json.dumps(history.circuit_breakers()))


def test_one_circuit_with_its_transitions(client: TestClient, history: History) -> None:
    body = client.get("/api/circuits/worker/w1").json()
    assert (body["kind"], body["id"], body["state"]) == ("worker", "w1", "OPEN")
    assert {k: body[k] for k in history.circuit_breakers()["workers"]["w1"]} == (
        history.circuit_breakers()["workers"]["w1"]
    )
    assert [(t["from_state"], t["to_state"]) for t in body["transitions"]] == [("CLOSED", "OPEN")]
    forced = client.get("/api/circuits/task_type/gpt").json()
    assert forced["state"] == "FORCED_OPEN"


def test_one_circuit_carries_the_cores_newest_figures_of_it(client: TestClient) -> None:
    # As of the TICK at 4 s (nothing of w1 changed after): it opened on its fifth crash.
    figures = client.get("/api/circuits/worker/w1").json()["figures"]
    assert figures == {"ts": 4_000, "consecutive_failures": 5, "half_open_successes": 0,
                       "trips": 1, "total_trips": 1, "hardware_class": "cuda",
                       "live": True, "available": False, "caused_by": "tick1"}  # fmt: skip
    cuda = client.get("/api/circuits/hardware_class/cuda").json()["figures"]
    assert (cuda["workers"], cuda["live_workers"], cuda["available_workers"]) == (2, 2, 1)


def test_a_history_older_than_alerts_has_none_to_serve(db: Path) -> None:
    con = duckdb.connect(str(db))
    con.execute("DROP TABLE alerts")  # as written before alerts existed
    con.close()
    with History.from_db(db) as history:
        response = TestClient(create_app(history)).get("/api/alerts")
    assert (response.status_code, response.json()) == (404, {"error": "no alerts in this history"})


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/api/circuits/rack/r1", "no circuit kind 'rack' (one of worker, hardware_class, "
         "task_type)"),
        ("/api/circuits/worker/nobody", "no worker circuit 'nobody'"),
        ("/api/checkpoints/nothing", "no checkpoint for task 'nothing'"),
        ("/api/nothing", "no such resource: /api/nothing"),
        ("/api/circuit-breakers/", "no such resource: /api/circuit-breakers/"),
    ],
)  # fmt: skip
def test_not_found_is_json_with_the_reason(client: TestClient, path: str, error: str) -> None:
    response = client.get(path)
    assert (response.status_code, response.json()) == (404, {"error": error})
    assert response.headers["content-type"] == "application/json"


def test_alerts_come_newest_first_with_the_fields_of_their_records(db: Path) -> None:
    later = 10**13  # after whatever the core itself raised over the fleet's history
    landed = [
        Alert(alert_id="a1", ts=later, rule="fleet_health_below", subject_kind="fleet",
              subject_id="fleet", severity="warning", state="FIRING", message="health 61",
              caused_by="tick9"),
        Alert(alert_id="a1", ts=later + 10, rule="fleet_health_below", subject_kind="fleet",
              subject_id="fleet", severity="warning", state="RESOLVED", message="health 90",
              caused_by="tick10"),
    ]  # fmt: skip
    with HistoryWriter(db) as writer:  # as the projector and the embedded pipeline land them
        writer.append_derived(landed)
    with History.from_db(db) as history:
        client = TestClient(create_app(history))
        served = client.get("/api/alerts").json()["alerts"]
        assert served[:2] == [a.model_dump(mode="json") for a in reversed(landed)]
        assert [a["ts"] for a in served] == sorted((a["ts"] for a in served), reverse=True)
        assert len(client.get("/api/alerts?limit=1").json()["alerts"]) == 1
        for bad in ("0", "x", "10001"):
            response = client.get(f"/api/alerts?limit={bad}")
            assert response.status_code == 400
            assert response.json()["error"].startswith(f"limit: '{bad}'")


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "history": {"timestamp": 5_000}}


def test_not_ready_while_the_read_models_are_gone(db: Path, tmp_path: Path) -> None:
    directory = tmp_path / "rm"
    con = duckdb.connect(str(db))
    ReadModelPublisher(con, directory).publish()
    con.close()
    with History.from_read_models(directory) as history:
        client = TestClient(create_app(history))
        assert client.get("/readyz").status_code == 200
        (directory / MANIFEST).unlink()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "no read models published yet" in response.json()["error"]
        assert client.get("/api/circuit-breakers").status_code == 503
        assert client.get("/healthz").status_code == 200  # alive all the same


def test_readiness_of_the_process_behind_the_history(history: History) -> None:
    figures = {"lag_records": 900, "lag_ms": 45_000}
    behind = TestClient(create_app(history, lambda: (False, {**figures, "reason": "behind"})))
    response = behind.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == "behind"
    assert response.json()["projector"]["lag_records"] == 900
    current = TestClient(create_app(history, lambda: (True, {"lag_records": 0})))
    assert current.get("/readyz").json()["projector"] == {"lag_records": 0}


def test_metrics_count_requests_by_route_and_show_the_circuits(client: TestClient) -> None:
    client.get("/api/circuits/worker/w1")
    client.get("/api/circuits/worker/someone-else")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    route = ("route", "/api/circuits/{kind}/{id}")
    assert samples[("faultstream_api_requests_total", (route, ("status", "200")))] >= 1
    assert samples[("faultstream_api_requests_total", (route, ("status", "404")))] >= 1
    assert samples[("faultstream_circuits", (("kind", "worker"), ("state", "OPEN")))] == 1
    assert samples[("faultstream_fleet_health_percent", (("figure", "overall"),))] == 60.0


def test_a_failing_query_is_json_500_without_its_trace(history: History, monkeypatch) -> None:
    def broken(task_id: str) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(history, "checkpoint", broken)
    response = TestClient(create_app(history)).get("/api/checkpoints/t1")
    assert (response.status_code, response.json()) == (500, {"error": "internal error"})


# --- a real server on loopback --------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def call(url: str, method: str = "GET") -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_uvicorn_server_on_loopback_answers_json(history: History, monkeypatch) -> None:
    def broken() -> Any:
        raise RuntimeError("a bug")

    server = ApiServer(history, port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert listening_addresses(server.port) == {"127.0.0.1"}
        status, headers, body = call(f"{base}/api/circuit-breakers")
        assert status == 200 and set(json.loads(body)) == SEED_KEYS
        status, headers, body = call(f"{base}/api/circuit-breakers", "HEAD")
        assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 0
        status, headers, body = call(f"{base}/nowhere")
        assert (status, headers["Content-Type"]) == (404, "application/json")
        status, headers, body = call(f"{base}/api/circuit-breakers", "DELETE")
        assert (status, headers["Allow"]) == (405, "GET, HEAD")
        assert "read-only" in json.loads(body)["error"]
        monkeypatch.setattr(history, "now", broken)
        status, _, body = call(f"{base}/readyz")  # the history fails: 503, not a crash
        assert status == 503 and "a bug" in json.loads(body)["error"]
    finally:
        server.close()
    assert listening_addresses(server.port) == set()


# --- `faultstream api` ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while not listening_addresses(port):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "faultstream api never listened"
        time.sleep(0.05)


def test_faultstream_api_serves_a_db_and_stops_on_sigterm(db: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [FAULTSTREAM, "api", "--db", str(db), "--port", str(port), "--log-format", "json"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        assert listening_addresses(port) == {"127.0.0.1"}
        status, _, body = call(f"http://127.0.0.1:{port}/api/circuits/worker/w1")
        assert status == 200 and json.loads(body)["state"] == "OPEN"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    assert lines and {line["component"] for line in lines} == {"api"}
    assert any(line.get("url") == f"http://127.0.0.1:{port}" for line in lines)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (["--db", "missing.duckdb"], "--db missing.duckdb: no such DuckDB file"),
        (["--read-models", "missing"], "--read-models missing: no such directory"),
        (["--read-models", "."], "no read models published yet"),
        (["--db", "h.duckdb", "--port", "0"], "--port: 0 is not a port number"),
    ],
)
def test_faultstream_api_refuses_bad_input_in_one_line(
    where: list[str], expected: str, db: Path, tmp_path: Path
) -> None:
    (tmp_path / "h.duckdb").write_bytes(db.read_bytes())
    result = subprocess.run(
        [FAULTSTREAM, "api", *where], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


def test_faultstream_api_on_a_busy_port_is_one_line(db: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [FAULTSTREAM, "api", "--db", str(db), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"--port {port}: cannot listen" in result.stderr


# --- the projector's lag, as /readyz reads it ----------------------------------------------


class Watermarks:
    """A consumer that only knows the high watermarks of its last fetches."""

    def __init__(self, high: dict[tuple[str, int], int]) -> None:
        self.high = high

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        assert cached  # never a request to the broker from the lag measure
        return 0, self.high.get((tp.topic, tp.partition), -1001)

    def close(self) -> None:
        pass


def test_projector_lag_and_readiness(tmp_path: Path) -> None:
    from confluent_kafka import TopicPartition

    from faultstream.events.config import load_settings
    from faultstream.projections.projector import Projector, ProjectorOptions

    settings = load_settings(storage={"duckdb_path": str(tmp_path / "p.duckdb"),
                                      "read_models_dir": str(tmp_path / "rm")})  # fmt: skip
    projector = Projector(settings, ProjectorOptions(ready_max_lag_s=30))
    try:
        assert projector.readiness()[0] is False  # not measured yet
        projector._assigned = [TopicPartition("d", 0), TopicPartition("c", 0)]
        projector.consumer = Watermarks({})  # no fetch has answered: still not measured
        projector._measure_lag(time.monotonic())
        assert "starting" in projector.readiness()[1]["reason"]

        projector.consumer = Watermarks({("d", 0): 100, ("c", 0): 7})
        projector._landed_offsets = {("d", 0): 100, ("c", 0): 7}
        projector._measure_lag(time.monotonic())
        assert projector.readiness() == (
            True, {"lag_records": 0, "lag_ms": 0, "rows_landed": 0},
        )  # fmt: skip

        projector._landed_offsets = {("d", 0): 40}  # c never landed: from its start
        projector.newest_landed_ms = int(time.time() * 1000) - 120_000  # two minutes old
        projector._measure_lag(time.monotonic())
        ready, figures = projector.readiness()
        assert not ready and figures["lag_records"] == 60 + 7
        assert figures["lag_ms"] == pytest.approx(120_000, abs=5_000)
        assert figures["reason"].startswith("projector behind: 67 records not landed")
    finally:
        projector.consumer = None
        projector.close()
