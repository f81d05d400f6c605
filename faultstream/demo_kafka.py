"""`faultstream demo --bootstrap-servers …`: the simulated fleet through Kafka and Faust.

The demo creates its topics under a fresh prefix (events on one partition, so the fleet's
order is the processor's order), starts `faultstream processor` unless one already runs
for that prefix, always starts its own `faultstream projector` into the demo's DuckDB
file, runs the fleet in lockstep with the processor (processors/simulator/kafka.py), waits
until the projector has landed every record, and stops what it started — always.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import duckdb
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from faultstream.events.admin import CONTROL, EVENTS, create_topics, describe_topics
from faultstream.events.config import Settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.kafka_clients import kafka_environment, librdkafka_config
from faultstream.processors.coordinator import Coordinator
from faultstream.processors.simulator import FleetSimulator, Scenario, load_scenario
from faultstream.processors.simulator.kafka import LockstepBridge
from faultstream.projections.read_models import Manifest

# The processor's own clock would put wall-clock TICKs among the fleet's simulated time.
_NO_WALL_CLOCK_S = 1e9
_STOP_GRACE_S = 20.0
_PROJECTION_TIMEOUT_S = 60.0
_LOG_TAIL_LINES = 15
_INPUT_TABLES = ("events", "control")
_DERIVED_TABLES = ("circuit_transitions", "commands", "circuit_figures", "alerts")


@dataclass
class KafkaDemoRun:
    simulator: FleetSimulator
    coordinator: Coordinator
    prefix: str
    inputs: int
    derived: int
    started: list[str]  # the services this run started (and stopped)


def default_prefix(seed: int) -> str:
    return f"demo-{seed}-{uuid.uuid4().hex[:8]}"


class Service:
    """A `faultstream …` subprocess with its log in a file; stopped with SIGTERM, then KILL."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*_faultstream_command(), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: the demo's Ctrl-C reaches it only through stop().
                start_new_session=True,
            )

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise FaultstreamError(
                f"faultstream {self.name} exited with code {code}; its log ends:\n{self.tail()}"
            )

    def tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
        first = starts[-1] if starts else len(lines) - _LOG_TAIL_LINES
        return "\n".join(lines[max(first, 0) :][-3 * _LOG_TAIL_LINES :])

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _faultstream_command() -> list[str]:
    script = Path(sys.executable).with_name("faultstream")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from faultstream.cli import main; sys.exit(main())"]


def service_env(settings: Settings, work_dir: Path) -> dict[str, str]:
    """The environment of the services: this run's Kafka and core settings, whatever the
    config file or environment would otherwise give them (env beats the config file)."""
    owned = ("KAFKA", "PROCESSOR", "CIRCUITS", "RECOVERY")
    env = {
        key: value
        for key, value in os.environ.items()
        if not any(key.startswith(f"FAULTSTREAM_{section}") for section in owned)
    }
    processor = settings.processor.model_copy(
        update={
            "tick_interval_s": _NO_WALL_CLOCK_S,
            "store": "memory",
            "data_dir": str(work_dir / "processor"),
        }
    )
    for section, model in (
        ("PROCESSOR", processor),
        ("CIRCUITS", settings.circuits),
        ("RECOVERY", settings.recovery),
    ):
        env[f"FAULTSTREAM_{section}"] = json.dumps(model.model_dump(mode="json"))
    env.update(kafka_environment(settings.kafka))  # a dump would mask the SASL password
    return env


def prepare_topics(settings: Settings) -> None:
    """Create the prefix's topics with one events partition; refuse a prefix whose events
    or control topic has more (their records could not keep the fleet's order)."""
    create_topics(settings.kafka)
    partitions = describe_topics(settings.kafka)
    for logical in (EVENTS, CONTROL):
        name = settings.kafka.topic(logical)
        if partitions.get(name, 1) != 1:
            raise FaultstreamError(
                f"--prefix {settings.kafka.topic_prefix}: {name} has {partitions[name]} "
                "partitions; the demo needs 1 to keep the fleet's order (use a fresh prefix)"
            )


