"""The topics of CONTRACT.md: their names under the configured prefix, and creating them.

Every process that touches Kafka (the Faust app, the projector, the SDKs) takes topic
names from `topic_names`, so the prefix is applied in one place.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ClusterMetadata,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from .config import KafkaSettings
from .exceptions import FaultstreamError
from .kafka_clients import librdkafka_config
from .kafka_connection import KafkaConnectionError, cluster_metadata

EVENTS = "events"
CONTROL = "control"
CIRCUITS = "circuits"
COMMANDS = "commands"
DLQ = "dlq"
# The Faust app's internal, single-partition input of the serial decider.
ORDERED = "ordered"
# What the core counts on each circuit, published at each TICK for the circuits it changed.
FIGURES = "figures"
# What an operator should know now: the core's alerts, FIRING and RESOLVED, keyed by alert_id.
ALERTS = "alerts"
LOGICAL_TOPICS = (EVENTS, CONTROL, CIRCUITS, COMMANDS, DLQ, ORDERED, FIGURES, ALERTS)

# Kafka's defaults (a producer request of 1,000,000 bytes, a topic batch of about 1 MiB)
# are below the contract's largest record: a CHECKPOINT with 1 MiB of state, plus its other
# fields. The processor forwards input records of up to MAX_RECORD_BYTES and dead-letters
# larger ones; the topics a record passes through, and every producer and consumer on its
# path, take MAX_MESSAGE_BYTES: one such record alone in a frame, plus the frame's
# and Kafka's record-batch overhead, with room to spare.
MAX_RECORD_BYTES = 2 * 1024 * 1024
MAX_MESSAGE_BYTES = MAX_RECORD_BYTES + 64 * 1024

_MS_PER_DAY = 86_400_000
_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 10.0


class KafkaAdminError(FaultstreamError):
    """The broker is unreachable or refused a topic operation; the message names it."""


_TIMESTAMP_TYPE = "message.timestamp.type"
# Compaction keeps each key's newest record (a new CircuitView always finds every circuit);
# retention.ms=-1 keeps it even if "delete" is ever added to the policy. A consumer up to a
# day behind (the projector after a restart) still sees every transition; after a week a
# closed segment is compacted whatever its size, so a view loads few stale records.
# Tombstones (none are written today) stay a day, longer than any view takes to load.
_CIRCUITS_CONFIG = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "min.compaction.lag.ms": str(_MS_PER_DAY),
    "max.compaction.lag.ms": str(7 * _MS_PER_DAY),
    "delete.retention.ms": str(_MS_PER_DAY),
}


def _figures_config(retention: dict[str, str]) -> dict[str, str]:
    """`<prefix>.figures`, keyed by `<kind>:<id>`: compacted to each circuit's newest
    figures (a record is superseded by the next of its circuit) and deleted past the
    retention. The projector lands every record: compaction waits a day, as on `.circuits`,
    so one up to a day behind still finds each of them."""
    return {
        **retention,
        "cleanup.policy": "compact,delete",
        "min.compaction.lag.ms": str(_MS_PER_DAY),
        "max.compaction.lag.ms": str(7 * _MS_PER_DAY),
        "delete.retention.ms": str(_MS_PER_DAY),
    }


@dataclass(frozen=True)
class TopicSpec:
    logical: str
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def topic_names(kafka: KafkaSettings) -> dict[str, str]:
    """Logical name → full topic name, e.g. `events` → `faultstream.events`."""
    return {logical: kafka.topic(logical) for logical in LOGICAL_TOPICS}


# From this many brokers on, a topic has this many copies and a write (acks=all) needs 2 of
# them in sync: one broker may fail or restart without losing an acknowledged record or
# stopping the producers.
REPLICATED_CLUSTER = 3


def min_insync_replicas(replicas: int) -> int:
    return 2 if replicas >= REPLICATED_CLUSTER else 1


def replication_factor(kafka: KafkaSettings, brokers: int) -> int:
    """Copies of each topic on a cluster of `brokers`: 3 on 3 or more, else 1, or
    `kafka.replication_factor` when higher (a floor: the sample config spells out the
    default 1, so an explicit 1 cannot mean "unreplicated on a cluster"). A factor above
    the broker count is left for the broker to refuse, naming both."""
    return max(kafka.replication_factor, REPLICATED_CLUSTER if brokers >= REPLICATED_CLUSTER else 1)


def cluster_replication_factor(kafka: KafkaSettings) -> int:
    """`replication_factor` for the cluster `kafka` names (one metadata request); with no
    broker answering, that of one broker: the caller fails to connect next anyway."""
    servers = kafka.bootstrap_servers.split(",")
    if not any(_accepts_connections(address) for address in servers):
        return replication_factor(kafka, 1)
    try:
        brokers = len(cluster_metadata(kafka, timeout_s=_CONNECT_TIMEOUT_S).brokers)
    except KafkaConnectionError:
        brokers = 1
    return replication_factor(kafka, brokers)


def topic_specs(kafka: KafkaSettings, brokers: int = 1) -> list[TopicSpec]:
    """Every topic with its partitions and configuration, in LOGICAL_TOPICS order, for a
    cluster of `brokers`."""
    replicas = replication_factor(kafka, brokers)
    # Topic-level, so it holds whatever the brokers' default is.
    insync = {"min.insync.replicas": str(min_insync_replicas(replicas))} if replicas > 1 else {}
    retention = {
        "cleanup.policy": "delete",
        "retention.ms": str(round(kafka.retention_days * _MS_PER_DAY)),
    }
    large = {**retention, "max.message.bytes": str(MAX_MESSAGE_BYTES)}
    # Decisions run on the broker's clock, not the workers' (CIRCUITS.md "Decision time").
    stamped = {**large, _TIMESTAMP_TYPE: kafka.input_timestamps}
    configs = {
        EVENTS: stamped,
        CONTROL: stamped,
        # The newest state of each circuit, forever: compacted by `<kind>:<id>`.
        CIRCUITS: _CIRCUITS_CONFIG,
        COMMANDS: retention,
        DLQ: large,
        ORDERED: large,
        FIGURES: _figures_config(retention),
        # Not compacted: a RESOLVED record would supersede the FIRING one it ends, and a
        # webhook consumer behind by then would never deliver the FIRING.
        ALERTS: retention,
    }
    return [
        TopicSpec(
            logical=logical,
            name=kafka.topic(logical),
            # One partition keeps the decider's input in a single total order.
            partitions=1 if logical == ORDERED else kafka.partitions,
            replication_factor=replicas,
            config={**configs[logical], **insync},
        )
        for logical in LOGICAL_TOPICS
    ]


def create_topics(kafka: KafkaSettings) -> list[str]:
    """Create the topics that do not exist yet; return the full names of those created.

    Safe to run again: a topic that already exists is left as it is, but for a
    `max.message.bytes` below MAX_MESSAGE_BYTES, which is raised to it.
    """
    admin = admin_client(kafka)
    metadata = _list_topics(admin, kafka)
    existing = set(metadata.topics)
    specs = topic_specs(kafka, brokers=len(metadata.brokers))
    _raise_message_limits(admin, [spec for spec in specs if spec.name in existing])
    wanted = [spec for spec in specs if spec.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=spec.replication_factor,
                config=spec.config,
            )
            for spec in wanted
        ],
        request_timeout=_TIMEOUT_S,
        operation_timeout=_TIMEOUT_S,
    )
    created: list[str] = []
    for spec in wanted:
        try:
            futures[spec.name].result()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            # Another process created it between our listing and our request.
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaAdminError(f"cannot create topic {spec.name}: {error.str()}") from None
        created.append(spec.name)
    _await_metadata(kafka, {spec.name: spec.partitions for spec in wanted})
    return created


def _await_metadata(kafka: KafkaSettings, partitions: dict[str, int]) -> None:
    """Return once the broker's metadata shows each new topic with all its partitions: a
    created topic reaches every broker's metadata a moment later (KRaft), and a client
    started right after `topics create` should find it whole. Bounded; a broker slower
    than that is left to the clients' own retries."""
    deadline = time.monotonic() + _TIMEOUT_S
    while time.monotonic() < deadline:
        metadata = cluster_metadata(kafka, timeout_s=_CONNECT_TIMEOUT_S)
        if all(
            name in metadata.topics
            and metadata.topics[name].error is None
            and len(metadata.topics[name].partitions) == count
            for name, count in partitions.items()
        ):
            return
        time.sleep(0.1)


