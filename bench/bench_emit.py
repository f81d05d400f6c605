"""Emit cost, sustained throughput and acknowledgement latency of the worker SDK.

Runs against a real broker (default 127.0.0.1:9092, topics under a fresh prefix) and
compares, in the same run, `Emitter.failure(...)` (validation + Avro + produce) with two
baselines: a prebuilt dict through fastavro + produce, and through json.dumps + produce.
Each figure is the median over --runs runs (the machine is noisy).

    .venv/bin/python bench/bench_emit.py [--bootstrap 127.0.0.1:9092] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Producer
from fastavro import schemaless_writer

from faultstream.events.admin import create_topics
from faultstream.events.codec import HEADER, SCHEMAS
from faultstream.events.config import Settings
from faultstream.events.emitter import Emitter, KafkaTransport

TARGET_EMIT_P50_US = 5.0
TARGET_THROUGHPUT = 100_000

BODY = {
    "event_id": "", "kind": "FAILURE", "ts": 0, "worker_id": "bench-worker",
    "hardware_class": "cuda", "task_id": "task-1", "task_type": "bert-inference",
    "failure_type": None, "message": "CUDA error: out of memory", "attempt": 1,
    "recovery_command_id": None, "attributes": {"batch_size": "32"},
    "checkpoint_seq": None, "checkpoint_state": None,
}  # fmt: skip


def producer_config(bootstrap: str) -> dict:
    # The same settings as KafkaTransport, so only the caller-side work differs.
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "queue.buffering.max.messages": 1_000_000,
        "compression.type": "lz4",
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Baseline:
    """A bare producer with an encode function and an ack counter."""

    def __init__(self, bootstrap: str, topic: str, encode: Callable[[dict], bytes]) -> None:
        self.producer = Producer(producer_config(bootstrap))
        self.topic = topic
        self.encode = encode
        self.acked = 0

    def _ack(self, err: object, _msg: object) -> None:
        if err is None:
            self.acked += 1

    def send(self, n: int) -> None:
        body = dict(BODY, event_id=uuid.uuid4().hex, ts=time.time_ns() // 1_000_000)
        self.producer.produce(self.topic, self.encode(body), "bench-worker", on_delivery=self._ack)
        self.producer.poll(0)


def fastavro_encode(body: dict) -> bytes:
    out = io.BytesIO()
    out.write(HEADER.pack(0, 1))
    schemaless_writer(out, SCHEMAS["worker_event"].parsed, body)
    return out.getvalue()


def json_encode(body: dict) -> bytes:
    return json.dumps(body).encode()


def ours(settings: Settings) -> tuple[Emitter, Callable[[int], None]]:
    emitter = Emitter(settings, worker_id="bench-worker", hardware_class="cuda")

    def send(n: int) -> None:
        emitter.failure(
            "task-1", "bert-inference", message="CUDA error: out of memory", attempt=1,
            attributes={"batch_size": "32"},
        )  # fmt: skip

    return emitter, send


def emit_cost(send: Callable[[int], None], n: int) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for i in range(n):
        start = clock()
        send(i)
        samples.append((clock() - start) / 1000)
    return samples


def throughput(send: Callable[[int], None], acked: Callable[[], int], flush, n: int) -> float:
    base = acked()
    start = time.perf_counter()
    for i in range(n):
        send(i)
    flush()
    elapsed = time.perf_counter() - start
    assert acked() - base == n, f"only {acked() - base} of {n} acknowledged"
    return n / elapsed


class TimedTransport(KafkaTransport):
    """Records each event's send-to-acknowledgement latency."""

    def __init__(self, *args, **kwargs) -> None:
        self.sent_at: dict[str, float] = {}
        self.latencies_ms: list[float] = []
        super().__init__(*args, **kwargs)

    def send(self, event) -> None:
        self.sent_at[event.event_id] = time.perf_counter()
        super().send(event)

    def _on_delivery(self, event_id, err, msg) -> None:
        sent = self.sent_at.pop(event_id, None)
        if err is None and sent is not None:
            self.latencies_ms.append((time.perf_counter() - sent) * 1000)
        super()._on_delivery(event_id, err, msg)


