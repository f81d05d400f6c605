"""`[kafka]` security settings: each reaches each client library, a combination one library
cannot honour is refused with the setting named, and the password stays secret."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from faultstream.events.config import KafkaSettings, load_settings
from faultstream.events.exceptions import ConfigError
from faultstream.events.kafka_clients import (
    KafkaClientConfigError,
    aiokafka_kwargs,
    kafka_environment,
    librdkafka_config,
)
from faultstream.processors.stream.connection import faust_app_kwargs

PASSWORD = "correct-horse-battery-staple"
NOWHERE = "127.0.0.1:1"  # clients are built, never connected


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA certificate and a client certificate with its key, all PEM."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("pem")
    now = datetime.datetime.now(datetime.UTC)

    def certificate(name: str, key: Any, issuer: str, signer: Any, ca: bool) -> bytes:
        built = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        return built.public_bytes(serialization.Encoding.PEM)

    ca_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    files = {
        "ca": directory / "ca.crt",
        "cert": directory / "client.crt",
        "key": directory / "client.key",
    }
    files["ca"].write_bytes(certificate("test CA", ca_key, "test CA", ca_key, ca=True))
    files["cert"].write_bytes(certificate("client", client_key, "test CA", ca_key, ca=False))
    files["key"].write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def secured(pem: dict[str, Path] | None = None, **changes: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": NOWHERE,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "alice",
        "sasl_password": PASSWORD,
    }
    if pem is not None:
        values.update(
            ssl_cafile=str(pem["ca"]), ssl_certfile=str(pem["cert"]), ssl_keyfile=str(pem["key"])
        )
    values.update(changes)
    return load_settings(kafka=values).kafka


# --- librdkafka (confluent-kafka) ---------------------------------------------------------


def test_every_security_setting_reaches_librdkafka(pem: dict[str, Path]) -> None:
    config = librdkafka_config(secured(pem), {"group.id": "g", "linger.ms": 5})
    assert config == {
        "group.id": "g",
        "linger.ms": 5,
        "bootstrap.servers": NOWHERE,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(pem["ca"]),
        "ssl.certificate.location": str(pem["cert"]),
        "ssl.key.location": str(pem["key"]),
    }


def test_plaintext_adds_neither_sasl_nor_tls_properties() -> None:
    kafka = load_settings(kafka={"bootstrap_servers": NOWHERE}).kafka
    assert librdkafka_config(kafka) == {
        "bootstrap.servers": NOWHERE,
        "security.protocol": "PLAINTEXT",
    }


def test_client_table_is_passed_through_over_a_clients_own_tuning() -> None:
    kafka = secured(client={"linger.ms": 50, "socket.keepalive.enable": True, "client.id": "x"})
    config = librdkafka_config(kafka, {"linger.ms": 5, "acks": "all"})
    assert config["linger.ms"] == 50
    assert config["acks"] == "all"
    assert config["socket.keepalive.enable"] == "true"  # librdkafka's spelling of a bool
    assert config["client.id"] == "x"


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_librdkafka_accepts_the_configuration_of_each_client(
    protocol: str, pem: dict[str, Path]
) -> None:
    """librdkafka checks every property's name and value when a client is built."""
    values: dict[str, Any] = {"bootstrap_servers": NOWHERE, "security_protocol": protocol}
    if protocol.startswith("SASL_"):
        values.update(sasl_username="alice", sasl_password=PASSWORD)
    if protocol.endswith("SSL"):
        values.update(ssl_cafile=str(pem["ca"]), ssl_certfile=str(pem["cert"]))
        values.update(ssl_keyfile=str(pem["key"]))
    kafka = load_settings(kafka=values | {"client": {"socket.keepalive.enable": True}}).kafka
    Producer(librdkafka_config(kafka, {"acks": "all"})).flush(0)
    Consumer(librdkafka_config(kafka, {"group.id": "g"})).close()
    AdminClient(librdkafka_config(kafka))


# --- aiokafka and Faust -------------------------------------------------------------------


