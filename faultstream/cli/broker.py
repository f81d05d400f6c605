"""`faultstream broker start|stop|status`: a local Kafka (KRaft), one node or a cluster."""

from __future__ import annotations

import argparse

from faultstream import broker, cluster
from faultstream.broker import BrokerError
from faultstream.broker_security import SASL_USERNAME, SCRAM_MECHANISM, SecuredListener
from faultstream.events.config import BrokerSettings, Settings


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "broker",
        parents=[common],
        help="start, stop or check a local Kafka broker or cluster (KRaft, no Docker)",
        description="A local Apache Kafka in KRaft mode on 127.0.0.1, one node or a cluster "
        "(--nodes 3); its jars are fetched from Maven Central with Maven on first use and "
        "cached (needs Java 17+ and mvn). `stop` returns once every process has exited.",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--port",
        type=_port,
        help="PLAINTEXT port (default: broker.port, 9092); node i of a cluster: port+2(i-1)",
    )
    parser.add_argument(
        "--controller-port",
        type=_port,
        help="KRaft controller port (default: broker.controller_port, 9093); node i of a "
        "cluster: controller-port+2(i-1)",
    )
    parser.add_argument(
        "--nodes",
        type=_count,
        help="start: a cluster of this many nodes, each a broker and a controller, in "
        "<state-dir>/node-<i> (default: 1, or the nodes of the cluster already there)",
    )
    parser.add_argument(
        "--node",
        type=_count,
        help="start/stop: only this node of the cluster (a failover drill)",
    )
    parser.add_argument(
        "--kill",
        action="store_true",
        help="stop: SIGKILL, as a crash would, instead of a clean shutdown",
    )
    parser.add_argument(
        "--state-dir", help="server.properties, data, log and pid (default: .faultstream/broker)"
    )
    parser.add_argument(
        "--sasl-ssl",
        action="store_true",
        help="start: add a SASL_SSL listener (SCRAM-SHA-512 user, certificates of a private "
        "CA) for clients; their settings go to <state-dir>/sasl-ssl/client.toml. Use a fresh "
        "--state-dir: the user is created when the storage is first formatted",
    )
    parser.add_argument(
        "--sasl-ssl-port",
        type=_port,
        default=9094,
        help="port of the SASL_SSL listener (default 9094)",
    )
    parser.set_defaults(run=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {port}")
    return port


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {count}")
    return count


def _effective(args: argparse.Namespace, settings: Settings) -> BrokerSettings:
    overrides = {
        "port": args.port,
        "controller_port": args.controller_port,
        "state_dir": args.state_dir,
    }
    data = settings.broker.model_dump()
    data.update({key: value for key, value in overrides.items() if value is not None})
    return BrokerSettings.model_validate(data)


def run(args: argparse.Namespace, settings: Settings) -> int:
    effective = _effective(args, settings)
    existing = cluster.node_ids(effective)
    if args.kill and args.action != "stop":
        raise BrokerError("--kill goes with stop")
    if (args.node or args.kill) and not existing:
        raise BrokerError(
            f"--{'node' if args.node else 'kill'}: {effective.state_dir} holds no cluster "
            "(start one with --nodes 3)"
        )
    if existing or (args.nodes or 1) > 1:
        return _run_cluster(args, effective, args.nodes or len(existing))
    if args.action == "start":
        status, started = broker.start(
            effective, sasl_ssl_port=args.sasl_ssl_port if args.sasl_ssl else None
        )
        verb = "started" if started else "already running"
        print(f"broker {verb} at {status.bootstrap} (pid {status.pid}, {status.state_dir})")
        _print_sasl_ssl(status)
        if args.sasl_ssl and status.sasl_ssl_bootstrap is None:
            print("(without a SASL_SSL listener: a secured broker needs a fresh --state-dir)")
        return 0
    if args.action == "stop":
        stopped = broker.stop(effective)
        if stopped is None:
            print("broker not running")
        else:
            print(f"broker stopped (was pid {stopped.pid} at {stopped.bootstrap})")
        return 0
    status = broker.status(effective)
    if status is None:
        print("broker not running")
        return 1
    print(f"broker running at {status.bootstrap} (pid {status.pid}, {status.state_dir})")
    _print_sasl_ssl(status)
    return 0


def _run_cluster(args: argparse.Namespace, effective: BrokerSettings, nodes: int) -> int:
    if args.sasl_ssl:
        raise BrokerError("--sasl-ssl: a SASL_SSL listener is for a single node (no --nodes)")
    if args.action == "start":
        status, started = cluster.start(effective, nodes, node=args.node)
        if started:
            which = ", ".join(map(str, started))
            print(f"cluster of {len(status.nodes)} nodes: started node {which}")
        else:
            print(f"cluster of {len(status.nodes)} nodes: already running")
        _print_nodes(status)
        return 0
    if args.action == "stop":
        if args.kill:
            if args.node is None:
                raise BrokerError("--kill: name the node to kill with --node")
            killed = cluster.kill(effective, args.node)
            if killed is None:
                print(f"node {args.node} not running")
            else:
                print(f"node {args.node} killed (was pid {killed.pid} at {killed.bootstrap})")
            return 0
        stopped = cluster.stop(effective, node=args.node)
        if not stopped:
            print("node not running" if args.node else "cluster not running")
        for node in stopped:
            print(f"node {node.node_id} stopped (was pid {node.pid} at {node.bootstrap})")
        return 0
    status = cluster.status(effective)
    if status is None:  # `status --nodes 3` before the first start
        print("cluster not running")
        return 1
    _print_nodes(status)
    return 0 if len(status.running) == len(status.nodes) else 1


def _print_nodes(status: cluster.ClusterStatus) -> None:
    print(
        f"cluster in {status.state_dir}: {len(status.running)} of {len(status.nodes)} nodes "
        f"running; bootstrap servers {status.bootstrap}"
    )
    for node in status.nodes:
        if node.pid is None:
            print(f"node {node.node_id}: not running ({node.bootstrap})")
        else:
            print(f"node {node.node_id}: running at {node.bootstrap} (pid {node.pid})")


def _print_sasl_ssl(status: broker.BrokerStatus) -> None:
    """Where the SASL_SSL listener is and the settings a client needs; the password stays
    in the client file (mode 600), never on the terminal."""
    if status.sasl_ssl_bootstrap is None or status.client_config is None:
        return
    listener = SecuredListener.of(status.state_dir)
    print(
        f"SASL_SSL listener at {status.sasl_ssl_bootstrap}: user {SASL_USERNAME} "
        f"({SCRAM_MECHANISM}), CA certificate {listener.ca_cert}"
    )
    print(f"client settings, password included: faultstream --config {status.client_config} …")
