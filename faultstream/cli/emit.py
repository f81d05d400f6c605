"""`faultstream emit KIND …`: one worker event from a shell-based worker."""

from __future__ import annotations

import argparse
import logging
import sys

from faultstream.events.config import Settings
from faultstream.events.emitter import Emitter, KafkaTransport
from faultstream.events.exceptions import InvalidEventError
from faultstream.events.models import EventKind, FailureType
from faultstream.events.transport import PRODUCER_DEFAULTS

from .arguments import seconds, topic_prefix, with_kafka_flags

_quiet = logging.getLogger("faultstream.cli.emit.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

# librdkafka wants message.timeout.ms above linger.ms, and within a 32-bit int.
_LINGER_MS: int = PRODUCER_DEFAULTS["linger.ms"]
_MAX_TIMEOUT_MS = 2**31 - 1


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    kinds = ", ".join(EventKind)
    parser = subparsers.add_parser(
        "emit",
        parents=[common],
        help="send one worker event (for shell-based workers)",
        description="Sends one worker event to <prefix>.events, waits for the broker's "
        "acknowledgement and prints the event_id. Exit status: 0 when the event was "
        "delivered, and also 0 when the broker could not be reached within --timeout: then "
        "the event is written to the local spool (emitter.spool_path), a warning says so, "
        "and the next `faultstream emit` (or any emitter with that spool) sends it first, "
        "so nothing is lost. 2 for invalid input (the message names the field).",
    )
    parser.add_argument("kind", metavar="KIND", help=f"one of {kinds}")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--hardware-class", required=True, help="e.g. cpu, cuda, webgpu")
    parser.add_argument("--task-id", help="required for every kind but HEARTBEAT")
    parser.add_argument("--task-type", help="required for TASK_STARTED, SUCCESS, FAILURE")
    parser.add_argument(
        "--failure-type", help=f"FAILURE only; one of {', '.join(FailureType)} "
        "(default: classified from --message)"
    )  # fmt: skip
    parser.add_argument("--message", help="error text (at most 4096 characters)")
    parser.add_argument("--attempt", type=int, default=0, help="0 = first try (default 0)")
    parser.add_argument("--recovery-command-id", help="the command this attempt carries out")
    parser.add_argument("--checkpoint-seq", type=int, help="CHECKPOINT only")
    parser.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an attribute (repeatable), e.g. batch_size=32",
    )
    parser.add_argument("--event-id", help="default: a fresh uuid4 (set it to retry safely)")
    parser.add_argument("--ts", type=int, help="event time in epoch ms (default: now)")
    parser.add_argument(
        "--timeout",
        type=ack_timeout,
        default=10.0,
        help="seconds to wait for the acknowledgement before spooling (default 10)",
    )
    parser.add_argument("--bootstrap-servers", help="default: kafka.bootstrap_servers")
    parser.add_argument(
        "--prefix", type=topic_prefix, help="topic prefix (default: kafka.topic_prefix)"
    )
    parser.set_defaults(run=run)


def ack_timeout(text: str) -> float:
    """--timeout: seconds the producer may take, longer than it batches."""
    value = seconds(text)
    if int(value * 1000) <= _LINGER_MS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too short: at least {(_LINGER_MS + 1) / 1000:g} s "
            f"(the producer batches for {_LINGER_MS} ms)"
        )
    if value * 1000 > _MAX_TIMEOUT_MS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too long: at most {_MAX_TIMEOUT_MS // 1000} s"
        )
    return value


def parse_attributes(pairs: list[str]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEventError("attributes", f"{pair!r} is not KEY=VALUE")
        attributes[key] = value
    return attributes


def run(args: argparse.Namespace, settings: Settings) -> int:
    kind = args.kind.upper()
    if kind not in EventKind.__members__:
        raise InvalidEventError(
            "kind", f"unknown kind {args.kind!r} (one of {', '.join(EventKind)})"
        )
    fields = {
        "task_id": args.task_id,
        "task_type": args.task_type,
        "failure_type": args.failure_type,
        "message": args.message,
        "attempt": args.attempt,
        "recovery_command_id": args.recovery_command_id,
        "checkpoint_seq": args.checkpoint_seq,
        "attributes": parse_attributes(args.attribute),
    }
    # Validate before touching the network: bad input sends nothing.
    event = Emitter._build(
        EventKind(kind),
        args.worker_id,
        args.hardware_class,
        event_id=args.event_id,
        ts=args.ts,
        **{key: value for key, value in fields.items() if value is not None},
    )
    settings = with_kafka_flags(settings, args.bootstrap_servers, args.prefix)
    kafka = settings.kafka
    # The warning below says it once; the transport's own log line would repeat it.
    logging.getLogger("faultstream.events.emitter").setLevel(logging.ERROR)
    transport = KafkaTransport(
        settings,
        message_timeout_ms=max(1, int(args.timeout * 1000)),
        producer_config={"logger": _quiet, "error_cb": lambda _err: None},
    )
    transport.send(event)
    undelivered = transport.flush(args.timeout)
    transport.close(0)
    print(event.event_id)
    if undelivered or event.event_id in {e.event_id for e in transport.spool.read()}:
        print(
            f"faultstream emit: warning: broker {kafka.bootstrap_servers} did not acknowledge "
            f"within {args.timeout:g}s; event spooled to {transport.spool.path} and sent by "
            "the next emit",
            file=sys.stderr,
        )
    return 0
