"""The Faust app's connection to Kafka: its address and security, from `[kafka]`.

The same settings reach the librdkafka and aiokafka clients through
`faultstream.events.kafka_clients`; this is the Faust side of that translation.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from faultstream.events.config import KafkaSettings
from faultstream.events.kafka_clients import (
    SASL_PROTOCOLS,
    TLS_PROTOCOLS,
    refuse_security_client_keys,
    ssl_context,
)

log = logging.getLogger(__name__)


def faust_app_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """`faust.App` keyword arguments for the address and security of `kafka`: `broker`
    and, on a secured cluster, `broker_credentials` (which Faust hands to every aiokafka
    client it makes: consumer, producer, topic creation)."""
    refuse_security_client_keys(kafka)
    unused = sorted(kafka.client)
    if unused:
        # Not an error: tuning meant for the librdkafka clients should not stop the processor.
        log.warning(
            "kafka.client: %s reach only the librdkafka clients (SDK, projector, command "
            "line), not the processor's aiokafka clients",
            ", ".join(unused),
        )
    kwargs: dict[str, Any] = {
        "broker": [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")]
    }
    protocol = kafka.security_protocol
    if protocol in SASL_PROTOCOLS:
        kwargs["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            # With a context Faust speaks SASL_SSL, without one SASL_PLAINTEXT.
            ssl_context=ssl_context(kafka) if protocol in TLS_PROTOCOLS else None,
        )
    elif protocol == "SSL":
        kwargs["broker_credentials"] = faust.SSLCredentials(ssl_context(kafka))
    return kwargs