def paced_ack_latency(settings: Settings, rate: int, seconds: float) -> float:
    transport = TimedTransport(settings)
    emitter = Emitter(worker_id="bench-worker", hardware_class="cuda", transport=transport)
    emitter.heartbeat()  # warm up: connection and producer id before timing
    emitter.flush(30)
    transport.latencies_ms.clear()
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        while time.perf_counter() < due:
            transport._producer.poll(0)
        emitter.heartbeat()
    emitter.close(30)
    return percentile(transport.latencies_ms, 0.99)


def one_run(settings: Settings, n_cost: int, n_throughput: int) -> dict[str, float]:
    topic = settings.kafka.topic("events")
    bootstrap = settings.kafka.bootstrap_servers
    row: dict[str, float] = {}
    emitter, our_send = ours(settings)
    raw = Baseline(bootstrap, topic, fastavro_encode)
    js = Baseline(bootstrap, topic, json_encode)
    for name, send, flush in (
        ("ours", our_send, lambda: emitter.flush(60)),
        ("fastavro", raw.send, lambda: raw.producer.flush(60)),
        ("json", js.send, lambda: js.producer.flush(60)),
    ):
        emit_cost(send, 2000)  # warm up: connections, metadata
        flush()
        samples = emit_cost(send, n_cost)
        flush()
        row[f"{name}_p50_us"] = statistics.median(samples)
        row[f"{name}_p99_us"] = percentile(samples, 0.99)
    transport = emitter.transport
    row["ours_ev_s"] = throughput(
        our_send, lambda: transport.acked, lambda: emitter.flush(120), n_throughput
    )
    row["fastavro_ev_s"] = throughput(
        raw.send, lambda: raw.acked, lambda: raw.producer.flush(120), n_throughput
    )
    row["json_ev_s"] = throughput(
        js.send, lambda: js.acked, lambda: js.producer.flush(120), n_throughput
    )
    emitter.close(60)
    row["ours_ack_p99_ms"] = paced_ack_latency(settings, 10_000, 3.0)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cost-events", type=int, default=50_000)
    parser.add_argument("--throughput-events", type=int, default=300_000)
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka={"bootstrap_servers": args.bootstrap, "topic_prefix": prefix},
        emitter={"spool_path": f"/tmp/{prefix}-spool.jsonl"},
    )
    create_topics(settings.kafka)
    runs = [one_run(settings, args.cost_events, args.throughput_events) for _ in range(args.runs)]
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    print(f"emit benchmark, {args.runs} runs, medians (broker {args.bootstrap}, topic {prefix})")
    print(f"{'path':<34}{'emit p50 µs':>12}{'emit p99 µs':>12}{'acked ev/s':>12}")
    for name, label in (
        ("ours", "Emitter.failure (validate+Avro)"),
        ("fastavro", "baseline: dict → fastavro+produce"),
        ("json", "baseline: dict → json+produce"),
    ):
        print(
            f"{label:<34}{med[f'{name}_p50_us']:>12.2f}{med[f'{name}_p99_us']:>12.2f}"
            f"{med[f'{name}_ev_s']:>12,.0f}"
        )
    print(f"ours: p99 ack latency at a paced 10,000 ev/s: {med['ours_ack_p99_ms']:.1f} ms")
    print(
        f"targets: emit p50 ≤ {TARGET_EMIT_P50_US} µs → "
        f"{'met' if med['ours_p50_us'] <= TARGET_EMIT_P50_US else 'NOT met'}; "
        f"≥ {TARGET_THROUGHPUT:,} ev/s acked → "
        f"{'met' if med['ours_ev_s'] >= TARGET_THROUGHPUT else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
