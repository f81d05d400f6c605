"""Properties of the core over random histories (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultstream.events.config import CoreSettings
from faultstream.events.models import (
    CircuitStateChanged,
    InputRecord,
    Operator,
    Tick,
    WorkerEvent,
    derived_to_json,
)
from faultstream.processors.core import FleetCore

# Failures twice as likely as the other kinds.
KINDS = ["HEARTBEAT", "TASK_STARTED", "CHECKPOINT", "SUCCESS", "FAILURE", "FAILURE", "TICK"]
KINDS.append("OPERATOR")
WORKERS = ["w1", "w2", "w3", "w4", "w5"]
CLASSES = ["cuda", "cpu"]
FAILURE_TYPES = ["WORKER_CRASH", "HARDWARE_ERROR", "TIMEOUT", "RESOURCE_EXHAUSTION", None]
# Small thresholds and timeouts so random histories reach every state.
FAST = CoreSettings().merged(
    {
        "circuits": {
            "worker": {"failure_threshold": 2, "recovery_timeout_s": 5, "guard_min_workers": 3},
            "hardware_class": {"failure_threshold": 2, "recovery_timeout_s": 7},
            "task_type": {"failure_threshold": 3, "recovery_timeout_s": 11},
        },
        "recovery": {"heartbeat_timeout_s": 4},
    }
)

step = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from(WORKERS),
    st.integers(-2_000, 6_000),  # ts step; negative: an event arriving late
    st.sampled_from(FAILURE_TYPES),
    st.integers(0, 4),  # attempt
    st.sampled_from(CLASSES),
)


def build(steps: list[tuple]) -> list[InputRecord]:
    records: list[InputRecord] = []
    ts = 1_000
    for n, (kind, worker, delta, failure_type, attempt, hardware_class) in enumerate(steps):
        ts = max(0, ts + delta)
        event_id = f"e{n}"
        if kind == "TICK":
            records.append(Tick(event_id=event_id, ts=ts))
        elif kind == "OPERATOR":
            action = "RESET" if attempt % 2 else "FORCE_OPEN"
            records.append(
                Operator(
                    event_id=event_id,
                    ts=ts,
                    action=action,
                    circuit_kind="worker",
                    circuit_id=worker,
                    actor="prop",
                )
            )
        else:
            fields = {"task_id": f"t-{worker}-{attempt}"} if kind != "HEARTBEAT" else {}
            if kind in ("TASK_STARTED", "SUCCESS", "FAILURE"):
                fields["task_type"] = "bert"
            if kind == "FAILURE":
                fields["failure_type"] = failure_type
                fields["message"] = "CUDA out of memory" if failure_type is None else None
            if kind == "CHECKPOINT":
                fields["checkpoint_seq"] = n
            records.append(
                WorkerEvent(
                    event_id=event_id,
                    kind=kind,
                    ts=ts,
                    worker_id=worker,
                    hardware_class=hardware_class if worker == "w5" else "cuda",
                    attempt=attempt,
                    **fields,
                )
            )
    return records


def replay_json(records: list[InputRecord]) -> list[str]:
    core = FleetCore(FAST)
    return [derived_to_json(out) for record in records for out in core.process(record)]


histories = st.lists(step, min_size=1, max_size=120).map(build)
checks = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@checks
@given(histories)
def test_output_clock_never_goes_back(records: list[InputRecord]) -> None:
    core = FleetCore(FAST)
    last = 0
    for record in records:
        before = core.now
        for out in core.process(record):
            assert out.ts >= last
            last = out.ts
        assert core.now >= before


@checks
@given(histories)
def test_backoff_never_exceeds_its_cap_and_never_shrinks_while_tripping(
    records: list[InputRecord],
) -> None:
    core = FleetCore(FAST)
    tripping: dict[tuple[str, str], float] = {}
    for record in records:
        for out in core.process(record):
            if not isinstance(out, CircuitStateChanged):
                continue
            key = (out.circuit_kind, out.circuit_id)
            cap = FAST.circuits.for_kind(out.circuit_kind).max_reset_timeout_s
            assert out.reset_timeout_s <= cap
            if out.to_state == "OPEN":
                assert out.reset_timeout_s >= tripping.get(key, 0.0)
                tripping[key] = out.reset_timeout_s
            elif out.to_state == "CLOSED":
                tripping.pop(key, None)


@checks
@given(histories)
def test_history_replayed_twice_gives_the_same_bytes(records: list[InputRecord]) -> None:
    assert replay_json(records) == replay_json(records)


@checks
@given(histories, st.data())
def test_repeats_of_earlier_events_change_nothing(
    records: list[InputRecord], data: st.DataObject
) -> None:
    with_repeats = list(records)
    for _ in range(data.draw(st.integers(1, 10))):
        original = data.draw(st.integers(0, len(records) - 1))
        position = data.draw(st.integers(original + 1, len(records)))
        # Insert among the originals: find where original `position` sits now.
        target = with_repeats.index(records[position]) if position < len(records) else None
        at = len(with_repeats) if target is None else target
        with_repeats.insert(at, records[original])
    assert replay_json(with_repeats) == replay_json(records)


@checks
@given(histories)
def test_each_failure_yields_one_command_it_caused(records: list[InputRecord]) -> None:
    core = FleetCore(FAST)
    for record in records:
        outputs = core.process(record)
        if getattr(record, "kind", None) == "FAILURE":
            own = [o for o in outputs if getattr(o, "command_id", "").startswith("cmd-")]
            assert len(own) == 1 and own[0].caused_by == record.event_id
