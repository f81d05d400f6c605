"""A local Kafka cluster of several KRaft nodes on this machine, for development and drills.

Every node is a broker and a controller (node ids 1..N, all of them voters) with its own
state dir, `<state-dir>/node-<id>/`, laid out as a single broker's (faultstream/broker.py).
Node `i` listens on `port + 2(i-1)` for clients and `controller_port + 2(i-1)` for the
quorum, so the defaults give 9092/9093, 9094/9095, 9096/9097. Every node's storage is
formatted with one cluster id. Kafka's own topics get 3 copies (2 in sync for a write) on
3 or more nodes, like the topics `faultstream topics create` makes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from faultstream import broker
from faultstream.broker import BrokerError, BrokerPaths
from faultstream.events.admin import replication_factor
from faultstream.events.config import BrokerSettings, KafkaSettings

# Each JVM's heap when `broker.heap` is left at its default: the nodes share one machine.
NODE_HEAP = "512m"
_PORT_STEP = 2  # a node's client and controller ports, then the next node's
_NODE_DIR = "node-"


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    bootstrap: str  # its PLAINTEXT address
    state_dir: Path
    pid: int | None  # None: not running

    @property
    def alive(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class ClusterStatus:
    state_dir: Path
    nodes: tuple[NodeStatus, ...]

    @property
    def bootstrap(self) -> str:
        """Every node's address: clients need them all, since any one may be down."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def running(self) -> list[NodeStatus]:
        return [node for node in self.nodes if node.alive]

    def node(self, node_id: int) -> NodeStatus:
        return next(node for node in self.nodes if node.node_id == node_id)


def node_ids(settings: BrokerSettings) -> list[int]:
    """The nodes of the cluster in `settings.state_dir` (empty: it holds no cluster)."""
    root = BrokerPaths.of(settings).state_dir
    if not root.is_dir():
        return []
    found = []
    for child in root.glob(f"{_NODE_DIR}*"):
        suffix = child.name.removeprefix(_NODE_DIR)
        if suffix.isdigit() and (child / "server.properties").is_file():
            found.append(int(suffix))
    return sorted(found)


def node_settings(settings: BrokerSettings, node_id: int) -> BrokerSettings:
    """The settings of one node: its ports, state dir and heap."""
    default_heap = BrokerSettings.model_fields["heap"].default
    step = _PORT_STEP * (node_id - 1)
    return settings.model_copy(
        update={
            "port": settings.port + step,
            "controller_port": settings.controller_port + step,
            "state_dir": str(BrokerPaths.of(settings).state_dir / f"{_NODE_DIR}{node_id}"),
            "heap": NODE_HEAP if settings.heap == default_heap else settings.heap,
        }
    )


def status(settings: BrokerSettings) -> ClusterStatus | None:
    """Each node of the cluster in this state dir, running or not; None if there is none."""
    ids = node_ids(settings)
    if not ids:
        return None
    nodes = []
    for node_id in ids:
        own = node_settings(settings, node_id)
        paths = BrokerPaths.of(own)
        running = broker.status(own)
        address = broker.advertised(paths, "PLAINTEXT") or f"127.0.0.1:{own.port}"
        nodes.append(
            NodeStatus(node_id, address, paths.state_dir, running.pid if running else None)
        )
    return ClusterStatus(BrokerPaths.of(settings).state_dir, tuple(nodes))


def start(
    settings: BrokerSettings,
    nodes: int,
    *,
    node: int | None = None,
    timeout_s: float = 120.0,
    progress: TextIO = sys.stderr,
) -> tuple[ClusterStatus, list[int]]:
    """Start every node of a cluster of `nodes` (or only `node`) that is not running, and
    return once each answers; returns the status and the ids this call started."""
    _check_layout(settings, nodes, node)
    wanted = [node] if node is not None else list(range(1, nodes + 1))
    before = status(settings)
    down = [n for n in wanted if before is None or not _running(before, n)]
    if not down:
        return _status(settings), []
    java = broker.require_java()
    libs = broker.ensure_jars(settings, progress)
    voters = ",".join(
        f"{n}@127.0.0.1:{node_settings(settings, n).controller_port}" for n in range(1, nodes + 1)
    )
    _check_voters(settings, before, voters)
    for node_id in down:
        own = node_settings(settings, node_id)
        for port in (own.port, own.controller_port):
            if broker.port_in_use(port):
                raise BrokerError(
                    f"port {port} of node {node_id} on 127.0.0.1 is already in use "
                    "(another broker?)"
                )
    cluster_id = _cluster_id(settings, nodes) or broker.kafka_uuid()
    # Kafka's own topics (consumer offsets, transactions) by the rule of ours.
    replicas = replication_factor(KafkaSettings(), nodes)
    launched: list[tuple[int, BrokerPaths, subprocess.Popen]] = []
    try:
        for node_id in down:
            own = node_settings(settings, node_id)
            paths = BrokerPaths.of(own)
            paths.state_dir.mkdir(parents=True, exist_ok=True)
            paths.server_properties.write_text(
                broker.server_properties(
                    own, paths.data_dir, node_id=node_id, voters=voters, replicas=replicas
                )
            )
            paths.log4j_properties.write_text(broker.log4j_properties(paths.log_file))
            broker.format_storage(java, libs, paths, cluster_id=cluster_id)
            launched.append((node_id, paths, broker.launch(java, libs, own.heap, paths)))
        # A node answers only once a majority of the voters runs: launch all, then wait.
        deadline = time.monotonic() + timeout_s
        for node_id, paths, process in launched:
            address = f"127.0.0.1:{node_settings(settings, node_id).port}"
            broker.await_ready(process, paths, address, deadline)
        _await_formed(settings, deadline)
    except BaseException:
        broker.terminate([process.pid for _, _, process in launched], grace_s=10.0)
        for _, paths, _ in launched:
            paths.pid_file.unlink(missing_ok=True)
        raise
    return _status(settings), [node_id for node_id, _, _ in launched]


