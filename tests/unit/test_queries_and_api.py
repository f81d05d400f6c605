"""History queries over a DuckDB file and over read models, and the HTTP API, without Kafka.

The history comes from the embedded pipeline (the same core and HistoryWriter the real
pipeline uses), so the core's own `circuits_view()` is the expected API document.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from faultstream.events.checkpoints import fetch_checkpoint
from faultstream.events.models import Operator, Tick, WorkerEvent
from faultstream.projections.api import ApiServer
from faultstream.projections.embedded import EmbeddedPipeline
from faultstream.projections.queries import History, HistoryError
from faultstream.projections.read_models import (
    COMPACT_AFTER_PARTS,
    ReadModelPublisher,
    ReadModelsMissingError,
    read_manifest,
)
from faultstream.projections.tables import HistoryWriter

HOUR = 3_600_000


def event(event_id: str, kind: str, ts: int, **fields: Any) -> WorkerEvent:
    fields.setdefault("worker_id", "w1")
    fields.setdefault("hardware_class", "cuda")
    if kind != "HEARTBEAT":
        fields.setdefault("task_id", "t1")
    if kind in ("TASK_STARTED", "SUCCESS", "FAILURE"):
        fields.setdefault("task_type", "bert")
    return WorkerEvent(event_id=event_id, kind=kind, ts=ts, **fields)


def fleet_history() -> list[Any]:
    """w1 crashes five times (its worker circuit opens), w2 succeeds, a checkpoint, an
    out-of-memory failure classified from its message, a TICK, an operator forcing a task
    type open, and a last TICK (the core publishes its figures, which the history serves,
    at a TICK)."""
    records: list[Any] = [
        event("s0", "SUCCESS", 1_000, worker_id="w2", task_id="t0"),
        event("c1", "CHECKPOINT", 1_100, task_id="t1", checkpoint_seq=1, checkpoint_state=b"a"),
        event("c2", "CHECKPOINT", 1_200, task_id="t1", checkpoint_seq=2, checkpoint_state=b"b"),
    ]
    for n in range(5):
        records.append(event(f"f{n}", "FAILURE", 2_000 + n, failure_type="WORKER_CRASH", attempt=0))
    records.append(event("oom", "FAILURE", 3_000, worker_id="w2", message="CUDA OOM"))
    records.append(Tick(event_id="tick1", ts=4_000))
    records.append(
        Operator(
            event_id="op1",
            ts=5_000,
            action="FORCE_OPEN",
            circuit_kind="task_type",
            circuit_id="gpt",
            actor="ops",
        )
    )
    records.append(Tick(event_id="tick2", ts=5_000))
    return records


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, EmbeddedPipeline, list[Any]]:
    db = tmp_path / "history.duckdb"
    records = fleet_history()
    pipeline = EmbeddedPipeline(writer=HistoryWriter(db))
    pipeline.ingest_many(records)
    pipeline.close()
    return db, pipeline, records


@pytest.fixture
def read_models(recorded, tmp_path: Path) -> Path:
    db, _, _ = recorded
    directory = tmp_path / "read-models"
    con = duckdb.connect(str(db))
    ReadModelPublisher(con, directory).publish()
    con.close()
    return directory


@pytest.fixture
def api(read_models: Path) -> Iterator[str]:
    server = ApiServer(History.from_read_models(read_models), "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{server.port}"
    server.close()


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_circuit_breakers_from_the_db_file_equal_the_cores_own_view(recorded) -> None:
    db, pipeline, _ = recorded
    with History.from_db(db) as history:
        assert history.circuit_breakers() == pipeline.core.circuits_view()


def test_circuit_breakers_from_read_models_equal_those_from_the_db_file(
    recorded, read_models
) -> None:
    db, _, _ = recorded
    with History.from_db(db) as from_db, History.from_read_models(read_models) as from_rm:
        assert from_rm.circuit_breakers() == from_db.circuit_breakers()


def test_out_of_memory_message_counts_on_the_hardware_class_circuit(recorded) -> None:
    db, _, _ = recorded
    with History.from_db(db) as history:
        view = history.circuit_breakers()
    assert view["hardware_classes"]["cuda"]["total_failures"] == 1
    assert view["workers"]["w2"]["total_failures"] == 0
    assert view["workers"]["w1"]["state"] == "OPEN"


def test_input_records_come_back_in_ingestion_order(recorded) -> None:
    db, _, records = recorded
    with History.from_db(db) as history:
        assert list(history.input_records()) == records
        assert [r.event_id for r in history.input_records(since=2_000, until=3_000)] == [
            f"f{n}" for n in range(5)
        ]


def test_newest_checkpoint_of_a_task_is_returned(recorded) -> None:
    db, _, _ = recorded
    with History.from_db(db) as history:
        row = history.checkpoint("t1")
        assert (row["checkpoint_seq"], row["checkpoint_state"]) == (2, b"b")
        assert history.checkpoint("nope") is None


def test_transitions_and_current_states_come_from_the_circuit_tables(recorded) -> None:
    db, _, _ = recorded
    with History.from_db(db) as history:
        changes = history.transitions(since=0, until=10_000)
        states = history.current_states()
    assert [(t["circuit_id"], t["to_state"]) for t in changes] == [
        ("w1", "OPEN"), ("gpt", "FORCED_OPEN"),
    ]  # fmt: skip
    assert {(s["circuit_kind"], s["circuit_id"], s["to_state"]) for s in states} == {
        ("worker", "w1", "OPEN"), ("task_type", "gpt", "FORCED_OPEN"),
    }  # fmt: skip


def test_failure_rates_count_outcomes_per_bucket(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    with HistoryWriter(db) as writer:
        writer.append_inputs(
            [
                event("a", "SUCCESS", 10),
                event("b", "FAILURE", 20, failure_type="TIMEOUT"),
                event("c", "SUCCESS", HOUR + 5),
                event("d", "HEARTBEAT", HOUR + 6),
            ]
        )
    with History.from_db(db) as history:
        rates = history.failure_rates("1h")
        with pytest.raises(HistoryError, match="bucket"):
            history.failure_rates("fortnight")
    assert [(r["bucket_start"], r["successes"], r["failures"], r["failure_rate"])
            for r in rates] == [(0, 1, 1, 0.5), (HOUR, 1, 0, 0.0)]  # fmt: skip


def test_readers_see_compacted_parts_with_every_row_once(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    writer = HistoryWriter(db)
    publisher = ReadModelPublisher(writer.con, tmp_path / "rm")
    for n in range(COMPACT_AFTER_PARTS + 3):
        writer.append_inputs([event(f"e{n}", "HEARTBEAT", n)])
        writer.flush()
        publisher.publish()
        with History.from_read_models(tmp_path / "rm") as history:
            ids = [r.event_id for r in history.input_records()]
        assert ids == [f"e{i}" for i in range(n + 1)]
    writer.close()
    assert len(read_manifest(tmp_path / "rm").files["events"]) < COMPACT_AFTER_PARTS


def test_missing_read_models_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReadModelsMissingError, match=r"manifest\.json"):
        History.from_read_models(tmp_path / "nothing")


def test_api_serves_the_circuit_breakers_document(api: str, recorded) -> None:
    _, pipeline, _ = recorded
    status, body = get(f"{api}/api/circuit-breakers")
    assert status == 200
    assert body == json.loads(json.dumps(pipeline.core.circuits_view()))


def test_api_serves_the_newest_checkpoint_in_base64(api: str) -> None:
    status, body = get(f"{api}/api/checkpoints/t1")
    assert status == 200
    assert body["checkpoint_seq"] == 2
    assert base64.b64decode(body["checkpoint_state"]) == b"b"


def test_api_answers_404_with_json_for_unknown_task_and_path(api: str) -> None:
    status, body = get(f"{api}/api/checkpoints/unknown-task")
    assert (status, body) == (404, {"error": "no checkpoint for task 'unknown-task'"})
    status, body = get(f"{api}/api/nothing-here")
    assert status == 404 and "error" in body


def test_sdk_fetch_checkpoint_returns_the_newest_or_none(api: str, tmp_path: Path) -> None:
    from faultstream.events.config import load_settings

    port = int(api.rsplit(":", 1)[1])
    settings = load_settings(http={"projector_port": port})
    checkpoint = fetch_checkpoint("t1", settings, host="127.0.0.1")
    assert checkpoint is not None
    assert (checkpoint.checkpoint_seq, checkpoint.checkpoint_state) == (2, b"b")
    assert fetch_checkpoint("unknown-task", settings, host="127.0.0.1") is None


def request(url: str, method: str, data: bytes | None = None) -> tuple[int, Any, Any]:
    """Status, headers and body (parsed as JSON: the test fails on anything else)."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, method=method), timeout=10
        ) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    assert headers["Content-Type"] == "application/json"
    return status, headers, json.loads(raw) if raw else None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_api_answers_other_methods_with_json_405(api: str, method: str) -> None:
    status, headers, body = request(f"{api}/api/circuit-breakers", method, b'{"x": 1}')
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert body == {"error": f"method {method} not allowed: the API is read-only (GET)"}


