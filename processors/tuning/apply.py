"""`tune --apply`: the winner becomes a CONFIG_CHANGED record on `<prefix>.control`.

The processor adopts it from that record on, and because the record sits in the history,
replay reproduces the change too.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from faultstream.events.codec import Codec
from faultstream.events.config import KafkaSettings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import ConfigChanged

ACTOR = "tune"
_FLUSH_S = 30.0


def config_changed(config: dict[str, Any], ts: int | None = None) -> ConfigChanged:
    """A CONFIG_CHANGED by `tune`; `ts` defaults to now (the tuner is an adapter, not the
    core, so it may read the clock)."""
    return ConfigChanged(
        event_id=f"tune-{uuid.uuid4().hex}",
        ts=ts if ts is not None else int(time.time() * 1000),
        config=config,
        actor=ACTOR,
    )


def publish_control(record: ConfigChanged, kafka: KafkaSettings) -> None:
    """Write one control record to `<prefix>.control`, acknowledged by all replicas."""
    from confluent_kafka import KafkaException, Producer

    codec = Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        producer = Producer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": int(_FLUSH_S * 1000),
            }
        )
        producer.produce(kafka.topic("control"), codec.encode(record), on_delivery=on_delivery)
        left = producer.flush(_FLUSH_S)
    except KafkaException as exc:
        raise FaultstreamError(
            f"--apply: cannot write to {kafka.topic('control')}: {exc}"
        ) from None
    if left or errors:
        why = errors[0] if errors else "not acknowledged in time"
        raise FaultstreamError(f"--apply: {kafka.topic('control')}: {why}")