def _raise_message_limits(admin: AdminClient, specs: list[TopicSpec]) -> None:
    """Topics created before MAX_MESSAGE_BYTES keep Kafka's default limit (about 1 MiB),
    below a frame with a 1 MiB checkpoint: raise theirs to ours, never lower a higher one."""
    key = "max.message.bytes"
    wanted = {spec.name: int(spec.config[key]) for spec in specs if key in spec.config}
    if not wanted:
        return
    topic = ConfigResource.Type.TOPIC
    low: list[ConfigResource] = []
    for name, entry in _topic_config(admin, list(wanted), key).items():
        if entry is None or int(entry.value) < wanted[name]:
            limit = str(wanted[name])
            setting = ConfigEntry(key, limit, incremental_operation=AlterConfigOpType.SET)
            low.append(ConfigResource(topic, name, incremental_configs=[setting]))
    if not low:
        return
    altered = admin.incremental_alter_configs(low, request_timeout=_TIMEOUT_S)
    for resource, future in altered.items():
        try:
            future.result()
        except KafkaException as exc:
            reason = exc.args[0].str()
            raise KafkaAdminError(f"cannot raise {key} of {resource.name}: {reason}") from None


def _topic_config(admin: AdminClient, names: list[str], key: str) -> dict[str, ConfigEntry | None]:
    """Setting `key` of each topic, retried while a topic created a moment ago settles (the
    broker may not know it yet, as with offsets in `end_offsets`)."""
    deadline = time.monotonic() + _TIMEOUT_S
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    while True:
        try:
            described = admin.describe_configs(resources, request_timeout=_TIMEOUT_S)
            return {resource.name: done.result().get(key) for resource, done in described.items()}
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            transient = error.retriable() or error.code() in _SETTLING
            if not transient or time.monotonic() > deadline:
                raise KafkaAdminError(f"cannot read the topic configs: {error.str()}") from None
            time.sleep(0.2)