def stop(
    settings: BrokerSettings, *, node: int | None = None, timeout_s: float = 30.0
) -> list[NodeStatus]:
    """Stop every running node (or only `node`) at once and return once each process has
    exited (SIGKILL after `timeout_s`); returns the nodes that were running."""
    current = _status(settings)
    if node is not None and node not in {n.node_id for n in current.nodes}:
        raise BrokerError(f"--node {node}: the cluster in {current.state_dir} has no such node")
    doomed = [n for n in current.running if node is None or n.node_id == node]
    # All at once: each node's broker shuts down while the controller quorum still runs.
    broker.terminate([n.pid for n in doomed if n.pid is not None], grace_s=timeout_s)
    for stopped in doomed:
        (stopped.state_dir / "broker.pid").unlink(missing_ok=True)
    return doomed


def kill(settings: BrokerSettings, node: int, timeout_s: float = 10.0) -> NodeStatus | None:
    """SIGKILL one node, as a crash would, and return once its process is gone; None if it
    was not running."""
    current = _status(settings)
    if node not in {n.node_id for n in current.nodes}:
        raise BrokerError(f"--node {node}: the cluster in {current.state_dir} has no such node")
    target = current.node(node)
    if target.pid is None:
        return None
    os.kill(target.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while broker.is_alive(target.pid):
        if time.monotonic() > deadline:
            raise BrokerError(f"node {node} (pid {target.pid}) did not exit after SIGKILL")
        time.sleep(0.05)
    (target.state_dir / "broker.pid").unlink(missing_ok=True)
    return target


# --- helpers ------------------------------------------------------------------------


def _status(settings: BrokerSettings) -> ClusterStatus:
    found = status(settings)
    if found is None:
        raise BrokerError(f"no cluster in {BrokerPaths.of(settings).state_dir}")
    return found


def _await_formed(settings: BrokerSettings, deadline: float) -> None:
    """Wait until every running node serves metadata naming every running node: clients
    told of fewer brokers drop the others' connections, requests in flight included."""
    while True:
        running = _status(settings).running
        ids = {node.node_id for node in running}
        if all(broker.brokers_seen(node.bootstrap) == ids for node in running):
            return
        if time.monotonic() > deadline:
            raise BrokerError(
                f"the nodes of {_status(settings).state_dir} did not all see each other in time"
            )
        time.sleep(0.2)


def _running(current: ClusterStatus, node_id: int) -> bool:
    return any(n.node_id == node_id and n.alive for n in current.nodes)


def _check_layout(settings: BrokerSettings, nodes: int, node: int | None) -> None:
    """Refuse, in one line, what would make a cluster that cannot form."""
    root = BrokerPaths.of(settings).state_dir
    existing = node_ids(settings)
    if existing and existing != list(range(1, nodes + 1)):
        raise BrokerError(
            f"{root} holds a cluster of {len(existing)} nodes, not {nodes}; use --nodes "
            f"{len(existing)} or a fresh --state-dir"
        )
    if nodes < 2:
        raise BrokerError(f"--nodes {nodes}: a cluster has 2 or more nodes")
    if node is not None and not existing:
        raise BrokerError(f"--node {node}: start the whole cluster first (without --node)")
    if node is not None and not 1 <= node <= nodes:
        raise BrokerError(f"--node {node}: the cluster's nodes are 1 to {nodes}")
    single = BrokerPaths.of(settings)
    if single.data_dir.is_dir() or single.pid_file.is_file():
        raise BrokerError(f"{root} holds a single broker; use a fresh --state-dir for a cluster")
    ports = []
    for node_id in range(1, nodes + 1):
        own = node_settings(settings, node_id)
        ports += [own.port, own.controller_port]
    if max(ports) > 65535:
        raise BrokerError(f"--port/--controller-port: node {nodes}'s ports pass 65535")
    if len(set(ports)) != len(ports):
        raise BrokerError(
            f"--port {settings.port} and --controller-port {settings.controller_port}: node i "
            f"uses port+{_PORT_STEP}(i-1) and controller-port+{_PORT_STEP}(i-1), and these "
            "overlap; choose ports further apart"
        )


def _check_voters(settings: BrokerSettings, current: ClusterStatus | None, voters: str) -> None:
    """A node started beside running ones must name the same controller quorum."""
    for running in current.running if current else []:
        text = (running.state_dir / "server.properties").read_text()
        key = "controller.quorum.voters="
        theirs = next(
            (line[len(key) :] for line in text.splitlines() if line.startswith(key)), None
        )
        if theirs is not None and theirs != voters:
            raise BrokerError(
                f"node {running.node_id} runs with the quorum {theirs}, not {voters}: give "
                "the --port and --controller-port the cluster was started with"
            )


def _cluster_id(settings: BrokerSettings, nodes: int) -> str | None:
    """The id a node of this cluster was formatted with, if one was."""
    for node_id in range(1, nodes + 1):
        meta = BrokerPaths.of(node_settings(settings, node_id)).data_dir / "meta.properties"
        try:
            for line in meta.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
        except OSError:
            continue
    return None
