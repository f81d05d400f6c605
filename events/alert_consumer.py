"""The alert consumer behind `faultstream alerts`: at-least-once, offsets after delivery.

Reads `<prefix>.alerts` as a consumer group. An alert's offset is committed only after its
handler returned (for the webhook: after the receiver accepted it), so a crash or a stop
while delivering delivers it again on the next start; nothing is skipped but records that
are not alerts. The same record repeated (a processor re-sending after its restart) is
handled once per process: an alert is known by (alert_id, state), since its FIRING and
RESOLVED records share the alert_id.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from .codec import Codec
from .config import Settings
from .exceptions import FaultstreamError
from .kafka_clients import librdkafka_config
from .models import Alert

log = logging.getLogger(__name__)

HANDLED_KEPT = 100_000
_POLL_S = 0.2
# Without --follow, how long to wait for a partition assignment or the next record.
DEFAULT_DRAIN_IDLE_S = 30.0
# A handler may wait hours for a webhook to come back; librdkafka's largest poll interval
# (a day) keeps the group membership meanwhile (heartbeats go on in the background).
_MAX_POLL_INTERVAL_MS = 86_400_000


class AlertConsumer(AbstractContextManager["AlertConsumer"]):
    """Alerts from `<prefix>.alerts`, in each partition's order (an alert's FIRING and
    RESOLVED share its key, so they share a partition, in that order)."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        from_beginning: bool = False,
        codec: Codec | None = None,
    ) -> None:
        kafka = settings.kafka
        self.topic = kafka.topic("alerts")
        self.codec = codec or Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
        self._consumer = Consumer(
            librdkafka_config(
                kafka,
                {
                    "group.id": group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest" if from_beginning else "latest",
                    "enable.partition.eof": True,
                    "max.poll.interval.ms": _MAX_POLL_INTERVAL_MS,
                },
            )
        )
        self._consumer.subscribe([self.topic])
        self._handled: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._at_end: set[tuple[str, int]] = set()

    def handle(
        self,
        handler: Callable[[Alert], None],
        *,
        follow: bool = True,
        idle_timeout_s: float | None = None,
    ) -> int:
        """Call `handler` for each alert not handled before, committing its offset once the
        handler returned; returns how many it handled. If the handler raises, the alert
        is not committed and the error propagates. Without `follow`, returns once every
        assigned partition is read to its end."""
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
                    raise FaultstreamError(f"alert consumer failed: {error.str()}")
                else:
                    log.warning("alert consumer: %s", error.str())
                continue
            self._at_end.discard((msg.topic(), msg.partition()))
            alert = self._decode(msg)
            if alert is not None and (alert.alert_id, alert.state) not in self._handled:
                try:
                    handler(alert)
                except BaseException:
                    self._rewind(msg)  # the next `handle` gets it again
                    raise
                self._remember((alert.alert_id, alert.state))
                handled += 1
            self._commit(msg)

    def _commit(self, msg: Message) -> None:
        try:
            self._consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            # E.g. the partition moved to another member while the handler waited: that
            # member starts after the last commit, so the alert is delivered again there.
            log.warning("alert %s[%d]@%d handled but not committed (%s): it will be handled "
                        "again", msg.topic(), msg.partition(), msg.offset(),
                        exc.args[0].str())  # fmt: skip

    def _rewind(self, msg: Message) -> None:
        try:
            self._consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
        except KafkaException as exc:  # e.g. the partition was revoked meanwhile
            log.warning("could not rewind to %s: %s", msg.offset(), exc)

    def _remember(self, key: tuple[str, str]) -> None:
        self._handled[key] = None
        if len(self._handled) > HANDLED_KEPT:
            self._handled.popitem(last=False)

    def _decode(self, msg: Message) -> Alert | None:
        try:
            record = self.codec.decode(msg.value() or b"")
        except FaultstreamError as exc:
            log.error("skipping undecodable record %s[%d]@%d: %s",
                      msg.topic(), msg.partition(), msg.offset(), exc)  # fmt: skip
            return None
        if not isinstance(record, Alert):
            log.error("skipping a %s on %s", type(record).__name__, msg.topic())
            return None
        return record

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
