"""Loading a CircuitView from the circuits topic, and the cost of the guard's check.

Against a real broker (default 127.0.0.1:9092, topics under a fresh prefix, deleted
afterwards). Two topics of 100k circuits: one record per circuit (what compaction leaves)
and three per circuit (before the cleaner has run). For each, in the same run:

- `consume`: assign every partition, read to the end touching each value, nothing built
  (the floor any reader pays), with librdkafka's default prefetch and with the view's
  (`circuit_view.FETCH_CONFIG`);
- `codec + apply`: the generic path, each record through `Codec.decode` (fastavro +
  pydantic) and `CircuitView.apply`, with the view's prefetch;
- `CircuitView.from_kafka`: what a coordinator calls (newest raw value per key while
  reading, each circuit decoded once by the hand-written Avro reader).

Then the check a guard makes per call, on the loaded view (1% of circuits not CLOSED), in
ns per call (median of --runs repeats of --calls calls): a dict lookup and three dict
lookups as baselines, `admits` and `acquire` for circuits that are CLOSED, `acquire` +
`release` through a HALF_OPEN circuit, and a whole guarded call without an emitter.

    .venv/bin/python bench/bench_circuit_view.py [--bootstrap 127.0.0.1:9092] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from faultstream.events.admin import create_topics, delete_topics, end_offsets
from faultstream.events.circuit_view import FETCH_CONFIG, CircuitView
from faultstream.events.codec import Codec
from faultstream.events.config import Settings
from faultstream.events.guard import Guard
from faultstream.events.models import CircuitStateChanged

TARGET_LOAD_S = 2.0
TARGET_CHECK_NS = 1_000
STATES = ("OPEN", "HALF_OPEN", "CLOSED")


def record(i: int, state: str, ts: int) -> CircuitStateChanged:
    kind = ("worker", "hardware_class", "task_type")[i % 3]
    return CircuitStateChanged(
        event_id=uuid.uuid4().hex,
        ts=ts,
        circuit_kind=kind,
        circuit_id=f"{kind[:2]}-{i:06d}",
        from_state="CLOSED",
        to_state=state,
        reason="5 consecutive failures; failure_threshold reached",
        consecutive_failures=5,
        trips=1,
        reset_timeout_s=60.0,
        health=18.0,
        caused_by=uuid.uuid4().hex,
    )


def fill(settings: Settings, topic: str, circuits: int, per_circuit: int) -> int:
    """`per_circuit` records for each circuit; the last leaves 1% of them not CLOSED."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    codec = Codec()
    now = time.time_ns() // 1_000_000
    sent = 0
    for round_ in range(per_circuit):
        last = round_ == per_circuit - 1
        for i in range(circuits):
            state = ("OPEN" if i % 200 == 0 else "HALF_OPEN") if i % 100 == 0 else "CLOSED"
            if not last:
                state = STATES[round_ % 2]
            r = record(i, state, now - (per_circuit - round_) * 1000)
            producer.produce(topic, codec.encode(r), r.key)
            sent += 1
            if sent % 50_000 == 0:
                producer.flush()
    producer.flush()
    return sent


