"""The whole processor at fleet scale, in real time: backlog, memory, snapshots, restart.

    .venv/bin/python bench/bench_processor_scale.py [--workers 10000] [--minutes 10]
        [--baseline-minutes 3] [--slots 2]

Per id style, on fresh topics of the local broker (FAULTSTREAM_TEST_BOOTSTRAP): start
`faultstream processor --log-format json`, then produce the steady fleet of
processors/simulator/steady.py (about 2 events/s per worker with two slots) paced at
real time, one second of the fleet per second, with the fleet's clock on this machine's.
Every 10 s it samples the processor's RSS; afterwards it reads the decide stage's stats
lines (records/s, the age of what it decides: flat when the backlog is) and every
snapshot's line (size, pause). Then it SIGKILLs the processor, starts it again at once
and sends one failure of a new worker: the time from the restart to its command on
`<prefix>.commands` is the restore figure.

The baseline is the same run with uuid4 ids (what the SDK sent before sequenced ids), for
`--baseline-minutes` (its state grows with every event: long runs only show more of it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from faultstream.events.admin import create_topics, delete_topics
from faultstream.events.codec import Codec
from faultstream.events.config import Settings, load_settings
from faultstream.events.models import WorkerEvent
from faultstream.processors.simulator.steady import steady_fleet

FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
BOOTSTRAP = os.environ.get("FAULTSTREAM_TEST_BOOTSTRAP", "127.0.0.1:9092")


def start(settings: Settings, workdir: str, port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=BOOTSTRAP,
        FAULTSTREAM_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        FAULTSTREAM_PROCESSOR__DATA_DIR=workdir,
    )
    log = open(Path(workdir) / "processor.log", "ab")  # noqa: SIM115 - lives with the process
    command = [FAULTSTREAM, "processor", "--log-format", "json", "--web-port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log, stderr=log)


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its children (a snapshot's child included)."""
    total = 0
    for task in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{task}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [int(c) for c in found]


def failure(worker: str, ts: int) -> WorkerEvent:
    return WorkerEvent(event_id=f"{uuid.uuid4().hex}.1", kind="FAILURE", ts=ts,
                       worker_id=worker, hardware_class="hw-0", task_id=f"{worker}-t",
                       task_type="tt-0", failure_type="TIMEOUT")  # fmt: skip


def wait_for_command(
    consumer: Consumer, codec: Codec, task_id: str, deadline_s: float = 300
) -> float:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.05)
        if message is None or message.error() is not None:
            continue
        if codec.decode(message.value()).task_id == task_id:  # type: ignore[union-attr]
            return time.monotonic()
    raise SystemExit(f"no command for {task_id} within {deadline_s} s")


def run(ids: str, workers: int, seconds: int, slots: int) -> dict:
    prefix = f"scale-{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka={"bootstrap_servers": BOOTSTRAP, "topic_prefix": prefix})
    create_topics(settings.kafka)
    workdir = tempfile.mkdtemp(prefix="bench-processor-scale-")
    codec = Codec(topic_prefix=prefix)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20,
                         "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    topic = settings.kafka.topic("events")
    commands = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"{prefix}-probe"})
    ends = [TopicPartition(settings.kafka.topic("commands"), p, OFFSET_END)
            for p in range(settings.kafka.partitions)]  # fmt: skip
    commands.assign(ends)
    with socket.socket() as sock:  # one port for both starts, as a deployment has
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = start(settings, workdir, port)
    rss: list[float] = []
    try:
        warm = failure("warm-up", int(time.time() * 1000))
        producer.produce(topic, codec.encode(warm), key=warm.worker_id.encode())
        producer.flush()
        wait_for_command(commands, codec, warm.task_id)  # type: ignore[arg-type]
        started = time.monotonic()
        start_ms = int(time.time() * 1000)
        produced = 0
        fleet = steady_fleet(workers, seconds, slots=slots, ids=ids, start_ts=start_ms)  # type: ignore[arg-type]
        for second, batch in enumerate(fleet):
            for record in batch:
                if isinstance(record, WorkerEvent):  # the processor ticks on its own
                    producer.produce(topic, codec.encode(record), key=record.worker_id.encode())
                    produced += 1
                producer.poll(0)
            if second % 10 == 0:
                rss.append(rss_mb(proc.pid))
                print(f"  {second:4d} s: {produced:,} events, RSS {rss[-1]:,.0f} MB",
                      file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(max(0.0, started + second + 1 - time.monotonic()))
        producer.flush()
        time.sleep(15)  # the last stats lines
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        proc = start(settings, workdir, port)
        commands.assign(ends)  # past the run's commands: only what follows counts
        probe = failure("after-restart", int(time.time() * 1000))
        producer.produce(topic, codec.encode(probe), key=probe.worker_id.encode())
        producer.flush()
        try:
            restore_s = wait_for_command(commands, codec, probe.task_id) - killed  # type: ignore[arg-type]
        except SystemExit as exc:  # reported in the table, not the end of the bench
            print(exc, file=sys.stderr)
            restore_s = float("nan")
    finally:
        proc.kill()
        proc.wait()
        commands.close()
        delete_topics(settings.kafka)
    return summarize(ids, Path(workdir) / "processor.log", produced, seconds, rss, restore_s)


def summarize(ids: str, log: Path, produced: int, seconds: int, rss: list[float],
              restore_s: float) -> dict:  # fmt: skip
    decide, pauses, sizes = [], [], []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("stage") == "decide":
            decide.append(entry)
        if "pause_ms" in entry:
            pauses.append(entry["pause_ms"])
            sizes.append(entry["bytes"])
    loaded = [d for d in decide if d["records_per_s"] > 1_000]
    minute = max(1, len(loaded) // max(1, seconds // 60))  # stats lines per minute
    first, last = loaded[:minute], loaded[-minute:]
    pauses.sort()
    return {
        "ids": ids,
        "events/s produced": produced / seconds,
        "decided/s (median 10 s)": statistics.median(d["records_per_s"] for d in loaded),
        "age p99 first min ms": statistics.median(d["age_p99_ms"] for d in first),
        "age p99 last min ms": statistics.median(d["age_p99_ms"] for d in last),
        "peak RSS MB": max(rss),
        "snapshots": len(pauses),
        "snapshot MB (last)": sizes[-1] / 1e6 if sizes else 0.0,
        "pause p50 ms": pauses[len(pauses) // 2] if pauses else 0.0,
        "pause p99 ms": pauses[len(pauses) * 99 // 100] if pauses else 0.0,
        "restart to command s": restore_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--baseline-minutes", type=float, default=3)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for ids, minutes in (("uuid4", args.baseline_minutes), ("sequenced", args.minutes)):
        if minutes <= 0:
            continue
        print(f"{ids} ids, {minutes:g} min ...", file=sys.stderr, flush=True)
        rows.append(run(ids, args.workers, int(minutes * 60), args.slots))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.workers:,} workers, {args.slots} task slots each\n")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for row in rows:
        cells = [f"{v:,.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
