"""The decider's core at fleet scale: memory, snapshots and restore with 10,000 workers.

    .venv/bin/python bench/bench_scale.py [--workers 10000] [--seconds 600] [--slots 2]

Streams a synthetic fleet's history through `FleetCore` as fast as it goes (event time,
not wall time): every worker heartbeats every 10 s and runs tasks of 5-60 s back to back
in `--slots` slots, checkpointing each second; 2% of tasks fail; a TICK every second.
With the defaults that is about 20,000 events per second of event time for 10 minutes,
over 50 hardware classes x 20 task types (1,000 class x type pairs).

Each id style runs in a fresh process, on the same code and the same history:
- `uuid4`: what the SDK sent before sequenced ids (and what any producer sending random
  ids still gets): each worker keeps its newest 10,000 ids as strings. The baseline.
- `sequenced`: the SDK's ids now, `<producer>.<n>`: a range per producer.

Every `--snapshot-every` seconds of event time the core is snapshotted as the decider does
it (pickle, then the store: zlib level 1, base64 chunks into a table): the table gives
the snapshot's size and the pause, and the changelog bytes per minute follow from the
decider's rhythm (`--decider-every`, 10 s by default). At the end: the peak RSS and a
restore (decompress and unpickle) of the last snapshot.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from faultstream.events.emitter import new_event_id
from faultstream.events.models import EventKind, Tick, WorkerEvent
from faultstream.processors.core import FleetCore
from faultstream.processors.stream.snapshots import SnapshotStore

CLASSES = 50
TASK_TYPES = 20
START_TS = 1_764_355_200_000


class CountingTable(dict):
    """A snapshot table that counts the bytes written to it (the changelog's share)."""

    written = 0

    def __setitem__(self, key: str, value: object) -> None:
        self.written += len(key) + len(json.dumps(value))
        super().__setitem__(key, value)


def fleet(workers: int, seconds: int, slots: int, ids: str, seed: int = 7):
    """The history, one second of event time at a time."""
    rng = random.Random(seed)
    names = [f"w{n:05d}" for n in range(workers)]
    hardware = {w: f"hw-{n % CLASSES}" for n, w in enumerate(names)}
    producers = {w: f"{rng.getrandbits(64):016x}" for w in names}
    numbers = dict.fromkeys(names, 0)
    # Per (worker, slot): (task_id, task_type, ends at second, checkpoints so far)
    tasks: dict[tuple[str, int], tuple[str, str, int, int]] = {}
    task_no = 0

    def event_id(worker: str) -> str:
        if ids == "uuid4":
            return new_event_id()
        numbers[worker] += 1
        return f"{producers[worker]}.{numbers[worker]}"

    def event(kind: EventKind, worker: str, ts: int, **fields: object) -> WorkerEvent:
        return WorkerEvent.model_construct(
            event_id=event_id(worker), kind=kind, ts=ts, worker_id=worker,
            hardware_class=hardware[worker], received_at=ts, attempt=0, attributes={},
            **fields,
        )  # fmt: skip

    for second in range(seconds):
        batch = []
        base = START_TS + second * 1_000
        for n, worker in enumerate(names):
            ts = base + n * 1_000 // workers
            if (second + n) % 10 == 0:
                batch.append(event(EventKind.HEARTBEAT, worker, ts))
            for slot in range(slots):
                task = tasks.get((worker, slot))
                if task is None:
                    task_no += 1
                    task_type = f"tt-{rng.randrange(TASK_TYPES)}"
                    task = (f"task-{task_no}", task_type, second + rng.randint(5, 60), 0)
                    tasks[(worker, slot)] = task
                    batch.append(event(EventKind.TASK_STARTED, worker, ts, task_id=task[0],
                                       task_type=task_type))  # fmt: skip
                elif second >= task[2]:
                    del tasks[(worker, slot)]
                    if rng.random() < 0.02:
                        batch.append(event(EventKind.FAILURE, worker, ts, task_id=task[0],
                                           task_type=task[1], failure_type="TIMEOUT"))  # fmt: skip
                    else:
                        batch.append(event(EventKind.SUCCESS, worker, ts, task_id=task[0],
                                           task_type=task[1]))  # fmt: skip
                else:
                    tasks[(worker, slot)] = (*task[:3], task[3] + 1)
                    batch.append(event(EventKind.CHECKPOINT, worker, ts, task_id=task[0],
                                       task_type=task[1], checkpoint_seq=task[3] + 1))  # fmt: skip
        batch.append(Tick.model_construct(event_id=f"tick-{second}", kind="TICK", ts=base + 999))
        yield batch


def one_run(args: argparse.Namespace) -> dict:
    core = FleetCore()
    table = CountingTable()
    store = SnapshotStore(table)
    events = 0
    busy = 0.0
    pauses: list[float] = []
    sizes: list[int] = []
    data = b""
    for second, batch in enumerate(fleet(args.workers, args.seconds, args.slots, args.ids)):
        started = time.perf_counter()
        for record in batch:
            core.process(record)
        busy += time.perf_counter() - started
        events += len(batch)
        if (second + 1) % args.snapshot_every == 0:
            written = table.written
            started = time.perf_counter()
            data = core.snapshot()
            store.save(events, data)
            pauses.append(time.perf_counter() - started)
            sizes.append(table.written - written)
    started = time.perf_counter()
    loaded = store.load()
    assert loaded is not None and loaded.data == data
    FleetCore.restore(loaded.data)
    restore_s = time.perf_counter() - started
    return {
        "ids": args.ids,
        "events": events,
        "core_ev_s": events / busy,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "snapshot_mb": len(data) / 1e6,
        "written_mb": sizes[-1] / 1e6,
        "pause_p50_ms": statistics.median(pauses) * 1000,
        "pause_max_ms": max(pauses) * 1000,
        "restore_s": restore_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--snapshot-every", type=int, default=60, help="s of event time")
    parser.add_argument("--decider-every", type=float, default=10.0, help="snapshot_every_s")
    parser.add_argument("--ids", choices=("uuid4", "sequenced"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ids:  # one run, in this fresh process
        print(json.dumps(one_run(args)))
        return
    rows = []
    for ids in ("uuid4", "sequenced"):
        command = [sys.executable, str(Path(__file__).resolve()), "--ids", ids]
        for name in ("workers", "seconds", "slots", "snapshot_every"):
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        print(f"running {ids} ids ...", file=sys.stderr, flush=True)
        rows.append(json.loads(subprocess.run(command, capture_output=True, check=True,
                                              text=True).stdout))  # fmt: skip
    per_minute = 60 / args.decider_every
    print(f"\n{args.workers:,} workers, {args.seconds} s of event time, "
          f"{rows[0]['events'] / args.seconds:,.0f} events/s of event time\n")  # fmt: skip
    print("| ids | core ev/s | peak RSS MB | snapshot MB | written MB | changelog MB/min "
          "| pause p50 ms | pause max ms | restore s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['ids']} | {row['core_ev_s']:,.0f} | {row['peak_rss_mb']:,.0f} "
              f"| {row['snapshot_mb']:.1f} | {row['written_mb']:.1f} "
              f"| {row['written_mb'] * per_minute:.0f} | {row['pause_p50_ms']:.0f} "
              f"| {row['pause_max_ms']:.0f} | {row['restore_s']:.2f} |")  # fmt: skip
    base, new = rows
    print(f"\nsequenced / uuid4: peak RSS {new['peak_rss_mb'] / base['peak_rss_mb']:.2f}, "
          f"snapshot {new['snapshot_mb'] / base['snapshot_mb']:.3f}, "
          f"pause {new['pause_p50_ms'] / base['pause_p50_ms']:.2f}, "
          f"core speed {new['core_ev_s'] / base['core_ev_s']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
