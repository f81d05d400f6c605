"""Processor throughput and latency on the local broker: framed batches vs one-at-a-time.

    .venv/bin/python bench/bench_processor.py [--events 50000] [--rate 5000] [--paced-s 3]
        [--runs 3] [--sustain-rate 20000] [--sustain-s 10] [--workers 200] [--ids sdk,plain]

Per variant, on fresh topics: start `faultstream processor` (with `--naive` for the
baseline), produce a history at full speed and time it through both stages (first
produce to the last command on `<prefix>.commands`; every 20th event is a FAILURE that
yields one command), sampling the backlog (events produced minus 20 x commands out, i.e.
end-to-end lag in events) as it goes; then produce failures at a paced rate for
`--paced-s` seconds and measure the latency from each produce to its command on the
output topic (the broker's append time: the topic is set to stamp records on append)
and, for comparison, to this bench's own reader (which adds its polling). For the
batched variant, last, produce at a steady `--sustain-rate` for `--sustain-s` seconds and
print the backlog over time: a rate is sustained when the backlog does not grow (the
table: its largest in each half of the time, and the seconds it took to drain). Medians
of `--runs` runs (the machine is shared and noisy); each run's topics are deleted after
it, as a broker slows down with thousands of partitions.

Event ids are the SDK's (`<producer>.<n>`, a new producer per worker in each phase, as
after a restart) unless `--ids plain` (unique text, the memory of the newest 10,000 ids
per worker); `--ids sdk,plain` runs the framed variant once with each.

The figures in BENCHMARKS.md: `--events 30000 --runs 5 --paced-s 10 --sustain-s 10`, and
for 50,000 events/s `--workers 1000 --ids sdk,plain --skip-naive --sustain-rate 50000
--sustain-s 60 --paced-s 10`.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from faultstream.events.admin import create_topics, delete_topics
from faultstream.events.codec import Codec
from faultstream.events.config import Settings, load_settings
from faultstream.events.gcpause import gc_paused
from faultstream.events.models import WorkerEvent

FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
BOOTSTRAP = os.environ.get("FAULTSTREAM_TEST_BOOTSTRAP", "127.0.0.1:9092")
FAILURE_EVERY = 20


@dataclass(frozen=True)
class Fleet:
    """The workers a bench history comes from, and the event ids they send."""

    workers: int = 200
    ids: str = "sdk"  # "sdk": `<producer>.<n>` as the SDK's Emitter sends; "plain": unique text

    def history(
        self, n: int, start_ts: int, tag: str, failures_only: bool = False
    ) -> list[WorkerEvent]:
        """Heartbeats, starts and successes; every 20th a FAILURE. Each `tag` is a new
        emitter on every worker (a new producer, numbered from 1), as after a restart."""
        events = []
        numbers: dict[str, int] = {}
        for i in range(n * FAILURE_EVERY if failures_only else n):
            if failures_only and i % FAILURE_EVERY:
                continue
            slot = i % self.workers
            worker = f"w{slot}"
            hardware = "cuda" if slot < self.workers // 2 else "cpu"
            numbers[worker] = number = numbers.get(worker, 0) + 1
            if self.ids == "sdk":
                producer = hashlib.blake2b(f"{tag}/{worker}".encode(), digest_size=8).hexdigest()
                event_id = f"{producer}.{number}"
            else:
                event_id = f"{tag}-{i}"
            common = dict(event_id=event_id, ts=start_ts + i // 20, worker_id=worker)
            if i % FAILURE_EVERY == 0:
                kind = dict(
                    kind="FAILURE", task_id=f"t{i}", task_type="bert", failure_type="TIMEOUT"
                )
            elif i % 3 == 0:
                kind = dict(kind="HEARTBEAT")
            else:
                kind = dict(kind="SUCCESS", task_id=f"t{i}", task_type="bert")
            events.append(WorkerEvent(hardware_class=hardware, **common, **kind))
        return events


def end_offsets(consumer: Consumer, topic: str) -> int:
    for attempt in range(20):
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            watermarks = [
                consumer.get_watermark_offsets(TopicPartition(topic, p)) for p in partitions
            ]
            return sum(high for _low, high in watermarks)
        except KafkaException:  # a fresh topic's leader not known yet, on a busy broker
            if attempt == 19:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def start_processor(settings: Settings, naive: bool, workdir: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=BOOTSTRAP,
        FAULTSTREAM_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        FAULTSTREAM_PROCESSOR__DATA_DIR=workdir,
    )
    log = open(Path(workdir) / "processor.log", "ab")  # noqa: SIM115 - lives with the process
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [FAULTSTREAM, "processor", "--web-port", str(port), *(["--naive"] if naive else [])]
    return subprocess.Popen(command, env=env, stdout=log, stderr=log)


def wait_for(consumer: Consumer, topic: str, count: int, deadline_s: float = 300) -> float:
    deadline = time.monotonic() + deadline_s
    while end_offsets(consumer, topic) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {count} records on {topic}")
        time.sleep(0.02)
    return time.perf_counter()


def run_once(
    fleet: Fleet,
    naive: bool,
    n_events: int,
    rate: int,
    paced_s: float,
    sustain: tuple[int, float] | None = None,
) -> dict[str, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka={"bootstrap_servers": BOOTSTRAP, "topic_prefix": prefix})
    create_topics(settings.kafka)
    stamp_on_append(settings.kafka.topic("commands"))
    codec = Codec(topic_prefix=prefix)
    producer = Producer(
        {"bootstrap.servers": BOOTSTRAP, "partitioner": "murmur2_random", "linger.ms": 5}
    )
    probe = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"{prefix}-probe"})
    events_topic, commands = settings.kafka.topic("events"), settings.kafka.topic("commands")
    workdir = tempfile.mkdtemp(prefix="bench-processor-")
    proc = start_processor(settings, naive, workdir)
    try:
        now = int(time.time() * 1000)
        # Warm up: the processor has joined its group once the first command is out.
        for event in fleet.history(FAILURE_EVERY, now, "warm"):
            producer.produce(events_topic, codec.encode(event), key=event.worker_id.encode())
        producer.flush()
        wait_for(probe, commands, 1, deadline_s=120)

        load = fleet.history(n_events, now, "load")
        batch = [(e.worker_id.encode(), codec.encode(e)) for e in load]
        expected = 1 + n_events // FAILURE_EVERY
        lag_samples: list[int] = []
        started = time.perf_counter()
        for i, (key, value) in enumerate(batch):
            producer.produce(events_topic, value, key=key)
            if i % 1000 == 0:
                producer.poll(0)
        producer.flush()
        while (done := end_offsets(probe, commands)) < expected:
            lag_samples.append(n_events + FAILURE_EVERY - done * FAILURE_EVERY)
            time.sleep(0.25)
        finished = wait_for(probe, commands, expected)
        throughput = n_events / (finished - started)

        to_topic, to_reader = paced_latencies(fleet, settings, codec, producer, rate, paced_s)
        held = {}
        if sustain is not None:
            held = sustained_backlog(fleet, settings, codec, producer, probe, *sustain)
    finally:
        proc.kill()
        proc.wait()
        probe.close()
        delete_topics(settings.kafka)  # thousands of partitions slow a broker down
    half = len(lag_samples) // 2
    return {
        "events/s": throughput,
        "max backlog": max(lag_samples, default=0),
        "backlog 2nd half": max(lag_samples[half:], default=0),
        "p50 ms": statistics.median(to_topic),
        "p99 ms": statistics.quantiles(to_topic, n=100)[98],
        "p99 reader ms": statistics.quantiles(to_reader, n=100)[98],
        **held,
    }


def stamp_on_append(topic: str) -> None:
    """The broker stamps each record as it appends it: a command's timestamp is then
    the moment it is on the output topic, whenever a reader gets round to it."""
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP, "log_level": 5})  # not its info
    entry = ConfigEntry(
        "message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


def paced_latencies(
    fleet: Fleet, settings: Settings, codec: Codec, producer: Producer, rate: int, seconds: float
) -> list[float]:
    """Produce failures at `rate`/s for `seconds`; ms from each produce to its command
    on the output topic (the broker's append time), and to this bench's reader."""
    n = int(rate * seconds)
    sent: dict[str, float] = {}
    events = fleet.history(n, int(time.time() * 1000), "paced", failures_only=True)
    topic = settings.kafka.topic("events")
    reader = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"{uuid.uuid4()}",
            "auto.offset.reset": "latest",
        }
    )
    reader.subscribe([settings.kafka.topic("commands")])
    reader.consume(1, timeout=5)  # join before producing
    to_topic: list[float] = []
    to_reader: list[float] = []
    # The bench's own collections (it holds 300k models) are not the processor's latency.
    with gc_paused():
        begin = time.perf_counter()
        for i, event in enumerate(events):
            due = begin + i / rate
            if (now := time.perf_counter()) < due:
                # Sleep, not spin: a spinning client takes a core from the processor.
                for message in reader.consume(500, timeout=0):
                    record_arrived(message, codec, sent, to_topic, to_reader)
                if (now := time.perf_counter()) < due:
                    time.sleep(due - now)
            sent[event.event_id] = time.time()
            producer.produce(topic, codec.encode(event), key=event.worker_id.encode())
            producer.poll(0)
        producer.flush()
        deadline = time.monotonic() + 60
        while len(to_topic) < len(events) and time.monotonic() < deadline:
            # Not consume(500, timeout): it holds what arrived until 500 are there or the
            # timeout passes, and that wait would count as latency.
            if (first := reader.poll(0.05)) is not None:
                for message in [first, *reader.consume(500, timeout=0)]:
                    record_arrived(message, codec, sent, to_topic, to_reader)
    reader.close()
    return to_topic, to_reader


def sustained_backlog(
    fleet: Fleet,
    settings: Settings,
    codec: Codec,
    producer: Producer,
    probe: Consumer,
    rate: int,
    seconds: float,
) -> dict[str, float]:
    """Produce at `rate` events/s for `seconds`; print the backlog every second. Returns
    the largest backlog in each half of the time producing, and the seconds it took
    after producing stopped for every command to be out."""
    commands = settings.kafka.topic("commands")
    topic = settings.kafka.topic("events")
    base = end_offsets(probe, commands)
    n = int(rate * seconds)
    batch = [(e.worker_id.encode(), codec.encode(e)) for e in fleet.history(n, now_ms(), "steady")]
    samples: list[tuple[float, int]] = []
    begin = time.perf_counter()
    next_sample = begin
    sent = 0
    chunk = max(1, rate // 100)  # every 10 ms
    while sent < n:
        due = begin + sent / rate
        if (now := time.perf_counter()) < due:
            time.sleep(due - now)
        for key, value in batch[sent : sent + chunk]:
            producer.produce(topic, value, key=key)
        sent = min(n, sent + chunk)
        producer.poll(0)
        if time.perf_counter() >= next_sample:
            done = (end_offsets(probe, commands) - base) * FAILURE_EVERY
            samples.append((time.perf_counter() - begin, sent - done))
            next_sample += 1.0
    producer.flush()
    produce_s = time.perf_counter() - begin
    expected = base + n // FAILURE_EVERY
    while (out := end_offsets(probe, commands)) < expected:
        samples.append((time.perf_counter() - begin, n - (out - base) * FAILURE_EVERY))
        time.sleep(0.5)
    drained = time.perf_counter() - begin
    print(
        f"  sustained {rate}/s for {seconds:.0f} s (produced in {produce_s:.1f} s, all out "
        f"after {drained:.1f} s); backlog in events over time:"
    )
    print("   " + "  ".join(f"{t:.0f}s:{lag}" for t, lag in samples), flush=True)
    producing = [lag for t, lag in samples if t < produce_s]
    half = len(producing) // 2
    return {
        "held 1st half": max(producing[:half], default=0),
        "held 2nd half": max(producing[half:], default=0),
        "drain s": drained - produce_s,
    }


def now_ms() -> int:
    return int(time.time() * 1000)


def record_arrived(
    message, codec: Codec, sent: dict[str, float], to_topic: list, to_reader: list
) -> None:
    if message.error() is None:
        command = codec.decode(message.value())
        if command.caused_by in sent:
            produced = sent.pop(command.caused_by)
            kind, appended_ms = message.timestamp()
            assert kind == TIMESTAMP_LOG_APPEND_TIME, "commands topic not stamped on append"
            to_topic.append(appended_ms - produced * 1000)
            to_reader.append((time.time() - produced) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--paced-s", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sustain-rate", type=int, default=20_000)
    parser.add_argument("--sustain-s", type=float, default=10.0)
    parser.add_argument("--skip-naive", action="store_true", help="e.g. for a stretch rate")
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument(
        "--ids",
        default="sdk",
        help="comma-separated: sdk (`<producer>.<n>`, as the SDK sends), plain (unique text); "
        "the framed variant runs once for each",
    )
    args = parser.parse_args()
    kinds = args.ids.split(",")
    variants = [("naive (one event at a time)", True, kinds[0])] * (not args.skip_naive)
    variants += [(f"framed batches, {ids} ids", False, ids) for ids in kinds]
    rows = {}
    for name, naive, ids in variants:
        print(name, flush=True)
        fleet = Fleet(args.workers, ids)
        sustain = None if naive else (args.sustain_rate, args.sustain_s)
        runs = []
        for _ in range(args.runs):
            runs.append(run_once(fleet, naive, args.events, args.rate, args.paced_s, sustain))
            print("  " + "  ".join(f"{k} {v:.1f}" for k, v in runs[-1].items()), flush=True)
        rows[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    columns = list(rows[max(rows, key=lambda name: len(rows[name]))])
    print(
        f"{args.events} events, paced latency at {args.rate}/s for {args.paced_s:.0f} s, "
        f"median of {args.runs} runs"
    )
    print(f"{'variant':<30}" + "".join(f"{c:>17}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<30}" + "".join(f"{row.get(c, math.nan):>17.1f}" for c in columns))
    if not args.skip_naive:
        base, fast = list(rows.values())[:2]
        print(f"speed-up: {fast['events/s'] / base['events/s']:.1f}x")


if __name__ == "__main__":
    main()
