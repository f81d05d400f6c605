"""The whole loop on a secured cluster: SASL_SSL, a SCRAM-SHA-512 user, a private CA.

The broker is a second one of the tests' own (tests/secured_broker.py), started with
`broker.start(…, sasl_ssl_port=…)`. Events go from the SDK's emitter through the processor
(Faust and aiokafka) to recovery commands, read by the command consumer and landed by the
projector (librdkafka), every client over SASL_SSL; the password shows up in no log line.
A wrong password, a wrong CA and PLAINTEXT against the TLS port each give one line naming
the setting at fault.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from secured_broker import SecuredCluster, secured_cluster  # noqa: F401 (the fixture)

from faultstream.broker_security import create_certificate_authority, keytool_for
from faultstream.events.admin import create_topics
from faultstream.events.config import Settings, load_settings
from faultstream.events.consumer import CommandConsumer
from faultstream.events.emitter import Emitter
from faultstream.events.kafka_connection import cluster_metadata
from faultstream.events.models import RecoveryCommand
from faultstream.projections.read_models import MANIFEST, Manifest

pytestmark = pytest.mark.kafka

FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
WAIT_S = 120  # a generous bound: the tests wait for states, never for durations
TASKS = [f"task-{n}" for n in range(6)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, kafka: dict[str, Any], tmp_path: Path) -> Path:
    """A faultstream.toml as a user would write it: `[kafka]` with the password."""
    lines = ["[kafka]"]
    client = kafka.pop("client", {})
    lines += [f"{key} = {json.dumps(value)}" for key, value in kafka.items()]
    lines += [
        "[processor]",
        f"data_dir = {json.dumps(str(tmp_path / 'processor'))}",
        "tick_interval_s = 1.0",
        "snapshot_every_s = 0.5",
        "[storage]",
        f"duckdb_path = {json.dumps(str(tmp_path / 'fs.duckdb'))}",
        f"read_models_dir = {json.dumps(str(tmp_path / 'read-models'))}",
        "[kafka.client]",
        *(f"{json.dumps(key)} = {json.dumps(value)}" for key, value in client.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def secured_settings(secured_cluster: SecuredCluster, tmp_path: Path) -> tuple[Settings, Path]:  # noqa: F811
    """This test's settings (its own topic prefix) and the same as a config file."""
    kafka = secured_cluster.kafka(topic_prefix=f"secured-{uuid.uuid4().hex[:8]}")
    config = write_config(tmp_path / "faultstream.toml", dict(kafka), tmp_path)
    settings = load_settings(config, emitter={"spool_path": str(tmp_path / "spool.jsonl")})
    return settings, config


@contextmanager
def service(config: Path, tmp_path: Path, *command: str) -> Iterator[subprocess.Popen]:
    """`faultstream <command>` with `config`, its output in <tmp_path>/<command>.log."""
    log = (tmp_path / f"{command[0]}.log").open("wb")
    proc = subprocess.Popen(
        [FAULTSTREAM, "--config", str(config), *command],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def wait_until(check: Callable[[], bool], running: list[subprocess.Popen], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        for proc in running:
            assert proc.poll() is None, f"{proc.args[3]} exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def published_rows(directory: Path, table: str) -> int:
    try:
        manifest = Manifest(**json.loads((directory / MANIFEST).read_text()))
    except FileNotFoundError:
        return 0
    return sum(rows for _, rows in manifest.files.get(table, []))


def test_whole_loop_runs_over_sasl_ssl_and_no_log_line_holds_the_password(
    secured_cluster: SecuredCluster,  # noqa: F811
    secured_settings: tuple[Settings, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings, config = secured_settings
    # librdkafka's security debugging in the in-process clients: its SASL and TLS steps
    # pass through the log too, and must not carry the password either.
    debugged = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"client": {"debug": "security"}})}
    )
    create_topics(settings.kafka)
    commands: dict[str, RecoveryCommand] = {}

    with service(config, tmp_path, "processor", "--web-port", str(free_port())) as processor:
        with Emitter(debugged, worker_id="gpu-0", hardware_class="cuda") as emitter:
            emitter.heartbeat()
            for task in TASKS:
                emitter.task_started(task, "bert")
                emitter.failure(task, "bert", failure_type="WORKER_CRASH")
        assert emitter.transport.acked == 1 + 2 * len(TASKS)

        with CommandConsumer(debugged, group_id="coordinator", from_beginning=True) as consumer:

            def every_task_has_a_command() -> bool:
                consumer.handle(
                    lambda c: commands.setdefault(c.command_id, c), follow=False, idle_timeout_s=1
                )
                return {c.task_id for c in commands.values()} == set(TASKS)

            wait_until(every_task_has_a_command, [processor], "a command for every task")

        read_models = tmp_path / "read-models"
        with service(config, tmp_path, "projector", "--no-api", "--publish-interval", "0.2") as p:
            wait_until(
                lambda: published_rows(read_models, "commands") >= len(commands),
                [processor, p],
                "the commands in the read models",
            )
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=WAIT_S) == 0

    con = duckdb.connect(str(tmp_path / "fs.duckdb"), read_only=True)
    try:
        landed = {row[0] for row in con.execute("SELECT command_id FROM commands").fetchall()}
    finally:
        con.close()
    assert landed == set(commands)

    processor_log = (tmp_path / "processor.log").read_text()
    # aiokafka's own word that the processor authenticated with SCRAM over the secured port.
    assert f"Authenticated as {secured_cluster.username} via SCRAM-SHA-512" in processor_log
    logs = {
        "processor": processor_log,
        "projector": (tmp_path / "projector.log").read_text(),
        "broker": secured_cluster.broker_log.read_text(),
        "this process": "\n".join(
            record.getMessage() + (record.exc_text or "") for record in caplog.records
        ),
    }
    assert any("SASL" in record.getMessage() for record in caplog.records), "no debug seen"
    leaked = [name for name, text in logs.items() if secured_cluster.password in text]
    assert leaked == []


