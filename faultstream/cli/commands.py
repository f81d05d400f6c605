"""`faultstream commands`: recovery commands as JSON lines, for one worker, task or all."""

from __future__ import annotations

import argparse

from faultstream.events.config import Settings
from faultstream.events.consumer import CommandConsumer
from faultstream.events.models import RecoveryCommand, derived_to_json


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
    parser.add_argument("--idle-timeout", type=float, help="stop after this many idle seconds")
    parser.add_argument("--bootstrap-servers", help="default: kafka.bootstrap_servers")
    parser.add_argument("--prefix", help="topic prefix (default: kafka.topic_prefix)")
    parser.set_defaults(run=run)


def _print(command: RecoveryCommand) -> None:
    print(derived_to_json(command), flush=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    changes = {"bootstrap_servers": args.bootstrap_servers, "topic_prefix": args.prefix}
    kafka = settings.kafka.model_copy(
        update={key: value for key, value in changes.items() if value is not None}
    )
    settings = settings.model_copy(update={"kafka": kafka})
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
