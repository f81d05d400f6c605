"""Reaching the cluster: a metadata probe that explains a failure in one line.

librdkafka reports a refused password, an unknown CA or a protocol mismatch only through
its error callback and log, and keeps retrying; the caller just sees "transport failure"
when its timeout runs out. The probe listens to both, stops at the first error that will
not go away by retrying, and names the `[kafka]` setting at fault.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata

from .config import KafkaSettings
from .exceptions import FaultstreamError
from .kafka_clients import TLS_PROTOCOLS, librdkafka_config

_ATTEMPT_S = 1.0
_SNIFF_TIMEOUT_S = 3.0
_ADDRESS = re.compile(r"\b\w+://([^/\s]+)/")
_OFFERED = re.compile(r"supported mechanisms: ([\w, -]+)")


class KafkaConnectionError(FaultstreamError):
    """The cluster cannot be reached with these settings; `setting` names the one at
    fault (None when nothing answers at all)."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


def cluster_metadata(kafka: KafkaSettings, *, timeout_s: float = 10.0) -> ClusterMetadata:
    """The cluster's metadata, or KafkaConnectionError naming the setting at fault."""
    heard = _Heard()
    admin = AdminClient(
        librdkafka_config(kafka, {"logger": heard.logger, "error_cb": heard.errors.append})
    )
    deadline = time.monotonic() + timeout_s
    sniffed = False
    while True:
        try:
            return admin.list_topics(timeout=max(0.1, min(_ATTEMPT_S, deadline - time.monotonic())))
        except KafkaException as exc:
            failure: KafkaError = exc.args[0]
        admin.poll(0)  # serves the error callbacks and log lines queued meanwhile
        problem = _explain(kafka, heard)
        if problem is None and not sniffed and kafka.security_protocol not in TLS_PROTOCOLS:
            # A TLS listener drops a plaintext client without a word: ask the port itself.
            sniffed = True
            problem = _plaintext_at_tls_port(kafka)
        if problem is not None:
            raise KafkaConnectionError(*problem)
        if time.monotonic() >= deadline:
            raise KafkaConnectionError(
                f"no Kafka broker answers at {kafka.bootstrap_servers} ({failure.str()})"
            )


class _Heard:
    """What a librdkafka client reported: its error callbacks and its log lines."""

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []
        self.lines: list[str] = []
        self.logger = logging.Logger("faultstream.kafka_connection.probe")
        self.logger.addHandler(_Collect(self.lines))

    def texts(self) -> list[str]:
        return [error.str() for error in self.errors] + self.lines


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _explain(kafka: KafkaSettings, heard: _Heard) -> tuple[str, str] | None:
    """(one line, setting) for the first error that retrying will not cure, else None."""
    protocol = kafka.security_protocol
    for text in heard.texts():
        where = _address(text, kafka)
        if "Unsupported SASL mechanism" in text:
            offered = _OFFERED.search(text)
            also = f" (it offers {offered.group(1).strip()})" if offered else ""
            return (
                f"kafka.sasl_mechanism: the broker at {where} does not accept "
                f"{kafka.sasl_mechanism}{also}",
                "sasl_mechanism",
            )
        if "SASL authentication error" in text or "Authentication failed" in text:
            return (
                f"kafka.sasl_password: the broker at {where} refused {kafka.sasl_mechanism} "
                f"authentication of user {kafka.sasl_username!r} (a wrong password, or no "
                "such user: kafka.sasl_username)",
                "sasl_password",
            )
        if "certificate verify failed" in text:
            if "mismatch" in text.lower():
                return (
                    f"kafka.bootstrap_servers: the certificate of the broker at {where} is not "
                    "issued for that host name",
                    "bootstrap_servers",
                )
            signer = (
                f"a CA in {kafka.ssl_cafile}"
                if kafka.ssl_cafile
                else "a CA this system trusts (set kafka.ssl_cafile)"
            )
            return (
                f"kafka.ssl_cafile: the certificate of the broker at {where} is not signed by "
                f"{signer}",
                "ssl_cafile",
            )
        if "connecting to a PLAINTEXT broker listener" in text:
            return (
                f"kafka.security_protocol: {protocol} speaks TLS, but {where} is a listener "
                "without TLS (PLAINTEXT or SASL_PLAINTEXT)",
                "security_protocol",
            )
        if protocol == "SSL" and "closed by peer" in text and "state UP" in text:
            return (
                f"kafka.security_protocol: SSL, but the broker at {where} closes the "
                "connection after TLS is set up: does it expect SASL_SSL?",
                "security_protocol",
            )
    return None


def _plaintext_at_tls_port(kafka: KafkaSettings) -> tuple[str, str] | None:
    protocol = kafka.security_protocol
    for address in kafka.bootstrap_servers.split(","):
        if _speaks_tls(address.strip()):
            return (
                f"kafka.security_protocol: {protocol}, but {address.strip()} expects TLS "
                "(SSL or SASL_SSL)",
                "security_protocol",
            )
    return None


def _speaks_tls(address: str) -> bool:
    """Whether a TLS handshake succeeds at `address` (no certificate check: only asks)."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(
                (host.strip("[]"), int(port)), timeout=_SNIFF_TIMEOUT_S
            ) as raw,
            context.wrap_socket(raw, server_hostname=host.strip("[]")),
        ):
            return True
    except (OSError, ValueError):
        return False


def _address(text: str, kafka: KafkaSettings) -> str:
    match = _ADDRESS.search(text)
    return match.group(1) if match else kafka.bootstrap_servers
