"""The recovery-command consumer for coordinators and workers: at-least-once, no repeats.

A command's offset is committed only after its handler returned, so a crash redelivers
it. Handlers must therefore be idempotent by `command_id`: a restarted consumer may see a
command again (this process remembers the ids it handled, a restart does not), which is
why the processors derive command ids deterministically from the causing event.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from .codec import Codec
from .config import Settings
from .exceptions import FaultstreamError
from .kafka_clients import librdkafka_config
from .models import RecoveryCommand

log = logging.getLogger(__name__)

HANDLED_IDS_KEPT = 100_000
_POLL_S = 0.2
# Without --follow, how long to wait for a partition assignment or the next record.
DEFAULT_DRAIN_IDLE_S = 30.0


class CommandConsumer(AbstractContextManager["CommandConsumer"]):
    """Recovery commands from `<prefix>.commands`, for one worker or task or all."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        worker_id: str | None = None,
        task_id: str | None = None,
        from_beginning: bool = False,
        codec: Codec | None = None,
    ) -> None:
        kafka = settings.kafka
        self.topic = kafka.topic("commands")
        self.worker_id = worker_id
        self.task_id = task_id
        self.codec = codec or Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
        self._consumer = Consumer(
            librdkafka_config(
                kafka,
                {
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest" if from_beginning else "latest",
                    "enable.partition.eof": True,
                },
            )
        )
        self._consumer.subscribe([self.topic])
        self._handled: OrderedDict[str, None] = OrderedDict()
        self._at_end: set[tuple[str, int]] = set()

    def wants(self, command: RecoveryCommand) -> bool:
        """Whether this consumer's filter selects `command`."""
        if self.worker_id is not None and self.worker_id not in (
            command.worker_id,
            command.target_worker_id,
        ):
            return False
        return self.task_id is None or command.task_id == self.task_id

    def handle(
        self,
        handler: Callable[[RecoveryCommand], None],
        *,
        follow: bool = True,
        idle_timeout_s: float | None = None,
    ) -> int:
        """Call `handler` for each wanted command not handled before; returns how many.

        The offset is committed after the handler returns. If it raises, the error
        propagates and the command is not committed: this consumer is rewound to it, so
        the next `handle` (or the next consumer of the group) gets it again. Without
        `follow`, returns once every assigned partition is read to its end.
        """
        if idle_timeout_s is None and not follow:
            idle_timeout_s = DEFAULT_DRAIN_IDLE_S
        handled = 0
        last_activity = time.monotonic()
        while True:
            msg = self._consumer.poll(_POLL_S)
            if msg is None:
                if not follow and self._drained():
                    return handled
                if idle_timeout_s is not None and time.monotonic() - last_activity > idle_timeout_s:
                    return handled
                continue
            last_activity = time.monotonic()
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add((msg.topic(), msg.partition()))
                    if not follow and self._drained():
                        return handled
                elif error.fatal():
                    raise FaultstreamError(f"command consumer failed: {error.str()}")
                else:
                    log.warning("command consumer: %s", error.str())
                continue
            self._at_end.discard((msg.topic(), msg.partition()))
            command = self._decode(msg)
            if command is not None and self.wants(command) and not self.seen(command.command_id):
                try:
                    handler(command)
                except BaseException:
                    self._rewind(msg)
                    raise
                self._remember(command.command_id)
                handled += 1
            self._consumer.commit(message=msg, asynchronous=False)

    def __iter__(self) -> Iterator[RecoveryCommand]:
        """Follow the topic, committing each command when the loop asks for the next."""
        while True:
            msg = self._consumer.poll(_POLL_S)
            if msg is None or msg.error() is not None:
                continue
            command = self._decode(msg)
            if command is not None and self.wants(command) and not self.seen(command.command_id):
                yield command
                self._remember(command.command_id)
            self._consumer.commit(message=msg, asynchronous=False)

    def seen(self, command_id: str) -> bool:
        return command_id in self._handled

    def _remember(self, command_id: str) -> None:
        self._handled[command_id] = None
        if len(self._handled) > HANDLED_IDS_KEPT:
            self._handled.popitem(last=False)

    def _decode(self, msg: Message) -> RecoveryCommand | None:
        try:
            record = self.codec.decode(msg.value() or b"")
        except FaultstreamError as exc:
            # The processor dead-letters its own inputs; a bad command is only skipped.
            log.warning(
                "skipping undecodable record %s[%d]@%d: %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                exc,
            )
            return None
        if not isinstance(record, RecoveryCommand):
            log.warning("skipping a %s on %s", type(record).__name__, msg.topic())
            return None
        return record

    def _rewind(self, msg: Message) -> None:
        try:
            self._consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
        except Exception as exc:  # e.g. the partition was revoked meanwhile
            log.warning("could not rewind to %s: %s", msg.offset(), exc)

    def _drained(self) -> bool:
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        return bool(assigned) and assigned <= self._at_end

    def close(self) -> None:
        self._consumer.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
