"""A second local broker with a SASL_SSL listener, for the tests of secured clusters.

The project's own `broker.start(…, sasl_ssl_port=…)` starts it on free ports in a
temporary state directory, once per session, and stops it afterwards: a CA, the broker's
certificate and a SCRAM-SHA-512 user are made at start, so this works on a fresh machine
with what the plain broker needs (Java 17, and Maven or the cached jars). `.ci/run` starts
only the plain broker. Under CI a broker that cannot start fails the tests; elsewhere it
skips them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from faultstream import broker
from faultstream.broker_security import SASL_USERNAME, SecuredListener
from faultstream.events.config import BrokerSettings
from faultstream.events.exceptions import FaultstreamError

# A smaller heap than the default: it runs beside the suite's own broker.
_HEAP = "512m"


@dataclass(frozen=True)
class SecuredCluster:
    """A running broker's SASL_SSL listener and what a client needs to use it."""

    bootstrap: str
    plaintext_bootstrap: str
    cafile: Path
    username: str
    password: str
    state_dir: Path

    def kafka(self, **changes: Any) -> dict[str, Any]:
        """`[kafka]` settings for this listener, with `changes` applied."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": self.username,
            "sasl_password": self.password,
            "ssl_cafile": str(self.cafile),
            **changes,
        }

    @property
    def broker_log(self) -> Path:
        return self.state_dir / "broker.log"


def _free_ports(count: int) -> list[int]:
    # Held open together, so the three are distinct.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def secured_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    port, controller_port, sasl_ssl_port = _free_ports(3)
    state_dir = tmp_path_factory.mktemp("secured-broker")
    settings = BrokerSettings(
        port=port, controller_port=controller_port, state_dir=str(state_dir), heap=_HEAP
    )
    try:
        status, _ = broker.start(settings, sasl_ssl_port=sasl_ssl_port)
    except FaultstreamError as exc:  # BrokerError, or the certificates could not be made
        message = f"cannot start a SASL_SSL broker: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        assert status.sasl_ssl_bootstrap is not None
        listener = SecuredListener.of(status.state_dir)
        yield SecuredCluster(
            bootstrap=status.sasl_ssl_bootstrap,
            plaintext_bootstrap=status.bootstrap,
            cafile=listener.ca_cert,
            username=SASL_USERNAME,
            password=listener.sasl_password(),
            state_dir=status.state_dir,
        )
    finally:
        broker.stop(settings)