def processor_running(settings: Settings) -> bool:
    """Whether a `faultstream processor` is a live member of this prefix's group."""
    group = f"{settings.kafka.topic_prefix}-processor"
    admin = AdminClient(librdkafka_config(settings.kafka, {"log_level": 0}))
    try:
        description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    except Exception:
        return False
    return description.state == ConsumerGroupState.STABLE and bool(description.members)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_kafka_demo(
    settings: Settings,
    db_path: Path,
    *,
    prefix: str,
    read_models_dir: Path | None = None,
    scenario_path: str | Path | None = None,
    seed: int = 7,
    workers: int | None = None,
    duration_ms: int | None = None,
    progress: Callable[[float], None] | None = None,
    timeout_s: float = 90.0,
) -> KafkaDemoRun:
    """Run the scenario through Kafka; the projector's history replaces `db_path` whole."""
    # The simulated fleet's time is its own: its producers stamp each record with it, and
    # the topics keep that stamp as the time decisions run on.
    kafka = settings.kafka.model_copy(
        update={"topic_prefix": prefix, "partitions": 1, "input_timestamps": "CreateTime"}
    )
    settings = settings.model_copy(update={"kafka": kafka})
    scenario = load_scenario(scenario_path)
    prepare_topics(settings)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    building = db_path.with_name(db_path.name + ".building")
    _remove_db(building)
    try:
        run = _run(settings, building, scenario, read_models_dir, seed, workers, duration_ms,
                   progress, timeout_s)  # fmt: skip
    except BaseException:
        _remove_db(building)
        raise
    _remove_db(db_path)
    os.replace(building, db_path)
    return run


def _run(
    settings: Settings,
    building: Path,
    scenario: Scenario,
    read_models_dir: Path | None,
    seed: int,
    workers: int | None,
    duration_ms: int | None,
    progress: Callable[[float], None] | None,
    timeout_s: float,
) -> KafkaDemoRun:
    prefix = settings.kafka.topic_prefix
    with tempfile.TemporaryDirectory(prefix="faultstream-demo-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        env = service_env(settings, work)
        services: list[Service] = []

        def start(name: str, args: list[str]) -> None:
            service = Service(name, args, env, work)
            # Registered at once: stopped on every way out, failures included.
            stack.callback(service.stop)
            services.append(service)

        def alive() -> None:
            for service in services:
                service.check()

        if not processor_running(settings):
            start("processor", ["processor", "--web-port", str(free_port())])
        models = read_models_dir or work / "read-models"
        start(
            "projector",
            ["projector", "--db", str(building), "--read-models", str(models),
             "--no-api", "--publish-interval", "0.5"],
        )  # fmt: skip
        bridge = LockstepBridge(
            settings, spool_path=work / "spool.jsonl", timeout_s=timeout_s, alive=alive
        )
        try:
            coordinator = Coordinator(settings.core, source=bridge.drain)
            simulator = FleetSimulator(
                scenario,
                transport=bridge,
                send_control=bridge.send_control,
                coordinator=coordinator,
                seed=seed,
                workers=workers,
                duration_ms=duration_ms,
            )
            simulator.run(progress)
            coordinator.pump()
            bridge.finish()
        finally:
            bridge.close()
        _await_projection(services[-1], models, building, bridge.inputs, bridge.derived)
        started = [service.name for service in services]
    return KafkaDemoRun(simulator, coordinator, prefix, bridge.inputs, bridge.derived, started)


def _await_projection(
    projector: Service, models_dir: Path, db: Path, inputs: int, derived: int
) -> None:
    """Stop the projector once it has landed every record of the run.

    While it runs the projector holds the DuckDB file; its progress shows in the read
    models it publishes (row counts in the manifest). The file is checked after the stop."""
    deadline = time.monotonic() + _PROJECTION_TIMEOUT_S
    while time.monotonic() < deadline:
        projector.check()
        published = _counts_in_manifest(models_dir)
        if published[0] >= inputs and published[1] >= derived:
            break
        time.sleep(0.2)
    code = projector.stop()
    if code not in (0, -signal.SIGTERM):
        raise FaultstreamError(
            f"faultstream projector stopped with code {code}; its log ends:\n{projector.tail()}"
        )
    landed = _counts_in_db(db)
    if landed[0] < inputs or landed[1] < derived:
        raise FaultstreamError(
            f"the projector landed {landed[0]}/{inputs} input and {landed[1]}/{derived} "
            f"derived records in {_PROJECTION_TIMEOUT_S:.0f} s; its log ends:\n"
            f"{projector.tail()}"
        )


def _counts_in_manifest(models_dir: Path) -> tuple[int, int]:
    manifest = Manifest.load(models_dir)
    if manifest is None:
        return 0, 0

    def rows(*tables: str) -> int:
        return sum(int(part[1]) for table in tables for part in manifest.files.get(table, []))

    return rows(*_INPUT_TABLES), rows(*_DERIVED_TABLES)


def _counts_in_db(db: Path) -> tuple[int, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:

        def rows(*tables: str) -> int:
            return sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)

        return rows(*_INPUT_TABLES), rows(*_DERIVED_TABLES)
    finally:
        con.close()


def _remove_db(path: Path) -> None:
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
