"""Argument types and Kafka flags shared by the commands: each refuses a bad value with a
message argparse prints as one line naming the flag."""

from __future__ import annotations

import argparse
import math

from faultstream.events.config import Settings, topic_prefix_problem


def finite_float(text: str) -> float:
    """A number; inf and nan are refused (they pass every `>` check and stall timers)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def topic_prefix(text: str) -> str:
    """--prefix: refused here when it cannot begin a Kafka topic name, before a broker
    would refuse it less clearly."""
    problem = topic_prefix_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def with_kafka_flags(
    settings: Settings, bootstrap_servers: str | None, prefix: str | None
) -> Settings:
    """`settings` with --bootstrap-servers and --prefix (a `topic_prefix`) applied."""
    changes = {"bootstrap_servers": bootstrap_servers, "topic_prefix": prefix}
    kafka = settings.kafka.model_copy(
        update={key: value for key, value in changes.items() if value is not None}
    )
    return settings.model_copy(update={"kafka": kafka})
