"""Projector throughput from the local broker into DuckDB (issue #4: >= 100,000 events/s,
transactions of >= 10,000 rows), against baselines in the same run that do not touch
DuckDB: consume + the validating per-record decode (the baseline of the issue), and
consume + the projector's own columnar decode. Medians of several runs; the machine is
noisy, so the ratios matter more than the figures.

Two layouts of `<prefix>.ordered`: one Kafka record per event (the issue's case, and the
worst: Kafka's per-message cost is paid per event) and frames of 100 events, as the
processor writes them.

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

from faultstream.events import frames as framing
from faultstream.events.admin import create_topics, delete_topics, topic_names
from faultstream.events.codec import Codec
from faultstream.events.config import load_settings
from faultstream.events.models import WorkerEvent
from faultstream.projections.columns import FramesDecoder
from faultstream.projections.projector import Projector, ProjectorOptions, consumer_config

TARGET = 100_000
FRAME = 100
POLL_S = ProjectorOptions().poll_timeout_s  # the baselines wait on consume() as the projector


def events(settings, count: int) -> list[bytes]:
    codec = Codec(topic_prefix=settings.kafka.topic_prefix)
    out = []
    for n in range(count):
        kind = "FAILURE" if n % 10 == 0 else "SUCCESS"
        event = WorkerEvent(
            event_id=f"e{n}", kind=kind, ts=1_764_000_000_000 + n, worker_id=f"w{n % 500}",
            hardware_class="cuda", task_id=f"t{n}", task_type="bert",
            failure_type="TIMEOUT" if kind == "FAILURE" else None,
            attributes={"batch_size": "32"},
        )  # fmt: skip
        out.append(codec.encode(event))
    return out


def produce(settings, count: int, frame: int) -> None:
    """`count` events onto `.ordered`, one a record (frame 1) or `frame` a record."""
    topic = topic_names(settings.kafka)["ordered"]
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "linger.ms": 50, "batch.size": 1_000_000})  # fmt: skip
    records = events(settings, count)
    values = records if frame == 1 else [
        framing.pack(records[i : i + frame]) for i in range(0, count, frame)
    ]  # fmt: skip
    for n, value in enumerate(values):
        producer.produce(topic, value, b"fleet", partition=0)
        if n % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)


def consume_and_decode(settings, count: int, columnar: bool) -> float:
    """The baselines: consume `count` events and decode them, one validated model per
    record (as the issue measured) or a batch at a time into columns (as the projector)."""
    codec = Codec(topic_prefix=settings.kafka.topic_prefix)
    decoder = FramesDecoder(codec)
    consumer = Consumer(consumer_config(settings.kafka))  # the projector's fetch sizes
    consumer.assign([TopicPartition(topic_names(settings.kafka)["ordered"], 0,
                                    OFFSET_BEGINNING)])  # fmt: skip
    seen = 0
    start = time.perf_counter()
    while seen < count:
        messages = [m for m in consumer.consume(10_000, POLL_S) if m.error() is None]
        if columnar:
            values = [m.value() for m in messages]
            seen += decoder.decode(values, [m.offset() for m in messages]).events.num_rows
        else:
            for message in messages:
                for record in framing.unpack(message.value()):
                    codec.decode_input(record)
                    seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return count / elapsed


def project(settings, count: int, workdir: Path) -> tuple[float, float]:
    """(events/s, mean rows per transaction) of the projector's own loop (`step`), the
    read models left out as before (they publish every 2 s in production)."""
    storage = {"duckdb_path": str(workdir / f"{uuid.uuid4().hex}.duckdb"),
               "read_models_dir": str(workdir / f"rm-{uuid.uuid4().hex}")}  # fmt: skip
    run_settings = settings.model_copy(
        update={"storage": settings.storage.model_copy(update=storage)}
    )
    options = ProjectorOptions(batch_rows=10_000, publish_interval_s=3600)
    projector = Projector(run_settings, options)
    projector.start()
    consumed = 0
    start = time.perf_counter()
    while consumed < count:
        consumed += projector.step()  # rows: every event here
    projector.flush()
    elapsed = time.perf_counter() - start
    rows = projector.rows_landed / projector.batches_landed
    projector.close()
    return count / elapsed, rows


def scenario(args: argparse.Namespace, frame: int, workdir: Path) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka={"bootstrap_servers": args.bootstrap, "topic_prefix": prefix})
    create_topics(settings.kafka)
    try:
        produce(settings, args.events, frame)
        consume_and_decode(settings, args.events, True)  # untimed: warms the broker's reads
        per_record = [consume_and_decode(settings, args.events, False) for _ in range(args.runs)]
        columnar = [consume_and_decode(settings, args.events, True) for _ in range(args.runs)]
        runs = [project(settings, args.events, workdir) for _ in range(args.runs)]
    finally:
        delete_topics(settings.kafka)  # thousands of partitions slow a broker down
    projector = statistics.median(rate for rate, _ in runs)
    batch = statistics.median(rows for _, rows in runs)
    layout = "one Kafka record each" if frame == 1 else f"frames of {frame}"
    print(f"\n{args.events:,} worker events on {prefix}.ordered, {layout}, "
          f"median of {args.runs} runs")  # fmt: skip
    print(f"{'path':<50}{'events/s':>10}{'projector / it':>16}")
    for name, rates in [
        ("baseline: consume + per-record validating decode", per_record),
        ("baseline: consume + columnar decode", columnar),
    ]:
        rate = statistics.median(rates)
        print(f"{name:<50}{rate:>10,.0f}{projector / rate:>16.2f}")
    print(f"{'projector: consume + decode + DuckDB':<50}{projector:>10,.0f}")
    print(f"{'target (issue #4)':<50}{TARGET:>10,}{projector / TARGET:>16.2f}")
    print(f"rows per DuckDB transaction (median of the runs' means): {batch:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    with open("/proc/loadavg") as fh:
        print(f"load average before: {' '.join(fh.read().split()[:3])}")
    with tempfile.TemporaryDirectory() as tmp:
        for frame in (1, FRAME):
            scenario(args, frame, Path(tmp))
    with open("/proc/loadavg") as fh:
        print(f"\nload average after: {' '.join(fh.read().split()[:3])}")


if __name__ == "__main__":
    main()
