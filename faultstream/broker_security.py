"""The local broker's SASL_SSL listener: its certificates, its SCRAM user, the client file.

`faultstream broker start --sasl-ssl` adds a SASL_SSL listener (SCRAM-SHA-512, TLS) beside
the PLAINTEXT one, so the project's clients can be tried against a secured cluster on one
machine. Inter-broker and controller traffic stay PLAINTEXT on 127.0.0.1. Everything is
made with `keytool`, which ships with the Java the broker needs anyway: a private CA, a
broker key and certificate (for 127.0.0.1 and localhost) signed by it in a PKCS12
keystore, and the CA certificate in PEM for clients. The SCRAM user is created when the
storage is formatted; its password lives only in `client.toml` (mode 600), which holds
the `[kafka]` settings a client needs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from faultstream.events.exceptions import FaultstreamError

LISTENER = "SASL_SSL"
SCRAM_MECHANISM = "SCRAM-SHA-512"
SASL_USERNAME = "faultstream"
_VALIDITY_DAYS = "3650"
# keytool reads store passwords from this variable (`-storepass:env`), never argv.
_STOREPASS_ENV = "FAULTSTREAM_KEYSTORE_PASSWORD"


class BrokerSecurityError(FaultstreamError):
    """The certificates or credentials of the SASL_SSL listener cannot be made."""


@dataclass(frozen=True)
class SecuredListener:
    """The files of one broker's SASL_SSL listener, inside its state directory."""

    directory: Path

    @classmethod
    def of(cls, state_dir: Path) -> SecuredListener:
        return cls(state_dir / "sasl-ssl")

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM) clients trust: `kafka.ssl_cafile`."""
        return self.directory / "ca.crt"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"

    @property
    def keystore_password_file(self) -> Path:
        return self.directory / "keystore.password"

    @property
    def client_config(self) -> Path:
        """`[kafka]` settings for a client of this listener, password included."""
        return self.directory / "client.toml"

    @property
    def password_file(self) -> Path:
        return self.directory / "sasl.password"

    @property
    def formatted_marker(self) -> Path:
        """Present once the storage was formatted with the SCRAM user."""
        return self.directory / ".scram-user-created"

    def exists(self) -> bool:
        return self.keystore.is_file() and self.password_file.is_file()

    def keystore_password(self) -> str:
        return self.keystore_password_file.read_text().strip()

    def sasl_password(self) -> str:
        return self.password_file.read_text().strip()


def keytool_for(java: str) -> str:
    """The keytool beside `java` (same JDK), else the one on PATH."""
    beside = Path(java).resolve().parent / "keytool"
    if beside.is_file():
        return str(beside)
    found = shutil.which("keytool")
    if found is None:
        raise BrokerSecurityError("keytool not found (it ships with Java; needed for --sasl-ssl)")
    return found


def ensure_credentials(listener: SecuredListener, java: str) -> None:
    """Make the CA, the broker keystore and the SCRAM password, unless already made."""
    if listener.exists():
        return
    keytool = keytool_for(java)
    listener.directory.mkdir(parents=True, exist_ok=True)
    listener.directory.chmod(0o700)
    store_password = secrets.token_hex(16)
    _write_private(listener.keystore_password_file, store_password)
    ca_store = listener.directory / "ca.p12"
    create_certificate_authority(
        listener.ca_cert, ca_store, store_password, keytool, name="faultstream local CA"
    )
    _broker_keystore(listener, ca_store, store_password, keytool)
    # Hex only: the storage tool parses `[name=…,password=…]` and would split on , or ].
    _write_private(listener.password_file, secrets.token_hex(24))


def create_certificate_authority(
    cert: Path, store: Path, store_password: str, keytool: str, *, name: str
) -> None:
    """A self-signed CA: its key in the PKCS12 `store`, its certificate (PEM) in `cert`."""
    _keytool(
        keytool,
        store_password,
        "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048",
        "-dname", f"CN={name}", "-ext", "bc:c", "-validity", _VALIDITY_DAYS,
        "-keystore", str(store), "-storetype", "PKCS12",
    )  # fmt: skip
    _keytool(
        keytool,
        store_password,
        "-exportcert", "-rfc", "-alias", "ca", "-keystore", str(store), "-file", str(cert),
    )  # fmt: skip


def _broker_keystore(
    listener: SecuredListener, ca_store: Path, store_password: str, keytool: str
) -> None:
    store, request, signed = (
        listener.keystore,
        listener.directory / "broker.csr",
        listener.directory / "broker.crt",
    )
    _keytool(
        keytool,
        store_password,
        "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
        "-dname", "CN=localhost", "-validity", _VALIDITY_DAYS,
        "-keystore", str(store), "-storetype", "PKCS12",
    )  # fmt: skip
    _keytool(
        keytool,
        store_password,
        "-certreq", "-alias", "broker", "-keystore", str(store), "-file", str(request),
    )  # fmt: skip
    # Clients check the host name (librdkafka's ssl.endpoint.identification.algorithm and
    # Python's check_hostname): the broker is reached as 127.0.0.1 or localhost.
    _keytool(
        keytool,
        store_password,
        "-gencert", "-alias", "ca", "-keystore", str(ca_store), "-rfc",
        "-infile", str(request), "-outfile", str(signed), "-validity", _VALIDITY_DAYS,
        "-ext", "SAN=ip:127.0.0.1,dns:localhost", "-ext", "EKU=serverAuth",
        "-ext", "KU=digitalSignature,keyEncipherment",
    )  # fmt: skip
    _keytool(
        keytool,
        store_password,
        "-importcert", "-noprompt", "-alias", "ca", "-file", str(listener.ca_cert),
        "-keystore", str(store),
    )  # fmt: skip
    _keytool(
        keytool,
        store_password,
        "-importcert", "-alias", "broker", "-file", str(signed), "-keystore", str(store),
    )  # fmt: skip
    request.unlink()


def _keytool(keytool: str, store_password: str, *args: str) -> None:
    env = dict(os.environ, **{_STOREPASS_ENV: store_password})
    command = [keytool, *args, "-storepass:env", _STOREPASS_ENV]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stdout + done.stderr).strip().splitlines()
        raise BrokerSecurityError(
            f"keytool {args[0]} failed: {detail[-1] if detail else done.returncode}"
        )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


def listener_properties(listener: SecuredListener, port: int) -> dict[str, str]:
    """server.properties lines of the SASL_SSL listener (its name is in `listeners`)."""
    prefix = f"listener.name.{LISTENER.lower()}"
    return {
        f"{prefix}.sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"{prefix}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{prefix}.ssl.keystore.type": "PKCS12",
        f"{prefix}.ssl.keystore.location": str(listener.keystore),
        f"{prefix}.ssl.keystore.password": listener.keystore_password(),
        f"{prefix}.ssl.key.password": listener.keystore_password(),
    }


def scram_format_arguments(listener: SecuredListener) -> list[str]:
    """The storage tool's arguments that create the SCRAM user when it formats."""
    user = f"{SCRAM_MECHANISM}=[name={SASL_USERNAME},password={listener.sasl_password()}]"
    return ["--add-scram", user]


def write_client_config(listener: SecuredListener, bootstrap: str) -> Path:
    """`client.toml`: the `[kafka]` settings of a client of this listener (mode 600)."""
    text = (
        "# Settings for a client of the local broker's SASL_SSL listener.\n"
        "# Holds the SCRAM password: keep it private.\n"
        "[kafka]\n"
        f'bootstrap_servers = "{bootstrap}"\n'
        f'security_protocol = "{LISTENER}"\n'
        f'sasl_mechanism = "{SCRAM_MECHANISM}"\n'
        f'sasl_username = "{SASL_USERNAME}"\n'
        f'sasl_password = "{listener.sasl_password()}"\n'
        f'ssl_cafile = "{listener.ca_cert}"\n'
    )
    _write_private(listener.client_config, text.rstrip("\n"))
    return listener.client_config
