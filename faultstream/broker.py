"""A local single-node Apache Kafka (KRaft) for development and CI, without Docker.

The broker's jars come from Maven Central through Maven on first use and are cached per
version; each state directory holds one broker: its server.properties, log4j config,
data, log file and pid file. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from faultstream.events.admin import min_insync_replicas
from faultstream.events.config import BrokerSettings
from faultstream.events.exceptions import FaultstreamError

from .broker_security import (
    LISTENER,
    SecuredListener,
    ensure_credentials,
    listener_properties,
    scram_format_arguments,
    write_client_config,
)

MIN_JAVA = 17
# Kafka logs through slf4j; without a binding it falls back to the NOP logger and the
# broker log would be empty. This is the binding the Kafka distribution itself ships.
_SLF4J_BINDING = ("org.slf4j", "slf4j-reload4j", "1.7.36")
_READY_MARKER = ".complete"


class BrokerError(FaultstreamError):
    """The local broker cannot be fetched, started or stopped; the message says why."""


@dataclass(frozen=True)
class BrokerPaths:
    """Where one broker keeps its files."""

    state_dir: Path
    jar_dir: Path  # <cache>/<version>; libs/ inside

    @classmethod
    def of(cls, settings: BrokerSettings) -> BrokerPaths:
        cache = Path(settings.cache_dir).expanduser().resolve()
        return cls(Path(settings.state_dir).expanduser().resolve(), cache / settings.kafka_version)

    @property
    def libs(self) -> Path:
        return self.jar_dir / "libs"

    @property
    def server_properties(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def log4j_properties(self) -> Path:
        return self.state_dir / "log4j.properties"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def gc_log(self) -> Path:
        return self.state_dir / "gc.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "broker.pid"


@dataclass(frozen=True)
class BrokerStatus:
    pid: int
    bootstrap: str
    state_dir: Path
    # The SASL_SSL listener's address, when the broker runs one (`start(sasl_ssl_port=…)`).
    sasl_ssl_bootstrap: str | None = None

    @property
    def client_config(self) -> Path | None:
        """The `[kafka]` settings (password included) for a client of the SASL_SSL listener."""
        if self.sasl_ssl_bootstrap is None:
            return None
        return SecuredListener.of(self.state_dir).client_config


# --- tools --------------------------------------------------------------------------


def require_java() -> str:
    """The path of a `java` of version 17 or later, or BrokerError."""
    java = shutil.which("java")
    if java is None:
        raise BrokerError(f"java not found on PATH (the broker needs Java {MIN_JAVA}+)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    # `java -version` prints e.g. `openjdk version "17.0.15"` or `"1.8.0_392"` on stderr.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise BrokerError(f"cannot tell the version of {java} (the broker needs Java {MIN_JAVA}+)")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise BrokerError(f"{java} is Java {major}; the broker needs Java {MIN_JAVA}+")
    return java


def ensure_jars(settings: BrokerSettings, progress: TextIO = sys.stderr) -> Path:
    """The folder of the broker's jars, fetched with Maven on first use only."""
    paths = BrokerPaths.of(settings)
    if (paths.libs / _READY_MARKER).is_file():
        return paths.libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            f"mvn not found on PATH (needed once to fetch the Kafka {settings.kafka_version} jars)"
        )
    print(
        f"fetching Kafka {settings.kafka_version} jars with Maven (first use only)…",
        file=progress,
        flush=True,
    )
    paths.jar_dir.mkdir(parents=True, exist_ok=True)
    pom = paths.jar_dir / "pom.xml"
    pom.write_text(_pom(settings.kafka_version))
    # Copy into a scratch folder first so an interrupted fetch never looks complete.
    scratch = paths.jar_dir / "libs.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    mvn_log = paths.jar_dir / "mvn.log"
    with mvn_log.open("w") as log:
        done = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={scratch}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0 or not any(scratch.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven could not fetch the Kafka jars; see {mvn_log}")
    shutil.rmtree(paths.libs, ignore_errors=True)
    scratch.rename(paths.libs)
    (paths.libs / _READY_MARKER).write_text(settings.kafka_version + "\n")
    return paths.libs


def _pom(version: str) -> str:
    group, artifact, binding_version = _SLF4J_BINDING
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>faultstream</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{binding_version}</version>
    </dependency>
  </dependencies>
</project>
"""


# --- configuration files ------------------------------------------------------------


def server_properties(
    settings: BrokerSettings,
    data_dir: Path,
    secured: tuple[SecuredListener, int] | None = None,
    *,
    node_id: int = 1,
    voters: str | None = None,
    replicas: int = 1,
) -> str:
    """The broker's configuration; `secured` (listener files, port) adds a SASL_SSL
    listener for clients beside PLAINTEXT, which inter-broker traffic keeps using.

    A node of a cluster (faultstream/cluster.py) has its `node_id`, the cluster's `voters`
    (`id@host:controller_port,…`) and `replicas` copies of Kafka's own topics (consumer
    offsets, transactions), 2 of them in sync for a write when there are 3 or more."""
    port, cport = settings.port, settings.controller_port
    listeners = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{cport}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    if secured is not None:
        listeners.append(f"{LISTENER}://127.0.0.1:{secured[1]}")
        advertised.append(f"{LISTENER}://127.0.0.1:{secured[1]}")
        protocols.append(f"{LISTENER}:{LISTENER}")
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@127.0.0.1:{cport}",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "listener.security.protocol.map": ",".join(protocols),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_insync_replicas(replicas)),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    if replicas > 1:
        # Topics created without these (auto-created ones, Faust's own) are replicated too.
        lines["default.replication.factor"] = str(replicas)
        lines["min.insync.replicas"] = str(min_insync_replicas(replicas))
    if secured is not None:
        lines.update(listener_properties(*secured))
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def jvm_options(heap: str, gc_log: Path) -> list[str]:
    """Kafka's own start script's heap and GC options (kafka-run-class.sh): a fixed heap
    and G1 aiming at 20 ms pauses (the JVM's default aim is 200 ms). A young collection
    stops every produce and fetch (19 ms at the median here, up to 80 ms), so the pauses
    are logged, rotated, for reading beside a latency figure."""
    return [
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        f"-Xlog:gc:file={gc_log}:time,uptime:filecount=2,filesize=10m",
    ]


def log4j_properties(log_file: Path) -> str:
    return (
        "log4j.rootLogger=INFO, file\n"
        "log4j.appender.file=org.apache.log4j.FileAppender\n"
        f"log4j.appender.file.File={log_file}\n"
        "log4j.appender.file.Append=true\n"
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        # The state-change and request loggers are chatty at INFO on every topic creation.
        "log4j.logger.state.change.logger=WARN\n"
        "log4j.logger.kafka.request.logger=WARN\n"
    )


def kafka_uuid() -> str:
    """A cluster id in Kafka's form: 16 random bytes, URL-safe base64 without padding.

    Never one starting with "-": the storage tool would read it as an option (Kafka's own
    Uuid.randomUuid redraws those too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def format_storage(
    java: str,
    libs: Path,
    paths: BrokerPaths,
    listener: SecuredListener | None = None,
    cluster_id: str | None = None,
) -> None:
    """Format the data dir once, with `cluster_id` (every node of a cluster the same) or a
    new one."""
    if (paths.data_dir / "meta.properties").is_file():
        return
    # The SCRAM user exists from the first start: KRaft stores it in the metadata log.
    # (The storage tool takes the password as an argument; it runs for a second.)
    scram = scram_format_arguments(listener) if listener is not None else []
    with paths.log_file.open("ab") as log:
        done = subprocess.run(
            [
                java,
                f"-Dlog4j.configuration=file:{paths.log4j_properties}",
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id or kafka_uuid(),
                "-c",
                str(paths.server_properties),
                *scram,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise BrokerError(f"formatting the broker storage failed; see {paths.log_file}")
    if listener is not None:
        listener.formatted_marker.touch()


# --- lifecycle ----------------------------------------------------------------------


def status(settings: BrokerSettings) -> BrokerStatus | None:
    """The running broker of this state dir, or None (a stale pid file is removed)."""
    paths = BrokerPaths.of(settings)
    pid = read_pid(paths.pid_file)
    if pid is None:
        return None
    if not is_alive(pid):
        paths.pid_file.unlink(missing_ok=True)
        return None
    return BrokerStatus(
        pid,
        _bootstrap_of(paths, settings),
        paths.state_dir,
        advertised(paths, LISTENER),
    )


def start(
    settings: BrokerSettings,
    timeout_s: float = 90.0,
    progress: TextIO = sys.stderr,
    *,
    sasl_ssl_port: int | None = None,
) -> tuple[BrokerStatus, bool]:
    """Start the broker (if not already running) and return once it answers.

    With `sasl_ssl_port`, clients also get a SASL_SSL listener there (SCRAM-SHA-512 user,
    certificates of a private CA; see broker_security), and `client.toml` in the state
    dir holds the settings a client needs. Returns the status and whether this call
    started it.
    """
    running = status(settings)
    if running is not None:
        return running, False
    java = require_java()
    libs = ensure_jars(settings, progress)
    paths = BrokerPaths.of(settings)
    ports = (settings.port, settings.controller_port, sasl_ssl_port)
    for port in filter(None, ports):
        if port_in_use(port):
            raise BrokerError(f"port {port} on 127.0.0.1 is already in use (another broker?)")
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    listener: SecuredListener | None = None
    secured: tuple[SecuredListener, int] | None = None
    if sasl_ssl_port is not None:
        listener = SecuredListener.of(paths.state_dir)
        formatted = (paths.data_dir / "meta.properties").is_file()
        if formatted and not listener.formatted_marker.is_file():
            raise BrokerError(
                f"{paths.state_dir} was formatted without --sasl-ssl, so it has no SCRAM "
                "user; use a fresh --state-dir for a secured broker"
            )
        ensure_credentials(listener, java)
        secured = (listener, sasl_ssl_port)
    paths.server_properties.touch()
    # With a SASL_SSL listener it holds the keystore password.
    paths.server_properties.chmod(0o600 if secured else 0o644)
    paths.server_properties.write_text(server_properties(settings, paths.data_dir, secured))
    paths.log4j_properties.write_text(log4j_properties(paths.log_file))
    format_storage(java, libs, paths, listener)
    process = launch(java, libs, settings.heap, paths)
    bootstrap = f"127.0.0.1:{settings.port}"
    deadline = time.monotonic() + timeout_s
    await_ready(
        process,
        paths,
        bootstrap,
        deadline,
        lambda: not sasl_ssl_port or port_in_use(sasl_ssl_port),
    )
    sasl_ssl_bootstrap = None
    if listener is not None:
        sasl_ssl_bootstrap = f"127.0.0.1:{sasl_ssl_port}"
        write_client_config(listener, sasl_ssl_bootstrap)
    return BrokerStatus(process.pid, bootstrap, paths.state_dir, sasl_ssl_bootstrap), True


def launch(java: str, libs: Path, heap: str, paths: BrokerPaths) -> subprocess.Popen:
    """Start the JVM of the broker whose files `paths` holds; its pid goes to the pid file."""
    command = [
        java,
        *jvm_options(heap, paths.gc_log),
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{paths.log4j_properties}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(paths.server_properties),
    ]
    with paths.log_file.open("ab") as log:
        # A new session, so the broker outlives this command and ignores its Ctrl-C.
        process = subprocess.Popen(
            command,
            cwd=paths.state_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    paths.pid_file.write_text(f"{process.pid}\n")
    return process


def await_ready(
    process: subprocess.Popen,
    paths: BrokerPaths,
    bootstrap: str,
    deadline: float,
    also: Callable[[], bool] = lambda: True,
) -> None:
    """Return once the broker serves metadata at `bootstrap` and `also()` holds; BrokerError
    (the broker stopped, pid file removed) if it exits or `deadline` passes first."""
    while not answers(bootstrap) or not also():
        if process.poll() is not None:
            paths.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"the broker exited with code {process.returncode}; see {paths.log_file}"
            )
        if time.monotonic() > deadline:
            terminate([process.pid], grace_s=10.0)
            paths.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"the broker did not answer at {bootstrap} in time; see {paths.log_file}"
            )
        time.sleep(0.5)


def stop(settings: BrokerSettings, timeout_s: float = 30.0) -> BrokerStatus | None:
    """Stop the broker and return once its process has exited: SIGTERM, then SIGKILL
    after `timeout_s`. None if it was not running."""
    running = status(settings)
    if running is None:
        return None
    terminate([running.pid], grace_s=timeout_s)
    BrokerPaths.of(settings).pid_file.unlink(missing_ok=True)
    return running


def terminate(pids: list[int], grace_s: float) -> None:
    """SIGTERM every process of `pids` at once, wait until each has exited, and SIGKILL
    those still alive after `grace_s`. BrokerError if one survives even that."""
    left = list(pids)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if is_alive(pid)]
            if left:
                time.sleep(0.2)
        if not left:
            return
    raise BrokerError(f"broker process {', '.join(map(str, left))} did not exit after SIGKILL")


# --- helpers ------------------------------------------------------------------------


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """True while `pid` is a Kafka broker process with a thread still running.

    The JVM's main thread can be a zombie while its other threads are still shutting
    down (holding the ports and the data dir's lock): the process has exited only when
    every thread has."""
    try:
        # Reap it if it is our own child (a broker started by this same process).
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs: trust the signal check
    try:
        cmdline = (proc / "cmdline").read_bytes()
        running = any(
            _thread_state(task) not in ("Z", "X", "") for task in (proc / "task").iterdir()
        )
    except OSError:
        return False
    # A recycled pid belongs to some other program; an exiting process has released its
    # memory, so its command line reads empty.
    return running and (cmdline == b"" or b"kafka.Kafka" in cmdline)


def _thread_state(task: Path) -> str:
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""  # the thread is gone


def _bootstrap_of(paths: BrokerPaths, settings: BrokerSettings) -> str:
    """The address the running broker advertises (its ports may differ from `settings`)."""
    try:
        text = paths.server_properties.read_text()
    except OSError:
        return f"127.0.0.1:{settings.port}"
    match = re.search(r"^advertised\.listeners=(?:\S*,)?PLAINTEXT://([^,\s]+)", text, re.MULTILINE)
    return match.group(1) if match else f"127.0.0.1:{settings.port}"


def advertised(paths: BrokerPaths, listener: str) -> str | None:
    """The address a running broker advertises for `listener`, if it has one."""
    try:
        text = paths.server_properties.read_text()
    except OSError:
        return None
    pattern = rf"^advertised\.listeners=(?:\S*,)?{listener}://([^,\s]+)"
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1) if match else None


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


_quiet = logging.getLogger("faultstream.broker.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def answers(bootstrap: str) -> bool:
    """True once the broker serves metadata (a plain TCP probe first, to keep it quiet)."""
    return brokers_seen(bootstrap) is not None


def brokers_seen(bootstrap: str) -> set[int] | None:
    """The node ids in the metadata the broker at `bootstrap` serves; None if it does not
    answer (a plain TCP probe first, to keep it quiet)."""
    _, _, port = bootstrap.rpartition(":")
    if not port_in_use(int(port)):
        return None
    from confluent_kafka.admin import AdminClient

    client = AdminClient(
        {"bootstrap.servers": bootstrap, "logger": _quiet, "error_cb": lambda _err: None}
    )
    try:
        return set(client.list_topics(timeout=5).brokers)
    except Exception:
        return None
