"""Emit cost, sustained throughput and acknowledgement latency of the worker SDK.

Runs against a real broker (default 127.0.0.1:9092, topics under a fresh prefix) and
compares, in the same run, `Emitter.failure(...)` with the background sender (the
default: the caller validates and appends; a thread encodes and produces), the same
emitter with `background=False` (validation + Avro + produce on the caller's thread), and
two baselines: a prebuilt dict through fastavro + produce, and through json.dumps +
produce. "emit µs" is the time on the caller's thread; "CPU µs/ev" is the process's CPU
time (every thread, librdkafka's included) per acknowledged event in the throughput run.
Each figure is the median over --runs runs (the machine is noisy).

    .venv/bin/python bench/bench_emit.py [--bootstrap 127.0.0.1:9092] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Producer
from fastavro import schemaless_writer

from faultstream.events.admin import create_topics, delete_topics
from faultstream.events.codec import HEADER, SCHEMAS
from faultstream.events.config import Settings
from faultstream.events.emitter import Emitter, KafkaTransport
from faultstream.events.models import EventKind, WorkerEvent
from faultstream.events.transport import PRODUCER_DEFAULTS

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
    return {**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap}


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


def ours(settings: Settings, **transport_options) -> tuple[Emitter, Callable[[int], None]]:
    transport = KafkaTransport(settings, **transport_options)
    emitter = Emitter(worker_id="bench-worker", hardware_class="cuda", transport=transport)

    def send(n: int) -> None:
        emitter.failure(
            "task-1", "bert-inference", message="CUDA error: out of memory", attempt=1,
            attributes={"batch_size": "32"},
        )  # fmt: skip

    return emitter, send


def before_change(settings: Settings) -> tuple[KafkaTransport, Callable[[int], None]]:
    """The SDK's per-event work before the fast path: full pydantic validation from
    keyword arguments, an os.urandom id, then encode + produce + poll on the caller."""
    transport = KafkaTransport(settings, background=False)

    def send(n: int) -> None:
        raw = bytearray(os.urandom(16))
        raw[6] = (raw[6] & 0x0F) | 0x40
        raw[8] = (raw[8] & 0x3F) | 0x80
        event = WorkerEvent(
            event_id=raw.hex(), kind=EventKind.FAILURE, ts=time.time_ns() // 1_000_000,
            worker_id="bench-worker", hardware_class="cuda", task_id="task-1",
            task_type="bert-inference", failure_type=None, message="CUDA error: out of memory",
            attempt=1, recovery_command_id=None, attributes={"batch_size": "32"},
        )  # fmt: skip
        transport.send(event)

    return transport, send


def emit_cost(send: Callable[[int], None], n: int) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for i in range(n):
        start = clock()
        send(i)
        samples.append((clock() - start) / 1000)
    return samples


def throughput(
    send: Callable[[int], None], acked: Callable[[], int], flush, n: int
) -> tuple[float, float]:
    """(acknowledged events per second, process CPU µs per event)"""
    base = acked()
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        send(i)
    flush()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert acked() - base == n, f"only {acked() - base} of {n} acknowledged"
    return n / elapsed, cpu / n * 1e6


class TimedTransport(KafkaTransport):
    """Records each event's send-to-acknowledgement latency."""

    def __init__(self, *args, **kwargs) -> None:
        self.sent_at: dict[str, float] = {}
        self.latencies_ms: list[float] = []
        super().__init__(*args, **kwargs)

    def send(self, event) -> None:
        self.sent_at[event.event_id] = time.perf_counter()
        super().send(event)

    def _on_delivery(self, event_id, err, msg) -> None:  # on the sender's thread
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
        if i % 10 == 0:  # pace by sleeping, so the sender thread gets the GIL meanwhile
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        emitter.heartbeat()
    emitter.close(30)
    return percentile(transport.latencies_ms, 0.99)


