"""Consumers for coordinators, workers and operators: at-least-once, no repeats.

A record's offset is committed only after its handler returned, so a crash redelivers it.
Handlers must therefore be idempotent by the record's key: a restarted consumer may see a
record again (this process remembers the keys it handled, a restart does not), which is
why the processors derive command and alert ids deterministically from the causing event.
`CommandConsumer` reads recovery commands (`faultstream commands`, a coordinator);
`events/alert_consumer.py` reads alerts the same way (`faultstream alerts`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

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

R = TypeVar("R")


class RecordConsumer(AbstractContextManager[Any], Generic[R]):
    """Records of one type from one topic of the pipeline, as a consumer group.

    Subclasses name the record type and the key that tells a record handled before
    (`handled_key`, None: not for this consumer)."""

    record_type: type
    what = "record"  # in log lines

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        group_id: str,
        from_beginning: bool = False,
        codec: Codec | None = None,
        client: dict[str, Any] | None = None,
    ) -> None:
        kafka = settings.kafka
        self.topic = kafka.topic(topic)
        self.codec = codec or Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
        self._consumer = Consumer(
            librdkafka_config(
                kafka,
                {
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest" if from_beginning else "latest",
                    "enable.partition.eof": True,
                    **(client or {}),
                },
            )
        )
        self._consumer.subscribe([self.topic])
        self._handled: OrderedDict[Hashable, None] = OrderedDict()
        self._at_end: set[tuple[str, int]] = set()

    def handled_key(self, record: R) -> Hashable | None:
        raise NotImplementedError

    def handle(
        self,
        handler: Callable[[R], None],
        *,
        follow: bool = True,
        idle_timeout_s: float | None = None,
    ) -> int:
        """Call `handler` for each wanted record not handled before; returns how many.

        The offset is committed after the handler returns. If it raises, the error
        propagates and the record is not committed: this consumer is rewound to it, so
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
                    raise FaultstreamError(f"{self.what} consumer failed: {error.str()}")
                else:
                    log.warning("%s consumer: %s", self.what, error.str())
                continue
            self._at_end.discard((msg.topic(), msg.partition()))
            record = self._decode(msg)
            key = None if record is None else self.handled_key(record)
            if key is not None and key not in self._handled:
                try:
                    handler(record)  # type: ignore[arg-type]
                except BaseException:
                    self._rewind(msg)
                    raise
                self._remember(key)
                handled += 1
            self._commit(msg)

    def _commit(self, msg: Message) -> None:
        try:
            self._consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            # E.g. the partition moved to another member while the handler ran: that
            # member starts after the last commit, so the record is handled again there.
            log.warning("%s %s[%d]@%d handled but not committed (%s): it will be handled "
                        "again", self.what, msg.topic(), msg.partition(), msg.offset(),
                        exc.args[0].str())  # fmt: skip

    def _remember(self, key: Hashable) -> None:
        self._handled[key] = None
        if len(self._handled) > HANDLED_IDS_KEPT:
            self._handled.popitem(last=False)

    def _decode(self, msg: Message) -> R | None:
        try:
            record = self.codec.decode(msg.value() or b"")
        except FaultstreamError as exc:
            # The processor dead-letters its own inputs; a bad record here is only skipped.
            log.warning("skipping undecodable record %s[%d]@%d: %s",
                        msg.topic(), msg.partition(), msg.offset(), exc)  # fmt: skip
            return None
        if not isinstance(record, self.record_type):
            log.warning("skipping a %s on %s", type(record).__name__, msg.topic())
            return None
        return record  # type: ignore[return-value]

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


class CommandConsumer(RecordConsumer[RecoveryCommand]):
    """Recovery commands from `<prefix>.commands`, for one worker or task or all."""

    record_type = RecoveryCommand
    what = "command"

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
        super().__init__(
            settings, "commands", group_id=group_id, from_beginning=from_beginning, codec=codec
        )
        self.worker_id = worker_id
        self.task_id = task_id

    def wants(self, command: RecoveryCommand) -> bool:
        """Whether this consumer's filter selects `command`."""
        if self.worker_id is not None and self.worker_id not in (
            command.worker_id,
            command.target_worker_id,
        ):
            return False
        return self.task_id is None or command.task_id == self.task_id

    def handled_key(self, record: RecoveryCommand) -> str | None:
        return record.command_id if self.wants(record) else None

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
            self._commit(msg)

    def seen(self, command_id: str) -> bool:
        return command_id in self._handled
