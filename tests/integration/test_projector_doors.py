"""`faultstream projector` against the real broker, at its doors: its API listens on
127.0.0.1 when no host is given, answers every request with JSON, says it is ready once
it has caught up (its lag in /readyz), and a second projector on its read-models folder
(another DuckDB file) is refused with one line while it runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultstream.events.config import Settings

pytestmark = pytest.mark.kafka
FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
WAIT_S = 120  # a generous bound: the test waits for states, never for durations


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses with a listening TCP socket on `port` (Linux /proc)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture
def env(kafka_settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_settings.kafka.bootstrap_servers,
        "FAULTSTREAM_KAFKA__TOPIC_PREFIX": kafka_settings.kafka.topic_prefix,
    }


@pytest.fixture
def projector(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    log = (tmp_path / "projector.log").open("w")
    proc = subprocess.Popen(
        [FAULTSTREAM, "projector", "--db", "one.duckdb", "--read-models", "read-models",
         "--port", str(port), "--publish-interval", "0.2"],
        env=env, cwd=tmp_path, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        while not listening_addresses(port):
            assert proc.poll() is None, (tmp_path / "projector.log").read_text()
            assert time.monotonic() < deadline, "the projector's API never listened"
            time.sleep(0.05)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def test_the_api_listens_on_loopback_only_and_answers_json(projector) -> None:
    _, port = projector
    assert listening_addresses(port) == {"127.0.0.1"}
    url = f"http://127.0.0.1:{port}/api/circuit-breakers"
    request = urllib.request.Request(url, data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405
    assert refused.value.headers["Content-Type"] == "application/json"
    assert "error" in json.loads(refused.value.read())


def test_the_projector_is_ready_once_caught_up(projector) -> None:
    _, port = projector
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=30) as response:
        assert json.load(response) == {"status": "ok"}
    deadline = time.monotonic() + WAIT_S
    while True:  # 503 until the first lag measure, then 200: nothing is waiting to land
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=30) as response:
                body = json.load(response)
                break
        except urllib.error.HTTPError as refused:
            assert refused.code == 503
            assert "error" in json.loads(refused.read())
        assert time.monotonic() < deadline, "the projector never said it was ready"
        time.sleep(0.1)
    assert body["status"] == "ready"
    assert (body["projector"]["lag_records"], body["projector"]["lag_ms"]) == (0, 0)


def test_a_second_projector_on_its_read_models_is_refused(
    projector, env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [FAULTSTREAM, "projector", "--db", "two.duckdb", "--read-models", "read-models",
         "--no-api"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "read models read-models: in use by another writer" in result.stderr
    first, _ = projector
    assert f"pid {first.pid} " in result.stderr