def one_run(
    settings: Settings, n_cost: int, n_throughput: int, variants: dict[str, dict]
) -> dict[str, float]:
    topic = settings.kafka.topic("events")
    bootstrap = settings.kafka.bootstrap_servers
    row: dict[str, float] = {}
    paths: list[tuple[str, Callable[[int], None], Callable[[], int], Callable[[], object]]] = []
    emitters = []
    for name, options in (("ours", {}), ("inline", {"background": False}), *variants.items()):
        emitter, send = ours(settings, **options)
        emitters.append(emitter)
        transport = emitter.transport
        paths.append((name, send, lambda t=transport: t.acked, lambda e=emitter: e.flush(120)))
    old_transport, old_send = before_change(settings)
    paths.append(
        ("before", old_send, lambda: old_transport.acked, lambda: old_transport.flush(120))
    )
    for name, encode in (("fastavro", fastavro_encode), ("json", json_encode)):
        raw = Baseline(bootstrap, topic, encode)
        paths.append((name, raw.send, lambda r=raw: r.acked, lambda r=raw: r.producer.flush(120)))
    for name, send, _acked, flush in paths:
        emit_cost(send, 2000)  # warm up: connections, metadata
        flush()
        samples = emit_cost(send, n_cost)
        flush()
        row[f"{name}_p50_us"] = statistics.median(samples)
        row[f"{name}_p99_us"] = percentile(samples, 0.99)
    for name, send, acked, flush in paths:
        row[f"{name}_ev_s"], row[f"{name}_cpu_us"] = throughput(send, acked, flush, n_throughput)
    for emitter in emitters:
        emitter.close(60)
    old_transport.close(60)
    row["ours_ack_p99_ms"] = paced_ack_latency(settings, 10_000, 3.0)
    return row


VARIANTS: dict[str, dict] = {
    "no-compression": {"producer_config": {"compression.type": "none"}},
    "linger20-batch1M": {"producer_config": {"linger.ms": 20, "batch.size": 1_000_000}},
}
LABELS = {
    "ours": "Emitter.failure, sender thread",
    "inline": "Emitter.failure, background=False",
    "no-compression": "  sender thread, compression none",
    "linger20-batch1M": "  sender thread, linger 20 batch 1M",
    "before": "baseline: the SDK before (pydantic)",
    "fastavro": "baseline: dict → fastavro+produce",
    "json": "baseline: dict → json+produce",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cost-events", type=int, default=50_000)
    parser.add_argument("--throughput-events", type=int, default=300_000)
    parser.add_argument("--variants", action="store_true", help="also try other producer settings")
    args = parser.parse_args()
    variants = VARIANTS if args.variants else {}
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka={"bootstrap_servers": args.bootstrap, "topic_prefix": prefix},
        emitter={"spool_path": f"/tmp/{prefix}-spool.jsonl"},
    )
    create_topics(settings.kafka)
    try:
        runs = [
            one_run(settings, args.cost_events, args.throughput_events, variants)
            for _ in range(args.runs)
        ]
    finally:
        delete_topics(settings.kafka)  # thousands of partitions slow a broker down
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    print(f"emit benchmark, {args.runs} runs, medians (broker {args.bootstrap}, topic {prefix})")
    print(
        f"{'path':<38}{'emit p50 µs':>12}{'emit p99 µs':>12}{'acked ev/s':>12}"
        f"{'CPU µs/ev':>11}{'p50÷before':>12}{'ev/s÷before':>13}"
    )
    for name in ("ours", "inline", *variants, "before", "fastavro", "json"):
        print(
            f"{LABELS[name]:<38}{med[f'{name}_p50_us']:>12.2f}{med[f'{name}_p99_us']:>12.2f}"
            f"{med[f'{name}_ev_s']:>12,.0f}{med[f'{name}_cpu_us']:>11.2f}"
            f"{med[f'{name}_p50_us'] / med['before_p50_us']:>12.2f}"
            f"{med[f'{name}_ev_s'] / med['before_ev_s']:>13.2f}"
        )
    print(
        f"sender thread: p99 ack latency at a paced 10,000 ev/s: "
        f"{med['ours_ack_p99_ms']:.1f} ms (per run: "
        + ", ".join(f"{run['ours_ack_p99_ms']:.1f}" for run in runs)
        + ")"
    )
    print(
        f"targets: emit p50 ≤ {TARGET_EMIT_P50_US} µs → "
        f"{'met' if med['ours_p50_us'] <= TARGET_EMIT_P50_US else 'NOT met'}; "
        f"≥ {TARGET_THROUGHPUT:,} ev/s acked → "
        f"{'met' if med['ours_ev_s'] >= TARGET_THROUGHPUT else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
