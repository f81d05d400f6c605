"""A synthetic fleet history for the benchmarks: realistic mix, fixed seed, pre-decoded.

Mostly heartbeats, task starts, checkpoints and successes; a few percent failures,
concentrated on some flaky workers so that circuits open, half-open and close; a TICK
every `tick_every` events, as the processor's clock would write.
"""

from __future__ import annotations

import random

from faultstream.events.models import EventKind, InputRecord, Tick, WorkerEvent

CLASSES = ["cuda", "cuda", "cuda", "rocm", "mps", "webgpu", "cpu", "cpu"]
TASK_TYPES = ["bert-inference", "resnet-train", "llama-decode", "webgpu-matmul", "tokenize"]
FAILURES = ["WORKER_CRASH", "HARDWARE_ERROR", "RESOURCE_EXHAUSTION", "TIMEOUT", "SOFTWARE_ERROR"]


def fleet_history(
    workers: int = 1_000,
    events: int = 200_000,
    failure_rate: float = 0.03,
    flaky_fraction: float = 0.05,
    tick_every: int = 1_000,
    seed: int = 7,
) -> list[InputRecord]:
    rng = random.Random(seed)
    ids = [f"worker-{i:04d}" for i in range(workers)]
    hardware = {w: CLASSES[i % len(CLASSES)] for i, w in enumerate(ids)}
    flaky = set(rng.sample(ids, int(workers * flaky_fraction)))
    running: dict[str, tuple[str, str, int]] = {}  # worker -> (task, type, attempt)
    records: list[InputRecord] = []
    ts = 1_764_355_200_000
    per_event_ms = max(1, 10_000 // workers)  # every worker reports about every 10 s
    task_no = 0
    order: list[str] = []
    for n in range(events):
        ts += per_event_ms
        if n % tick_every == tick_every - 1:
            records.append(Tick.model_construct(event_id=f"tick-{n}", kind="TICK", ts=ts))
            continue
        if not order:  # each worker reports once per round, in a fresh order
            order = rng.sample(ids, len(ids))
        worker = order.pop()
        common = {"event_id": f"ev-{n}", "ts": ts, "worker_id": worker}
        common["hardware_class"] = hardware[worker]
        task = running.get(worker)
        if task is None:
            task_no += 1
            task = (f"task-{task_no}", rng.choice(TASK_TYPES), 0)
            running[worker] = task
            records.append(_event("TASK_STARTED", common, task))
            continue
        roll = rng.random()
        rate = failure_rate * (8 if worker in flaky else 0.6)
        if roll < rate:
            del running[worker]
            failure = rng.choice(FAILURES)
            record = _event("FAILURE", common, task, failure_type=failure)
            record.attributes.update({"batch_size": "32", "precision": "fp32"})
            records.append(record)
        elif roll < 0.25:
            del running[worker]
            records.append(_event("SUCCESS", common, task))
        elif roll < 0.35:
            records.append(_event("CHECKPOINT", common, task, checkpoint_seq=n))
        else:
            records.append(WorkerEvent.model_construct(kind=EventKind.HEARTBEAT, **common))
    return records


def _event(kind: str, common: dict, task: tuple[str, str, int], **extra: object) -> WorkerEvent:
    task_id, task_type, attempt = task
    fields = {"task_id": task_id, "attempt": attempt, "attributes": {}, **extra}
    if kind != "CHECKPOINT":
        fields["task_type"] = task_type
    return WorkerEvent(kind=kind, **common, **fields)