def test_broker_status_points_to_the_client_file_and_never_shows_the_password(
    secured_cluster: SecuredCluster,  # noqa: F811
) -> None:
    done = subprocess.run(
        [FAULTSTREAM, "broker", "status", "--state-dir", str(secured_cluster.state_dir)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    client_file = secured_cluster.state_dir / "sasl-ssl" / "client.toml"
    assert f"SASL_SSL listener at {secured_cluster.bootstrap}" in done.stdout
    assert f"--config {client_file}" in done.stdout
    assert secured_cluster.password not in done.stdout + done.stderr
    # The file a user is pointed to is private, and reaches the cluster as it is.
    assert client_file.stat().st_mode & 0o777 == 0o600
    assert cluster_metadata(load_settings(client_file).kafka).brokers


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA certificate that did not sign the broker's."""
    import shutil

    directory = tmp_path_factory.mktemp("other-ca")
    java = shutil.which("java") or "java"
    cert = directory / "ca.crt"
    create_certificate_authority(
        cert, directory / "ca.p12", "changeit", keytool_for(java), name="someone else"
    )
    return cert


MISCONFIGURATIONS = {
    "wrong password": ({"sasl_password": "not-the-password"}, "kafka.sasl_password"),
    "wrong CA": ({"ssl_cafile": "OTHER_CA"}, "kafka.ssl_cafile"),
    "PLAINTEXT against the TLS port": (
        {"security_protocol": "PLAINTEXT", "sasl_username": "", "sasl_password": ""},
        "kafka.security_protocol",
    ),
}


@pytest.mark.parametrize("case", MISCONFIGURATIONS)
def test_a_misconfigured_client_gets_one_line_naming_the_setting(
    case: str,
    secured_cluster: SecuredCluster,  # noqa: F811
    other_ca: Path,
    tmp_path: Path,
) -> None:
    changes, setting = MISCONFIGURATIONS[case]
    kafka = secured_cluster.kafka(**changes)
    if kafka["ssl_cafile"] == "OTHER_CA":
        kafka["ssl_cafile"] = str(other_ca)
    if kafka["security_protocol"] == "PLAINTEXT":
        kafka.pop("ssl_cafile")
    config = write_config(tmp_path / "faultstream.toml", kafka, tmp_path)
    for command in (["processor", "--web-port", str(free_port())], ["topics", "create"]):
        done = subprocess.run(
            [FAULTSTREAM, "--config", str(config), *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        lines = done.stderr.splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"faultstream {command[0]}: {setting}: "), lines[0]
        assert secured_cluster.password not in done.stdout + done.stderr


def test_processor_refuses_client_properties_that_would_change_security(
    secured_cluster: SecuredCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """librdkafka would take `ssl.endpoint.identification.algorithm`; the processor's
    aiokafka clients cannot, so it does not start rather than connect differently."""
    kafka = secured_cluster.kafka(
        topic_prefix=f"secured-{uuid.uuid4().hex[:8]}",
        client={"ssl.endpoint.identification.algorithm": "none"},
    )
    config = write_config(tmp_path / "faultstream.toml", kafka, tmp_path)
    done = subprocess.run(
        [FAULTSTREAM, "--config", str(config), "processor", "--web-port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "faultstream processor: kafka.client: ssl.endpoint.identification.algorithm would "
        "change security for the librdkafka clients only; the processor's aiokafka clients "
        "cannot take it (remove it, or use the [kafka] security settings)"
    ]
