"""`faultstream topics create|list`: the topics of CONTRACT.md under the configured prefix."""

from __future__ import annotations

import argparse

from faultstream.events.admin import create_topics, describe_topics, topic_specs
from faultstream.events.config import Settings

from .arguments import topic_prefix, with_kafka_flags


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "topics",
        parents=[common],
        help="create or list the Kafka topics (events, control, circuits, commands, dlq, …)",
        description="`create` makes every topic with its partitions, retention and clean-up "
        "policy and is safe to run again; `list` shows the prefix's topics on the broker.",
    )
    parser.add_argument("action", choices=["create", "list"])
    parser.add_argument(
        "--bootstrap-servers", help="Kafka address (default: kafka.bootstrap_servers)"
    )
    parser.add_argument(
        "--prefix", type=topic_prefix, help="topic prefix (default: kafka.topic_prefix)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    kafka = with_kafka_flags(settings, args.bootstrap_servers, args.prefix).kafka
    if args.action == "create":
        created = set(create_topics(kafka))
        for spec in topic_specs(kafka):
            outcome = "created" if spec.name in created else "already exists"
            policy = spec.config.get("cleanup.policy", "delete")
            print(f"{spec.name}: {outcome} ({_partitions(spec.partitions)}, {policy})")
        return 0
    for name, partitions in describe_topics(kafka).items():
        print(f"{name}\t{_partitions(partitions)}")
    return 0


def _partitions(count: int) -> str:
    return f"{count} partition" if count == 1 else f"{count} partitions"
