"""The decider's core at fleet scale: memory, snapshots and restore with 10,000 workers.

    .venv/bin/python bench/bench_scale.py [--workers 10000] [--seconds 600] [--slots 2]

Streams a steady fleet's history (processors/simulator/steady.py) through `FleetCore` as
fast as it goes (event time, not wall time). With the defaults that is about 20,000
events per second of event time for 10 minutes, over 50 hardware classes x 20 task types
(1,000 class x type pairs).

Each id style runs in a fresh process, on the same code and the same history:
- `uuid4`: what the SDK sent before sequenced ids (and what any producer sending random
  ids still gets): each worker keeps its newest 10,000 ids as strings. The baseline.
- `sequenced`: the SDK's ids now, `<producer>.<n>`: a range per producer.

Every `--snapshot-every` seconds of event time the core is snapshotted as the decider does
it (pickle, then the store: zlib level 1, base64 chunks into a table): the table gives
the snapshot's size and the pause; then again as the decider does it where it can fork
(it stops for the fork and for saving what the child packed). The changelog bytes per
minute follow from the decider's rhythm (`--decider-every`, 10 s by default). At the
end: the peak RSS and a restore (decompress and unpickle) of the last snapshot.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from faultstream.processors.core import FleetCore
from faultstream.processors.simulator.steady import steady_fleet
from faultstream.processors.stream.snapshots import ForkedSnapshot, SnapshotStore


class CountingTable(dict):
    """A snapshot table that counts the bytes written to it (the changelog's share)."""

    written = 0

    def __setitem__(self, key: str, value: object) -> None:
        self.written += len(key) + len(json.dumps(value))
        super().__setitem__(key, value)


def one_run(args: argparse.Namespace) -> dict:
    core = FleetCore()
    table = CountingTable()
    store = SnapshotStore(table)
    events = 0
    busy = 0.0
    pauses: list[float] = []
    forked_pauses: list[float] = []
    sizes: list[int] = []
    data = b""
    history = steady_fleet(args.workers, args.seconds, slots=args.slots, ids=args.ids)
    for second, batch in enumerate(history):
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
            # As the decider takes it where it can fork: it stops for the fork, and later
            # for saving what the child packed (the child's work overlaps deciding).
            with tempfile.TemporaryDirectory() as directory:
                started = time.perf_counter()
                forked = ForkedSnapshot(core, events, directory)
                fork_s = time.perf_counter() - started
                while (written_by_child := forked.result()) is None:
                    time.sleep(0.005)
                started = time.perf_counter()
                store.save_packed(events, written_by_child[1])
                forked_pauses.append(fork_s + time.perf_counter() - started)
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
        "forked_p50_ms": statistics.median(forked_pauses) * 1000,
        "forked_max_ms": max(forked_pauses) * 1000,
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
          "| pause p50 ms | pause max ms | forked pause p50 ms | forked pause max ms "
          "| restore s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['ids']} | {row['core_ev_s']:,.0f} | {row['peak_rss_mb']:,.0f} "
              f"| {row['snapshot_mb']:.1f} | {row['written_mb']:.1f} "
              f"| {row['written_mb'] * per_minute:.0f} | {row['pause_p50_ms']:.0f} "
              f"| {row['pause_max_ms']:.0f} | {row['forked_p50_ms']:.0f} "
              f"| {row['forked_max_ms']:.0f} | {row['restore_s']:.2f} |")  # fmt: skip
    base, new = rows
    print(f"\nsequenced / uuid4: peak RSS {new['peak_rss_mb'] / base['peak_rss_mb']:.2f}, "
          f"snapshot {new['snapshot_mb'] / base['snapshot_mb']:.3f}, "
          f"pause {new['pause_p50_ms'] / base['pause_p50_ms']:.2f}, "
          f"core speed {new['core_ev_s'] / base['core_ev_s']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
