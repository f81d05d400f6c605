"""The Faust app that runs the pure core on Kafka.

Two stages, because CIRCUITS.md's rules cross keys (a failure touches worker, hardware
class and task type circuits; the fleet guard and target choice look across workers):

1. `ingest` (processors/stream/ingest.py: an aiokafka consumer run as an app task, group
   `<prefix>-processor-ingest`, parallel over the 6 partitions of `<prefix>.events` plus
   `<prefix>.control`; with `naive=True` a Faust agent, one event per frame): decode and
   validate each record (the only full validation);
   bad ones become DeadLetters on `<prefix>.dlq`; the good ones of a poll are packed, byte
   for byte, into ONE framed record (events/frames.py) on `<prefix>.ordered`
   (1 partition, key "fleet"): Kafka's per-message cost is paid per batch, not per event.
2. `decide` (processors/stream/decide.py, the one consumer of `<prefix>.ordered`): unpacks
   each frame, decodes its records without re-validating them (events/decode.py),
   and runs one FleetCore over them in (`.ordered` offset, index in frame) order, sending
   its outputs to `<prefix>.circuits` / `.commands` / `.figures` (at each TICK, the
   figures of the circuits that changed) / `.alerts` (FIRING and RESOLVED, keyed by
   alert_id). Frames of this instance's own ingest are handed over as soon as the broker
   acknowledges them, not after a round trip.

That order of `<prefix>.ordered` *is* the history: replaying it through FleetCore gives
the processor's outputs exactly. Restarts restore a snapshot (processors/stream/snapshots.py: the
offset after the last fully applied frame) and re-process from it, whatever Faust
committed; outputs are at-least-once with deterministic ids, and consumers dedupe by id
(ARCHITECTURE.md: idempotence, not exactly_once).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from faultstream.events.admin import (
    MAX_MESSAGE_BYTES,
    cluster_replication_factor,
    min_insync_replicas,
)
from faultstream.events.config import Settings
from faultstream.events.decode import InputDecoder
from faultstream.events.exceptions import FaultstreamError

from .clock import install_clock
from .connection import faust_app_kwargs
from .decide import DecideStage
from .ingest import IngestStage
from .metrics import install_metrics_page

log = logging.getLogger("faultstream.processor")


@dataclass(frozen=True)
class Topics:
    events: str
    control: str
    ordered: str
    circuits: str
    commands: str
    dlq: str
    figures: str
    alerts: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        kafka = settings.kafka
        return cls(*(kafka.topic(name) for name in cls.__dataclass_fields__))


def store_url(settings: Settings) -> str:
    """RocksDB when asked for (or "auto" and rocksdict is installed), memory otherwise."""
    choice = settings.processor.store
    if choice not in ("auto", "rocksdb", "memory"):
        raise FaultstreamError(f"processor.store: {choice!r} is not auto, rocksdb or memory")
    if choice == "memory":
        return "memory://"
    try:
        import rocksdict  # noqa: F401
    except ImportError:
        if choice == "rocksdb":
            raise FaultstreamError(
                "processor.store: rocksdb needs `pip install rocksdict`"
            ) from None
        return "memory://"
    return "rocksdb://"


class _IdempotentProducer(faust_aiokafka.Producer):
    """Faust's producer with idempotence (Faust enables it only inside transactions): a
    batch retried when its partition's leader fails over is written once and in order."""

    def _settings_extra(self) -> dict[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class _IdempotentTransport(faust_aiokafka.Transport):
    Producer = _IdempotentProducer


def instance_datadir(settings: Settings, instance_id: str) -> Path:
    """Where an instance keeps its table store: per app (the RocksDB offsets belong to that
    app's changelog) and per instance."""
    app_id = f"{settings.kafka.topic_prefix}-processor"
    return Path(settings.processor.data_dir) / app_id / instance_id


def create_app(
    settings: Settings,
    *,
    instance_id: str = "0",
    web_port: int | None = None,
    web_host: str | None = None,
    naive: bool = False,
) -> faust.App:
    """The processor app. `naive=True` handles one event at a time (the bench baseline).

    Faust's web server (it serves /router/ and /table/, the decider's state included, and
    answers the compose healthcheck) listens on `web_host`, default `http.host`
    (127.0.0.1): Faust's own default is every interface."""
    kafka = settings.kafka
    topics = Topics.of(settings)
    decoder = InputDecoder(kafka.schema_registry_url, topic_prefix=kafka.topic_prefix)
    # The brokers and, on a secured cluster, the credentials of every aiokafka client.
    connection = faust_app_kwargs(kafka)
    app_id = f"{kafka.topic_prefix}-processor"
    datadir = instance_datadir(settings, instance_id)
    datadir.mkdir(parents=True, exist_ok=True)
    bind = web_host or settings.http.host
    web_port_used = web_port or settings.processor.web_port
    replicas = cluster_replication_factor(kafka)
    app = faust.App(
        app_id,
        **connection,
        store=store_url(settings),
        # Per app (the RocksDB offsets belong to that app's changelog) and per instance.
        datadir=str(datadir),
        # Faust's own topics (table changelog, leader) are single-partition like `.ordered`.
        topic_partitions=1,
        # Replicated as `topics create` does (3 copies on 3+ brokers): the decider's
        # changelog must outlive a broker.
        topic_replication_factor=replicas,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_linger_ms=1,
        # Frames and letters up to what the topics accept (a 1 MiB checkpoint travels alone
        # in a frame); Faust's defaults stop at 1,000,000 bytes and 1 MiB.
        producer_max_request_size=MAX_MESSAGE_BYTES,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        # A SIGKILLed instance holds its partitions until its session expires; keep that
        # short so the other instance takes over within seconds. The instance itself,
        # restarted, takes them back at once: it is a static member (KIP-345) of the group.
        # Faust's assignor keeps each member's web URL with its assignment and refuses one
        # made for another, so a new port makes a new member (which waits, as before).
        consumer_group_instance_id=f"{app_id}-{instance_id}-{web_port_used}",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_rebalance_timeout=20.0,
        web_port=web_port_used,
        web_bind=bind,
        # The name others would reach it by (Faust's canonical URL): the bound address, or
        # this host's name when it listens on every interface.
        web_host=socket.gethostname() if bind in ("0.0.0.0", "::") else bind,
    )
    app.transport = _IdempotentTransport(app.conf.broker_consumer, app)
    table = app.Table(
        "decider-state",
        partitions=1,
        # Every key to the one changelog partition, whichever event is current.
        use_partitioner=True,
        key_type=str,
        extra_topic_configs={"min.insync.replicas": str(min_insync_replicas(replicas))},
    )
    decider = DecideStage(app, settings, decoder, topics, table)
    # The naive baseline keeps the round trip through `.ordered` (one event at a time).
    ingest = IngestStage(
        app, settings, decoder, topics, on_frame=None if naive else decider.offer,
        member=instance_id,
    )  # fmt: skip
    app.faultstream_decider = decider  # type: ignore[attr-defined]
    install_metrics_page(app, decider)

    ordered_topic = app.topic(
        topics.ordered, partitions=1, key_serializer="raw", value_serializer="raw"
    )

    @app.on_partitions_revoked.connect
    async def _on_revoked(*_args: Any, **_kwargs: Any) -> None:
        decider.forget()

    if naive:
        input_topics = app.topic(topics.events, topics.control, value_serializer="raw")

        @app.agent(input_topics, name="ingest", concurrency=1)
        async def ingest_naive(stream: faust.StreamT) -> None:
            async for event in stream.events():
                await ingest.on_faust_events([event])

    else:

        @app.task
        async def ingest_batches() -> None:
            await ingest.run()

    # One frame at a time: a frame is already a batch, and `take_events` would hold a
    # lone frame for its whole `within` window, straight onto the latency.
    @app.agent(ordered_topic, name="decide", concurrency=1)
    async def decide(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await decider.on_batch([event])

    install_clock(app, topics.control, decoder.codec, settings.processor.tick_interval_s)
    return app
