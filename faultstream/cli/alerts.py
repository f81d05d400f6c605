"""`faultstream alerts`: the core's alerts as JSON lines, and posted to a webhook.

From Kafka (`<prefix>.alerts`, a consumer group) each alert is printed once handled; with
a webhook it is first POSTed there until the receiver accepts it, and only then is its
offset committed (events/alert_consumer.py, events/webhook.py). From a history
(`--db`/`--read-models`) the alerts it recorded are printed, oldest first.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from faultstream.events.admin import KafkaAdminError, describe_topics
from faultstream.events.alert_consumer import AlertConsumer
from faultstream.events.config import Settings
from faultstream.events.models import Alert, derived_to_json
from faultstream.events.webhook import Webhook, redacted
from faultstream.logs import add_log_format_option, configure_logging

from . import CliError
from .arguments import seconds, topic_prefix, with_kafka_flags

log = logging.getLogger("faultstream.alerts")

DESCRIPTION = (
    "Reads <prefix>.alerts as a consumer group and prints each alert (FIRING or RESOLVED) "
    "as a JSON line. With --webhook (default: [alerts] webhook_url) each alert is first "
    "POSTed to the URL as a JSON object of its fields, retried with exponential backoff "
    "(capped at a minute) on connection errors and any status but 2xx, for as long as it "
    "takes; a 4xx other than 429 is logged as an error naming the status and retried too, "
    "so nothing is skipped. Its offset is committed only after the receiver accepted it: "
    "after a crash or a stop an alert may be posted again (at least once), so the receiver "
    "dedupes by alert_id and state (also sent as the Idempotency-Key header; an alert's "
    "FIRING and RESOLVED share its alert_id). Without --follow it exits when the topic is "
    "read to its end. With --db or --read-models it prints the alerts a history recorded."
)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "alerts",
        parents=[common],
        help="print alerts as JSON lines, or post them to a webhook",
        description=DESCRIPTION,
    )
    parser.add_argument("--follow", action="store_true", help="keep waiting for new alerts")
    parser.add_argument(
        "--webhook",
        metavar="URL",
        help="POST each alert here before committing it (default: [alerts] webhook_url; "
        "an empty URL only prints); logs name only scheme://host/ of it",
    )
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest alert when the group has no committed position",
    )
    parser.add_argument(
        "--group-id",
        help="consumer group (default: faultstream-alerts, or faultstream-alerts-webhook "
        "with a webhook)",
    )
    parser.add_argument("--idle-timeout", type=seconds, help="stop after this many idle seconds")
    parser.add_argument("--bootstrap-servers", help="default: kafka.bootstrap_servers")
    parser.add_argument(
        "--prefix", type=topic_prefix, help="topic prefix (default: kafka.topic_prefix)"
    )
    add_log_format_option(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help="print the alerts of a DuckDB history")
    where.add_argument(
        "--read-models", metavar="DIR", help="print the alerts of the projector's read models"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.db is not None or args.read_models is not None:
        if args.webhook or args.follow:
            flag = "--webhook" if args.webhook else "--follow"
            raise CliError(f"{flag} reads the alerts topic; --db and --read-models print a "
                           "recorded history")  # fmt: skip
        return _print_history(args, settings)
    url = settings.alerts.webhook_url.get_secret_value() if args.webhook is None else args.webhook
    webhook = Webhook(url) if url else None
    configure_logging(args.log_format, "alerts")  # stderr: stdout holds the JSON lines
    settings = with_kafka_flags(settings, args.bootstrap_servers, args.prefix)
    # A consumer waits quietly for a broker that is not there; ask once, in bounded time,
    # so an unreachable broker or a missing topic is said instead of a silent empty exit.
    topic = settings.kafka.topic("alerts")
    if topic not in describe_topics(settings.kafka):
        raise KafkaAdminError(
            f"topic {topic} does not exist on {settings.kafka.bootstrap_servers} "
            "(create it with `faultstream topics create`)"
        )
    group_id = args.group_id or ("faultstream-alerts-webhook" if webhook else "faultstream-alerts")
    if webhook is not None:
        log.info("posting alerts from %s to %s", topic, redacted(url))
    with AlertConsumer(settings, group_id=group_id, from_beginning=args.from_beginning) as c:
        c.handle(deliverer(webhook), follow=args.follow, idle_timeout_s=args.idle_timeout)
    return 0


def deliverer(webhook: Webhook | None) -> Callable[[Alert], None]:
    """Post an alert until the webhook accepts it (with one), then print it."""

    def deliver(alert: Alert) -> None:
        if webhook is not None:
            webhook.post(webhook_body(alert), idempotency_key=f"{alert.alert_id}:{alert.state}")
        print(derived_to_json(alert), flush=True)

    return deliver


def webhook_body(alert: Alert) -> bytes:
    """What a receiver gets: the alert's fields as one JSON object, in schema order."""
    return alert.model_dump_json().encode()


def _print_history(args: argparse.Namespace, settings: Settings) -> int:
    # The history needs duckdb (the [history] extra): imported only here.
    from faultstream.projections.alerts import all_alerts
    from faultstream.projections.queries import History

    from .dashboard import check_history

    check_history(args.db, args.read_models, db_flag="--db")
    if args.read_models is not None:
        history = History.from_read_models(args.read_models, settings.core)
    else:
        history = History.from_db(args.db, settings.core)
    with history:
        for row in all_alerts(history):
            print(derived_to_json(Alert.model_validate(row)), flush=True)
    return 0
