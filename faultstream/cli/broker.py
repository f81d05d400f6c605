"""`faultstream broker start|stop|status`: the local single-node Kafka (KRaft)."""

from __future__ import annotations

import argparse

from faultstream import broker
from faultstream.broker_security import SASL_USERNAME, SCRAM_MECHANISM, SecuredListener
from faultstream.events.config import BrokerSettings, Settings


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "broker",
        parents=[common],
        help="start, stop or check the local single-node Kafka broker (KRaft, no Docker)",
        description="A local Apache Kafka in KRaft mode on 127.0.0.1; its jars are fetched "
        "from Maven Central with Maven on first use and cached (needs Java 17+ and mvn).",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=_port, help="PLAINTEXT port (default: broker.port, 9092)")
    parser.add_argument(
        "--controller-port",
        type=_port,
        help="KRaft controller port (default: broker.controller_port, 9093)",
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
