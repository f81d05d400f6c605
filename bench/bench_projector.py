"""Projector throughput from the local broker into DuckDB, against a baseline in the same
run: consume + decode alone (no DuckDB). Medians of several runs; the machine is noisy.

    .venv/bin/python bench/bench_projector.py [--events 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from faultstream.events.admin import create_topics, topic_names
from faultstream.events.codec import Codec
from faultstream.events.config import load_settings
from faultstream.events.models import WorkerEvent
from faultstream.projections.projector import Projector, ProjectorOptions


def produce(settings, count: int) -> None:
    codec = Codec(topic_prefix=settings.kafka.topic_prefix)
    topic = topic_names(settings.kafka)["decisions"]
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "linger.ms": 50, "batch.size": 1_000_000})  # fmt: skip
    for n in range(count):
        kind = "FAILURE" if n % 10 == 0 else "SUCCESS"
        event = WorkerEvent(
            event_id=f"e{n}", kind=kind, ts=1_764_000_000_000 + n, worker_id=f"w{n % 500}",
            hardware_class="cuda", task_id=f"t{n}", task_type="bert",
            failure_type="TIMEOUT" if kind == "FAILURE" else None,
            attributes={"batch_size": "32"},
        )  # fmt: skip
        producer.produce(topic, codec.encode(event), b"fleet", partition=0)
        if n % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)


def consume_and_decode(settings, count: int) -> float:
    codec = Codec(topic_prefix=settings.kafka.topic_prefix)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": "bench", "enable.auto.commit": False})  # fmt: skip
    consumer.assign([TopicPartition(topic_names(settings.kafka)["decisions"], 0,
                                    OFFSET_BEGINNING)])  # fmt: skip
    seen = 0
    start = time.perf_counter()
    while seen < count:
        for message in consumer.consume(10_000, 0.5):
            if message.error() is None:
                codec.decode_input(message.value())
                seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return count / elapsed


def project(settings, count: int, workdir: Path) -> float:
    storage = {"duckdb_path": str(workdir / f"{uuid.uuid4().hex}.duckdb"),
               "read_models_dir": str(workdir / f"rm-{uuid.uuid4().hex}")}  # fmt: skip
    run_settings = settings.model_copy(
        update={"storage": settings.storage.model_copy(update=storage)}
    )
    projector = Projector(run_settings, ProjectorOptions(batch_rows=10_000))
    projector.start()
    start = time.perf_counter()
    while projector.rows_landed < count:
        projector.poll_once()
        projector.flush()
    elapsed = time.perf_counter() - start
    projector.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka={"bootstrap_servers": args.bootstrap, "topic_prefix": prefix})
    create_topics(settings.kafka)
    produce(settings, args.events)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = [consume_and_decode(settings, args.events) for _ in range(args.runs)]
        projector = [project(settings, args.events, Path(tmp)) for _ in range(args.runs)]
    print(f"{args.events:,} worker events on {prefix}.decisions, median of {args.runs} runs")
    print(f"{'path':<42}{'events/s':>12}")
    print(f"{'baseline: consume + decode (no DuckDB)':<42}{statistics.median(baseline):>12,.0f}")
    print(f"{'projector: consume + decode + DuckDB':<42}{statistics.median(projector):>12,.0f}")
    print(f"DuckDB share of the projector's time: "
          f"{1 - statistics.median(projector) / statistics.median(baseline):.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
