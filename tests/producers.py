"""Producers for tests that depend on the order of what they produce."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer


def ordered_producer(bootstrap: str, **config: Any) -> Producer:
    """A producer that keeps each partition in produce order even when a request is retried.

    A plain librdkafka producer keeps many requests in flight; if one fails (as produce
    requests can just after `create_topics`, before the broker leads the new partition) and
    is retried, a later batch may land first. Idempotence makes the broker refuse that.
    """
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, **config})
