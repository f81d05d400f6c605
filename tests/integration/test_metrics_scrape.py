"""Prometheus metrics and JSON logs of the running pipeline, on the real broker.

A processor and a projector run as `faultstream processor|projector --log-format json`; a
scripted fleet (circuits open, commands follow) and one undecodable record go in. Then
each /metrics is scraped over HTTP and parsed as Prometheus would, and every line each
process wrote is read back as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_processor import FAULTSTREAM, free_port, produce, scripted_history, wait_until

from faultstream.events.admin import create_topics
from faultstream.events.config import Settings

pytestmark = pytest.mark.kafka
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of `name` that carry `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def json_lines(log: Path) -> list[dict]:
    """Every line of `log` as a JSON object (the test fails on any other line)."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    objects = []
    for line in lines:
        try:
            objects.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{log.name}: not a JSON line: {line!r}")
    return objects


def test_processor_and_projector_metrics_and_json_logs(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    kafka = kafka_settings.kafka
    create_topics(kafka)
    env = dict(
        os.environ,
        FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        FAULTSTREAM_KAFKA__TOPIC_PREFIX=kafka.topic_prefix,
        FAULTSTREAM_PROCESSOR__DATA_DIR=kafka_settings.processor.data_dir,
        FAULTSTREAM_PROCESSOR__SNAPSHOT_EVERY_S="0.5",
    )
    web_port, api_port = free_port(), free_port()
    processor_log, projector_log = tmp_path / "processor.log", tmp_path / "projector.log"
    processor = [FAULTSTREAM, "processor", "--web-port", str(web_port), "--log-format", "json"]
    projector = [FAULTSTREAM, "projector", "--db", str(tmp_path / "h.duckdb"), "--read-models",
                 str(tmp_path / "rm"), "--port", str(api_port), "--publish-interval", "0.2",
                 "--log-format", "json"]  # fmt: skip
    history = scripted_history(rounds=2)
    produce(kafka_settings, history, raw=[b"not an event"])
    with (
        running(processor, env, processor_log) as proc,
        running(projector, env, projector_log) as proj,
    ):

        def processed() -> bool:
            assert proc.poll() is None, processor_log.read_text()
            try:
                samples = scrape(web_port)
            except OSError:
                return False  # not listening yet
            return (
                value(samples, "faultstream_processor_records_out_total", type="recovery_command")
                > 0
                and value(samples, "faultstream_processor_snapshot_duration_seconds_count") > 0
            )

        wait_until(processed, "the processor's metrics to count commands and a snapshot")

        def landed() -> bool:
            assert proj.poll() is None, projector_log.read_text()
            try:
                samples = scrape(api_port)
            except OSError:
                return False
            return value(samples, "faultstream_projector_rows_total") >= len(history)

        wait_until(landed, "the projector's metrics to count the landed rows")
        # A stats line of each stage comes every 10 s while batches arrive (TICKs at least).
        wait_until(
            lambda: (
                {"ingest", "decide"} <= {line.get("stage") for line in json_lines(processor_log)}
            ),
            "the processor's stats lines",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=10) as ready:
            readiness = json.load(ready)
        processor_metrics, projector_metrics = scrape(web_port), scrape(api_port)

    topic = kafka.topic("events")
    p = processor_metrics
    assert value(p, "faultstream_processor_records_in_total", topic=topic) >= len(history) + 1
    assert value(p, "faultstream_processor_records_out_total", type="circuit_state_changed") > 0
    assert value(p, "faultstream_processor_dead_letters_total") >= 1
    assert value(p, "faultstream_processor_decision_latency_seconds_count") > 0
    assert value(p, "faultstream_processor_snapshot_bytes") > 0
    assert {
        "faultstream_processor_ordering_lag_records",
        "faultstream_processor_ordering_lag_seconds",
    } <= names(p)
    assert value(p, "faultstream_circuits", kind="worker", state="OPEN") >= 1
    assert value(p, "faultstream_circuits", kind="hardware_class", state="OPEN") >= 1
    assert ("faultstream_fleet_health_percent", frozenset({("figure", "overall")})) in p
    assert value(p, "faultstream_fleet_health_percent", figure="overall") < 100

    q = projector_metrics
    assert value(q, "faultstream_projector_rows_total") >= len(history)
    assert value(q, "faultstream_projector_batches_total") > 0
    assert {"faultstream_projector_lag_records", "faultstream_projector_lag_seconds"} <= names(q)
    assert value(q, "faultstream_api_requests_total", route="/metrics", status="200") > 0
    assert value(q, "faultstream_api_request_duration_seconds_count", route="/metrics") > 0
    # The history's circuits, as the processor's core has them (both saw the same inputs).
    assert value(q, "faultstream_circuits", kind="worker", state="OPEN") >= 1
    assert readiness["status"] == "ready"
    assert readiness["projector"]["lag_records"] is not None

    processor_lines, projector_lines = json_lines(processor_log), json_lines(projector_log)
    assert {line["component"] for line in processor_lines} == {"processor"}
    assert {line["component"] for line in projector_lines} == {"projector"}
    decide = next(line for line in processor_lines if line.get("stage") == "decide")
    assert decide["records"] > 0 and decide["batches"] > 0
    for figure in ("records_per_s", "busy_pct", "age_p50_ms", "age_p99_ms", "age_max_ms"):
        assert isinstance(decide[figure], int | float), figure
    assert any("HTTP API on" in line["message"] for line in projector_lines)