def check_stamped_topics(kafka: KafkaSettings) -> None:
    """Refuse input topics whose records carry another clock than `kafka.input_timestamps`
    says: with the producers' clock, decisions would run on each worker's own clock, and one
    wrong clock would move the whole fleet's time."""
    admin = admin_client(kafka)
    names = [kafka.topic(EVENTS), kafka.topic(CONTROL)]
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, n) for n in names])
    wrong = []
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=_TIMEOUT_S)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            raise KafkaAdminError(
                f"cannot read the config of {resource.name}: {error.str()}"
            ) from None
        entry = entries.get(_TIMESTAMP_TYPE)
        if entry is None or entry.value != kafka.input_timestamps:
            wrong.append(f"{resource.name} ({entry.value if entry else 'unknown'})")
    if wrong:
        wanted = f"{_TIMESTAMP_TYPE}={kafka.input_timestamps}"
        raise KafkaAdminError(
            f"topic {', '.join(sorted(wrong))}: decisions need {wanted} (kafka.input_timestamps);"
            f" alter it (kafka-configs --alter --add-config {wanted}) or delete it and run "
            "`faultstream topics create`"
        )


def describe_topics(kafka: KafkaSettings) -> dict[str, int]:
    """Topics under the configured prefix that exist on the broker → partition count."""
    metadata = _list_topics(admin_client(kafka), kafka)
    prefix = f"{kafka.topic_prefix}."
    return {
        name: len(topic.partitions)
        for name, topic in sorted(metadata.topics.items())
        if name.startswith(prefix)
    }


def delete_topics(kafka: KafkaSettings) -> list[str]:
    """Delete every topic of the configured prefix, Faust's own (`<prefix>-…`) included;
    return their names. For throwaway prefixes (tests, benchmarks): a broker slows down
    as it gathers thousands of partitions, and with them every later measurement."""
    admin = admin_client(kafka)
    prefix = kafka.topic_prefix
    doomed = sorted(
        name
        for name in _existing_topics(admin, kafka)
        if name.startswith((f"{prefix}.", f"{prefix}-"))
    )
    if not doomed:
        return []
    futures = admin.delete_topics(doomed, request_timeout=_TIMEOUT_S, operation_timeout=_TIMEOUT_S)
    for name in doomed:
        try:
            futures[name].result()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # gone already
                raise KafkaAdminError(f"cannot delete topic {name}: {error.str()}") from None
    return doomed


# What a broker answers about a topic created a moment ago, until its leader is known.
_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def end_offsets(
    consumer: Consumer, topic: str, partitions: list[int], *, timeout_s: float = _TIMEOUT_S
) -> dict[int, tuple[int, int]]:
    """(low, high) watermarks per partition, retried while a freshly created topic's
    leadership settles (NOT_LEADER_FOR_PARTITION and friends are transient there)."""
    deadline = time.monotonic() + timeout_s
    result: dict[int, tuple[int, int]] = {}
    for partition in partitions:
        while True:
            try:
                result[partition] = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=max(0.1, deadline - time.monotonic())
                )
                break
            except KafkaException as exc:
                error = exc.args[0]
                transient = error.retriable() or error.code() in _SETTLING
                if not transient or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return result


_quiet = logging.getLogger("faultstream.events.admin.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def admin_client(kafka: KafkaSettings) -> AdminClient:
    # librdkafka would otherwise print every failed connection attempt to stderr; an
    # unreachable broker is reported once, as KafkaAdminError.
    return AdminClient(librdkafka_config(kafka, {"logger": _quiet, "error_cb": lambda _err: None}))


def _existing_topics(admin: AdminClient, kafka: KafkaSettings) -> set[str]:
    return set(_list_topics(admin, kafka).topics)


def _list_topics(admin: AdminClient, kafka: KafkaSettings) -> ClusterMetadata:
    hint = "start one with `faultstream broker start`"
    # librdkafka keeps retrying a refused connection until its timeout; a TCP probe
    # turns the common case (nothing listening) into an immediate, clear error.
    if not any(_accepts_connections(address) for address in kafka.bootstrap_servers.split(",")):
        raise KafkaAdminError(f"no Kafka broker answers at {kafka.bootstrap_servers}; {hint}")
    try:
        # A probe of its own: unlike `admin`, it hears why a secured connection fails.
        return cluster_metadata(kafka, timeout_s=_CONNECT_TIMEOUT_S)
    except KafkaConnectionError as exc:
        raise KafkaAdminError(str(exc) if exc.setting else f"{exc}; {hint}") from None


def _accepts_connections(address: str) -> bool:
    host, _, port = address.strip().split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=3):
            return True
    except (OSError, ValueError):
        return False
