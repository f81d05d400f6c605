"""The one place that turns `[kafka]` settings into each Kafka client's configuration.

The project speaks to Kafka through two libraries: librdkafka, via confluent-kafka (the
SDK's emitter and command consumer, the admin, the projector, control records for
`tune --apply` and the dashboard's operations, replay and the demo), and aiokafka,
inside Faust (the processor, and the processor's own consumers). Both get the address and
the security settings from here, so a secured cluster needs them once, in `[kafka]`.

A setting one library cannot honour is refused with a line naming it, never dropped:
`[kafka.client]` is librdkafka's own vocabulary, so the processor refuses to start with a
key there that changes security, and says which other keys do not reach it. The password
leaves its SecretStr only into a client's configuration, never into a message.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ClientValue, KafkaSettings
from .exceptions import ConfigError

log = logging.getLogger(__name__)

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
# librdkafka properties that change how a connection is secured. aiokafka has no way to
# take them, so a processor given one would connect differently from every other client.
_SECURITY_PREFIXES = ("security.", "ssl.", "ssl_", "sasl.", "enable.ssl.", "enable.sasl.", "https.")


class KafkaClientConfigError(ConfigError):
    """`[kafka]` settings a client cannot be configured with; the message names the setting."""


def librdkafka_config(
    kafka: KafkaSettings, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A confluent-kafka client's configuration: `config` (what that client needs: its
    group, acks, fetch sizes, callbacks), the `[kafka.client]` table over it, then the
    address and security of `kafka`, which neither may set."""
    merged: dict[str, Any] = dict(config or {})
    merged.update({key: _librdkafka_value(value) for key, value in kafka.client.items()})
    merged["bootstrap.servers"] = kafka.bootstrap_servers
    merged["security.protocol"] = kafka.security_protocol
    if kafka.security_protocol in SASL_PROTOCOLS:
        merged["sasl.mechanisms"] = kafka.sasl_mechanism
        merged["sasl.username"] = kafka.sasl_username
        merged["sasl.password"] = kafka.sasl_password.get_secret_value()
    if kafka.security_protocol in TLS_PROTOCOLS:
        for setting, key in (
            ("ssl_cafile", "ssl.ca.location"),
            ("ssl_certfile", "ssl.certificate.location"),
            ("ssl_keyfile", "ssl.key.location"),
        ):
            path = _tls_file(kafka, setting)
            if path:
                merged[key] = path
    return merged


def aiokafka_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments of an aiokafka client (AIOKafkaConsumer, AIOKafkaProducer) for
    the address and security of `kafka`; refuses `[kafka.client]` keys that change
    security, which aiokafka cannot take."""
    refuse_security_client_keys(kafka)
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in TLS_PROTOCOLS:
        kwargs["ssl_context"] = ssl_context(kafka)
    if kafka.security_protocol in SASL_PROTOCOLS:
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return kwargs


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """A client TLS context (as aiokafka's create_ssl_context makes it): the CA of
    `ssl_cafile` (the system's when empty), the client certificate of `ssl_certfile` and
    `ssl_keyfile` when set; host names are checked."""
    cafile = _tls_file(kafka, "ssl_cafile") or None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except ssl.SSLError as exc:
        raise KafkaClientConfigError(
            f"kafka.ssl_cafile: not a PEM CA file ({exc.reason})"
        ) from None
    certfile = _tls_file(kafka, "ssl_certfile")
    if certfile:
        try:
            context.load_cert_chain(certfile, _tls_file(kafka, "ssl_keyfile"))
        except ssl.SSLError as exc:
            raise KafkaClientConfigError(
                f"kafka.ssl_certfile: cannot load it with kafka.ssl_keyfile ({exc.reason})"
            ) from None
    return context


def refuse_security_client_keys(kafka: KafkaSettings) -> None:
    """Refuse `[kafka.client]` keys that change security: only librdkafka would see them."""
    security = sorted(key for key in kafka.client if key.startswith(_SECURITY_PREFIXES))
    if security:
        raise KafkaClientConfigError(
            f"kafka.client: {', '.join(security)} would change security for the librdkafka "
            "clients only; the processor's aiokafka clients cannot take it (remove it, or "
            "use the [kafka] security settings)"
        )


def kafka_environment(kafka: KafkaSettings) -> dict[str, str]:
    """The environment that hands `kafka` to a child `faultstream` process, password
    included (a dump of the settings would carry only its mask)."""
    data = kafka.model_dump(mode="json")
    data["sasl_password"] = kafka.sasl_password.get_secret_value()
    return {"FAULTSTREAM_KAFKA": json.dumps(data)}


def _tls_file(kafka: KafkaSettings, setting: str) -> str:
    path = getattr(kafka, setting)
    if path and not Path(path).expanduser().is_file():
        raise KafkaClientConfigError(f"kafka.{setting}: no such file: {path}")
    return str(Path(path).expanduser()) if path else ""


def _librdkafka_value(value: ClientValue) -> str | int | float:
    # librdkafka wants "true"/"false", which Python's str(True) is not.
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
