"""`faultstream commands`: recovery commands as JSON lines, for one worker, task or all."""

from __future__ import annotations

import argparse

from faultstream.events.admin import KafkaAdminError, describe_topics
from faultstream.events.config import Settings
from faultstream.events.consumer import CommandConsumer
from faultstream.events.models import RecoveryCommand, derived_to_json

from .arguments import seconds, topic_prefix, with_kafka_flags


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "commands",
        parents=[common],
        help="print recovery commands as JSON lines",
        description="Reads <prefix>.commands as a consumer group and prints each command as "
        "a JSON line, committing it once printed. Without --follow it exits when the topic "
        "is read to its end.",
    )
    parser.add_argument("--worker-id", help="only commands for this worker (failed or target)")
    parser.add_argument("--task-id", help="only commands for this task")
    parser.add_argument("--follow", action="store_true", help="keep waiting for new commands")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest command when the group has no committed position",
    )
    parser.add_argument(
        "--group-id", help="consumer group (default: faultstream-commands-<worker|task|all>)"
    )
    parser.add_argument("--idle-timeout", type=seconds, help="stop after this many idle seconds")
    parser.add_argument("--bootstrap-servers", help="default: kafka.bootstrap_servers")
    parser.add_argument(
        "--prefix", type=topic_prefix, help="topic prefix (default: kafka.topic_prefix)"
    )
    parser.set_defaults(run=run)


def _print(command: RecoveryCommand) -> None:
    print(derived_to_json(command), flush=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = with_kafka_flags(settings, args.bootstrap_servers, args.prefix)
    # A consumer waits quietly for a broker that is not there; ask once, in bounded time,
    # so an unreachable broker or a missing topic is said instead of a silent empty exit.
    topic = settings.kafka.topic("commands")
    if topic not in describe_topics(settings.kafka):
        raise KafkaAdminError(
            f"topic {topic} does not exist on {settings.kafka.bootstrap_servers} "
            "(create it with `faultstream topics create`)"
        )
    group_id = args.group_id or f"faultstream-commands-{args.worker_id or args.task_id or 'all'}"
    with CommandConsumer(
        settings,
        group_id=group_id,
        worker_id=args.worker_id,
        task_id=args.task_id,
        from_beginning=args.from_beginning,
    ) as consumer:
        consumer.handle(_print, follow=args.follow, idle_timeout_s=args.idle_timeout)
    return 0