def read_to_end(
    settings: Settings, topic: str, fetch: dict, each: Callable[[Message], None]
) -> None:
    """Every record of `topic` to the end offsets it had at start, as the view reads it:
    a partition is done at its last offset (or its end-of-partition event)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": "bench",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **fetch,
        }
    )
    partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    ends = end_offsets(consumer, topic, partitions)
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
    pending = {p for p, (low, high) in ends.items() if high > low}
    while pending:
        for msg in consumer.consume(10_000, 0.2):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            each(msg)
            if msg.offset() >= ends[msg.partition()][1] - 1:
                pending.discard(msg.partition())
    consumer.close()


def plain_consume(settings: Settings, topic: str, fetch: dict) -> int:
    count = [0]

    def touch(msg: Message) -> None:
        msg.value()
        count[0] += 1

    read_to_end(settings, topic, fetch, touch)
    return count[0]


def codec_apply(settings: Settings, topic: str) -> int:
    view = CircuitView()
    codec = Codec()
    read_to_end(
        settings,
        topic,
        FETCH_CONFIG,
        lambda msg: view.apply(codec.decode(msg.value())),  # type: ignore[arg-type]
    )
    return len(view)


def interleaved(fns: list[Callable[[], object]], runs: int) -> list[tuple[float, object]]:
    """Median seconds of each function (and its last result), the runs interleaved so a
    noisy moment of the machine falls on every variant alike."""
    times: list[list[float]] = [[] for _ in fns]
    results: list[object] = [None] * len(fns)
    for _ in range(runs):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - started)
    return [(statistics.median(t), r) for t, r in zip(times, results, strict=True)]


def per_call_ns(fn: Callable[[], object], calls: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - started) / calls)
    loop = []
    for _ in range(runs):  # the bare loop, subtracted: only the call is measured
        started = time.perf_counter_ns()
        for _ in range(calls):
            pass
        loop.append((time.perf_counter_ns() - started) / calls)
    return statistics.median(samples) - statistics.median(loop)


def check_costs(view: CircuitView, calls: int, runs: int) -> list[tuple[str, float]]:
    table = {f"wo-{i:06d}": i for i in range(0, 100_000, 3)}
    lookups = (table, {}, {})
    w, h, t = "wo-000003", "ha-000004", "ta-000005"  # CLOSED circuits
    half_open = next(c for c in view if c.state.value == "HALF_OPEN")
    half_ids = {
        "worker": (half_open.id, h, t),
        "hardware_class": (w, half_open.id, t),
        "task_type": (w, h, half_open.id),
    }[half_open.kind.value]
    guarded = Guard(view)(worker_id=w, hardware_class=h, task_type=t)(lambda: None)

    def three_lookups() -> object:
        return lookups[0].get(w) or lookups[1].get(h) or lookups[2].get(t)

    def probe() -> None:
        view.acquire(*half_ids).release()

    return [
        ("dict lookup (baseline)", per_call_ns(lambda: table.get(w), calls, runs)),
        ("3 dict lookups (baseline)", per_call_ns(three_lookups, calls, runs)),
        ("admits(w, h, t), all CLOSED", per_call_ns(lambda: view.admits(w, h, t), calls, runs)),
        ("acquire(w, h, t), all CLOSED", per_call_ns(lambda: view.acquire(w, h, t), calls, runs)),
        ("acquire + release, one HALF_OPEN", per_call_ns(probe, calls, runs)),
        ("guarded call, no emitter", per_call_ns(guarded, calls, runs)),
        ("bare call (baseline)", per_call_ns(lambda: None, calls, runs)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--circuits", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args()
    prefix = f"bench-view-{uuid.uuid4().hex[:8]}"
    # Deleted at the end with everything under it (`<prefix>-circuits1.…` too).
    settings = Settings(kafka={"bootstrap_servers": args.bootstrap, "topic_prefix": prefix})
    try:
        print(f"circuit view benchmark: {args.circuits:,} circuits, medians of {args.runs} runs")
        print()
        print(
            "| circuits topic | records | consume, librdkafka defaults | consume, the view's "
            "fetch settings | codec + apply | CircuitView.from_kafka |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        view = None
        for per_circuit in (1, 3):
            name = f"circuits{per_circuit}"
            # Each layout on its own prefix: from_kafka reads <prefix>.circuits.
            local = Settings(
                kafka={"bootstrap_servers": args.bootstrap, "topic_prefix": f"{prefix}-{name}"}
            )
            create_topics(local.kafka)
            try:
                topic = local.kafka.topic("circuits")
                sent = fill(local, topic, args.circuits, per_circuit)
                (
                    (default, _),
                    (plain, _),
                    (generic, n),
                    (ours, view),
                ) = interleaved(
                    [
                        lambda: plain_consume(local, topic, {}),  # noqa: B023
                        lambda: plain_consume(local, topic, FETCH_CONFIG),  # noqa: B023
                        lambda: codec_apply(local, topic),  # noqa: B023
                        lambda: CircuitView.from_kafka(local, follow=False),  # noqa: B023
                    ],
                    args.runs,
                )
                assert n == args.circuits, n
                assert len(view) == args.circuits, len(view)  # type: ignore[arg-type]
                label = "compacted: 1 per circuit" if per_circuit == 1 else "3 per circuit"
                print(
                    f"| {label} | {sent:,} | {default:.2f} s | {plain:.2f} s | {generic:.2f} s "
                    f"| **{ours:.2f} s** |"
                )
            finally:
                delete_topics(local.kafka)
        print()
        print(f"target: {args.circuits:,} circuits loaded in < {TARGET_LOAD_S:g} s")
        print()
        print(f"| check ({args.calls:,} calls, loop subtracted) | ns per call |")
        print("| --- | --- |")
        assert isinstance(view, CircuitView)
        for label, ns in check_costs(view, args.calls, args.runs):
            print(f"| {label} | {ns:,.0f} |")
        print()
        print(f"target: the check < {TARGET_CHECK_NS:,} ns")
    finally:
        delete_topics(settings.kafka)


if __name__ == "__main__":
    main()