def test_api_answers_an_unknown_method_and_a_malformed_request_with_json(api: str) -> None:
    status, _, body = request(f"{api}/api/circuit-breakers", "BREW")
    assert status == 501 and "BREW" in body["error"]
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET / two-paths HTTP/1.0\r\n\r\n")  # one word too many
        answer = sock.makefile("rb").read()
    head, _, raw = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.splitlines()[0]
    assert b"content-type: application/json" in head.lower()
    assert "error" in json.loads(raw)


def test_api_answers_head_like_get_without_a_body(api: str) -> None:
    status, headers, body = request(f"{api}/api/circuit-breakers", "HEAD")
    assert (status, body) == (200, None)
    assert int(headers["Content-Length"]) > 0
    status, _, body = request(f"{api}/api/nothing-here", "HEAD")
    assert (status, body) == (404, None)


def test_api_answers_an_internal_error_with_json_500(read_models: Path, monkeypatch) -> None:
    history = History.from_read_models(read_models)

    def broken() -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(history, "circuit_breakers", broken)
    server = ApiServer(history, "127.0.0.1", 0).start()
    try:
        status, _, body = request(f"http://127.0.0.1:{server.port}/api/circuit-breakers", "GET")
    finally:
        server.close()
    assert (status, body) == (500, {"error": "internal error"})
