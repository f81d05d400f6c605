"""`faultstream broker start|stop|status`: the local single-node Kafka (KRaft)."""

from __future__ import annotations

import argparse

from faultstream import broker
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
        status, started = broker.start(effective)
        verb = "started" if started else "already running"
        print(f"broker {verb} at {status.bootstrap} (pid {status.pid}, {status.state_dir})")
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
    return 0
