"""Writing control records (OPERATOR, CONFIG_CHANGED, TICK) to `<prefix>.control`.

Operators (the dashboard) and the tuner change what the processors do only through this
topic, so every change sits in the history and replay reproduces it.
"""

from __future__ import annotations

from confluent_kafka import KafkaException, Producer

from .codec import Codec
from .config import KafkaSettings
from .exceptions import FaultstreamError
from .kafka_clients import librdkafka_config
from .models import ControlRecord

FLUSH_S = 30.0


def publish_control(record: ControlRecord, kafka: KafkaSettings) -> None:
    """Write one control record, acknowledged by all replicas, or raise naming the topic."""
    topic = kafka.topic("control")
    codec = Codec(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        producer = Producer(
            librdkafka_config(
                kafka,
                {
                    "acks": "all",
                    "enable.idempotence": True,
                    "message.timeout.ms": int(FLUSH_S * 1000),
                },
            )
        )
        producer.produce(topic, codec.encode(record), on_delivery=on_delivery)
        left = producer.flush(FLUSH_S)
    except KafkaException as exc:
        raise FaultstreamError(f"{topic}: cannot write: {exc}") from None
    if left or errors:
        raise FaultstreamError(f"{topic}: {errors[0] if errors else 'not acknowledged in time'}")
