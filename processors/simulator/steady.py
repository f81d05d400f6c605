"""A steady fleet at scale, for benchmarks and the scale test: no incidents, just volume.

Every worker heartbeats every 10 s and runs tasks of 5-60 s back to back in `slots`
slots, checkpointing each second; 2% of tasks fail (TIMEOUT); a TICK closes each second.
Workers spread over 50 hardware classes and tasks over 20 task types (1,000 pairs). With
two slots a worker reports about twice a second: 10,000 workers make ~20,000 events/s.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Literal

from faultstream.events.emitter import new_event_id
from faultstream.events.models import EventKind, InputRecord, Tick, WorkerEvent

CLASSES = 50
TASK_TYPES = 20
FAILURE_SHARE = 0.02

IdStyle = Literal["sequenced", "uuid4"]


def steady_fleet(
    workers: int,
    seconds: int,
    *,
    slots: int = 2,
    ids: IdStyle = "sequenced",
    start_ts: int = 1_764_355_200_000,
    seed: int = 7,
) -> Iterator[list[InputRecord]]:
    """The history, one second at a time. `ids`: as the SDK makes them (`<producer>.<n>`,
    one producer per worker) or random uuid4 hex (what it sent before)."""
    rng = random.Random(seed)
    names = [f"w{n:05d}" for n in range(workers)]
    hardware = {w: f"hw-{n % CLASSES}" for n, w in enumerate(names)}
    producers = {w: f"{rng.getrandbits(64):016x}" for w in names}
    numbers = dict.fromkeys(names, 0)
    # (worker, slot) -> (task_id, task_type, the second it ends, checkpoints so far)
    tasks: dict[tuple[str, int], tuple[str, str, int, int]] = {}
    task_no = 0

    def event(kind: EventKind, worker: str, ts: int, **fields: object) -> WorkerEvent:
        if ids == "uuid4":
            event_id = new_event_id()
        else:
            numbers[worker] += 1
            event_id = f"{producers[worker]}.{numbers[worker]}"
        return WorkerEvent.model_construct(
            event_id=event_id, kind=kind, ts=ts, worker_id=worker,
            hardware_class=hardware[worker], attempt=0, attributes={}, **fields,
        )  # fmt: skip

    for second in range(seconds):
        batch: list[InputRecord] = []
        base = start_ts + second * 1_000
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
                    if rng.random() < FAILURE_SHARE:
                        batch.append(event(EventKind.FAILURE, worker, ts, task_id=task[0],
                                           task_type=task[1], failure_type="TIMEOUT"))  # fmt: skip
                    else:
                        batch.append(event(EventKind.SUCCESS, worker, ts, task_id=task[0],
                                           task_type=task[1]))  # fmt: skip
                else:
                    tasks[(worker, slot)] = (*task[:3], task[3] + 1)
                    batch.append(event(EventKind.CHECKPOINT, worker, ts, task_id=task[0],
                                       task_type=task[1], checkpoint_seq=task[3] + 1))  # fmt: skip
        batch.append(Tick.model_construct(event_id=f"tick-{base}", kind="TICK", ts=base + 999))
        yield batch
