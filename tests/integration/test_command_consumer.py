"""The recovery-command consumer on the real broker: at-least-once, no repeats, filters."""

from __future__ import annotations

import argparse

import pytest
from producers import ordered_producer

from faultstream.cli import commands as commands_cli
from faultstream.events.admin import create_topics
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.consumer import CommandConsumer
from faultstream.events.models import RecoveryCommand

pytestmark = pytest.mark.kafka


def _command(command_id: str, worker_id: str = "w1", **fields) -> RecoveryCommand:
    base = {
        "command_id": command_id, "ts": 1, "task_id": f"task-{command_id}", "task_type": "bert",
        "worker_id": worker_id, "strategy": "DIFFERENT_WORKER", "attempt": 1, "delay_s": 0.0,
        "reason": "ladder", "caused_by": f"event-{command_id}",
    }  # fmt: skip
    return RecoveryCommand(**(base | fields))


def _produce(settings: Settings, *values: RecoveryCommand | bytes) -> None:
    create_topics(settings.kafka)
    producer = ordered_producer(settings.kafka.bootstrap_servers)
    codec = Codec()
    for value in values:
        if isinstance(value, RecoveryCommand):
            # One key for all, so they sit in one partition in this order.
            producer.produce(settings.kafka.topic("commands"), codec.encode(value), b"k")
        else:
            producer.produce(settings.kafka.topic("commands"), value, b"k")
    assert producer.flush(30) == 0


def _drain(settings: Settings, group_id: str, **filters) -> list[str]:
    handled: list[str] = []
    with CommandConsumer(settings, group_id=group_id, from_beginning=True, **filters) as c:
        c.handle(lambda command: handled.append(command.command_id), follow=False)
    return handled


def test_handler_that_raises_gets_the_same_command_again_after_the_consumer_restarts(
    kafka_settings: Settings,
) -> None:
    _produce(kafka_settings, _command("a"), _command("b"))
    seen: list[str] = []

    def crashing_handler(command: RecoveryCommand) -> None:
        seen.append(command.command_id)
        if command.command_id == "b":
            raise RuntimeError("coordinator crashed mid-command")

    with (
        pytest.raises(RuntimeError),
        CommandConsumer(kafka_settings, group_id="coord", from_beginning=True) as consumer,
    ):
        consumer.handle(crashing_handler, follow=False)
    assert seen == ["a", "b"]

    # "a" was committed, "b" was not: the next consumer of the group starts at "b".
    assert _drain(kafka_settings, "coord") == ["b"]
    assert _drain(kafka_settings, "coord") == []


def test_same_command_id_produced_twice_is_handled_once(kafka_settings: Settings) -> None:
    _produce(kafka_settings, _command("a"), _command("b"), _command("a"))
    assert _drain(kafka_settings, "coord") == ["a", "b"]


def test_worker_filter_selects_commands_where_it_failed_or_is_the_target(
    kafka_settings: Settings,
) -> None:
    _produce(
        kafka_settings,
        _command("failed-here", worker_id="w1"),
        _command("moved-here", worker_id="w2", target_worker_id="w1"),
        _command("elsewhere", worker_id="w3", target_worker_id="w4"),
    )
    assert _drain(kafka_settings, "w1", worker_id="w1") == ["failed-here", "moved-here"]
    assert _drain(kafka_settings, "t", task_id="task-elsewhere") == ["elsewhere"]


def test_undecodable_record_is_skipped_and_the_rest_handled(kafka_settings: Settings) -> None:
    _produce(kafka_settings, b"\x07not avro", _command("a"))
    assert _drain(kafka_settings, "coord") == ["a"]


def test_commands_cli_prints_json_lines_and_exits_after_draining(
    kafka_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _produce(kafka_settings, _command("a", worker_id="w1"), _command("b", worker_id="w2"))
    parser = argparse.ArgumentParser()
    commands_cli.register(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["commands", "--worker-id", "w2", "--from-beginning"])
    assert args.run(args, kafka_settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('{"type":"recovery_command","command_id":"b",')