def test_every_security_setting_reaches_aiokafka(pem: dict[str, Path]) -> None:
    kwargs = aiokafka_kwargs(secured(pem))
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "bootstrap_servers": NOWHERE,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [dict(part[0] for part in ca["subject"]) for ca in context.get_ca_certs()] == [
        {"commonName": "test CA"}
    ]


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_aiokafka_builds_a_consumer_with_each_protocol(protocol: str) -> None:
    from aiokafka import AIOKafkaConsumer

    values: dict[str, Any] = {"bootstrap_servers": NOWHERE, "security_protocol": protocol}
    if protocol.startswith("SASL_"):
        values.update(sasl_username="alice", sasl_password=PASSWORD)
    kafka = load_settings(kafka=values).kafka

    async def build() -> None:
        # aiokafka refuses SSL without a context and SASL without credentials right here.
        AIOKafkaConsumer(**aiokafka_kwargs(kafka), group_id="g")

    asyncio.run(build())


def test_faust_gets_sasl_ssl_credentials_for_every_client_it_makes(pem: dict[str, Path]) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    kwargs = faust_app_kwargs(secured(pem, bootstrap_servers="a:9094, b:9094"))
    assert kwargs["broker"] == ["kafka://a:9094", "kafka://b:9094"]
    # What Faust's consumer, producer and topic creation are given.
    auth = credentials_to_aiokafka_auth(kwargs["broker_credentials"])
    assert isinstance(auth.pop("ssl_context"), ssl.SSLContext)
    assert auth == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }


def test_faust_gets_sasl_plaintext_and_ssl_credentials() -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sasl = secured(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")
    auth = credentials_to_aiokafka_auth(faust_app_kwargs(sasl)["broker_credentials"])
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["sasl_mechanism"] == "PLAIN"
    assert auth["ssl_context"] is None
    tls = load_settings(kafka={"security_protocol": "SSL"}).kafka
    auth = credentials_to_aiokafka_auth(faust_app_kwargs(tls)["broker_credentials"])
    assert auth["security_protocol"] == "SSL"
    plain = load_settings(kafka={}).kafka
    assert "broker_credentials" not in faust_app_kwargs(plain)


# --- what a client cannot honour ----------------------------------------------------------


def test_processor_clients_refuse_client_properties_that_change_security() -> None:
    kafka = secured(client={"ssl.endpoint.identification.algorithm": "none", "linger.ms": 5})
    assert librdkafka_config(kafka)["ssl.endpoint.identification.algorithm"] == "none"
    for build in (aiokafka_kwargs, faust_app_kwargs):
        with pytest.raises(KafkaClientConfigError) as refused:
            build(kafka)
        assert str(refused.value).startswith(
            "kafka.client: ssl.endpoint.identification.algorithm would change security"
        )


def test_processor_names_client_properties_that_do_not_reach_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = secured(client={"socket.keepalive.enable": True, "linger.ms": 5})
    with caplog.at_level(logging.WARNING, logger="faultstream.processors.stream.connection"):
        faust_app_kwargs(kafka)
    assert caplog.messages == [
        "kafka.client: linger.ms, socket.keepalive.enable reach only the librdkafka clients "
        "(SDK, projector, command line), not the processor's aiokafka clients"
    ]


@pytest.mark.parametrize("setting", ["ssl_cafile", "ssl_certfile"])
def test_a_missing_tls_file_is_named(setting: str, pem: dict[str, Path], tmp_path: Path) -> None:
    kafka = secured(pem, **{setting: str(tmp_path / "nope.pem")})
    for build in (librdkafka_config, aiokafka_kwargs, faust_app_kwargs):
        with pytest.raises(KafkaClientConfigError, match=rf"^kafka\.{setting}: no such file: "):
            build(kafka)


def test_a_file_that_is_no_certificate_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "ca.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(KafkaClientConfigError, match=r"^kafka\.ssl_cafile: not a PEM CA file"):
        aiokafka_kwargs(secured(ssl_cafile=str(junk)))


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        (
            {"security_protocol": "SASL_SSL", "sasl_password": PASSWORD},
            "kafka.sasl_username: required with security_protocol SASL_SSL",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "alice"},
            "kafka.sasl_password: required with security_protocol SASL_PLAINTEXT",
        ),
        (
            {"sasl_username": "alice", "sasl_password": PASSWORD},
            "kafka.sasl_username: only used with security_protocol SASL_PLAINTEXT or SASL_SSL "
            "(it is PLAINTEXT)",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "a", "sasl_password": "b",
             "ssl_cafile": "ca.crt"},
            "kafka.ssl_cafile: only used with security_protocol SSL or SASL_SSL "
            "(it is SASL_PLAINTEXT)",
        ),
        (
            {"security_protocol": "SSL", "ssl_certfile": "client.crt"},
            "kafka.ssl_keyfile: ssl_certfile and ssl_keyfile go together",
        ),
        ({"security_protocol": "TLS"}, "kafka.security_protocol: Input should be 'PLAINTEXT'"),
        ({"sasl_mechanism": "GSSAPI"}, "kafka.sasl_mechanism: Input should be 'PLAIN'"),
        (
            {"client": {"security.protocol": "SSL"}},
            "kafka.client: security.protocol: set kafka.security_protocol instead",
        ),
        (
            {"client": {"sasl.password": PASSWORD}},
            "kafka.client: sasl.password: set kafka.sasl_password instead",
        ),
        (
            {"client": {"group.id": "mine"}},
            "kafka.client: group.id: chosen by each faultstream client",
        ),
    ],
)  # fmt: skip
def test_a_combination_no_client_can_honour_is_refused_naming_the_setting(
    kafka: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(kafka=kafka)
    assert str(refused.value).startswith(f"settings: {message}")
    assert PASSWORD not in str(refused.value)


# --- where settings come from -------------------------------------------------------------


def test_the_environment_configures_a_secured_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue: FAULTSTREAM_KAFKA__SECURITY_PROTOCOL=SASL_SSL was an extra input."""
    monkeypatch.setenv("FAULTSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FAULTSTREAM_KAFKA__SASL_USERNAME", "alice")
    monkeypatch.setenv("FAULTSTREAM_KAFKA__SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("FAULTSTREAM_KAFKA__CLIENT", '{"socket.keepalive.enable": true}')
    kafka = load_settings().kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert kafka.sasl_password.get_secret_value() == PASSWORD
    assert kafka.client == {"socket.keepalive.enable": True}


def test_client_table_takes_dotted_keys_quoted_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAULTSTREAM_CONFIG", raising=False)
    config = tmp_path / "faultstream.toml"
    config.write_text(
        '[kafka.client]\n"linger.ms" = 20\nsocket.keepalive.enable = true\nclient.id = "w1"\n'
    )
    assert load_settings(config).kafka.client == {
        "linger.ms": 20,
        "socket.keepalive.enable": True,
        "client.id": "w1",
    }


def test_a_child_process_environment_carries_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka = secured(client={"linger.ms": 5})
    for name, value in kafka_environment(kafka).items():
        monkeypatch.setenv(name, value)
    assert load_settings().kafka == kafka


# --- the password stays secret ------------------------------------------------------------


def test_the_password_is_in_no_repr_str_or_dump(pem: dict[str, Path]) -> None:
    settings = load_settings(kafka=secured(pem).model_dump())
    assert settings.kafka.sasl_password.get_secret_value() == PASSWORD
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.model_dump()),
        repr(settings.kafka),
        repr(faust_app_kwargs(settings.kafka)["broker_credentials"]),
    ]
    assert [text for text in shown if PASSWORD in text] == []


def test_the_password_is_in_no_error_about_another_setting() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(kafka={**secured().model_dump(), "partitions": 0})
    assert str(refused.value).startswith("settings: kafka.partitions:")
    assert PASSWORD not in str(refused.value)
