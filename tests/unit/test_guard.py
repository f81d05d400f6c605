"""CircuitView and the guard without a broker: a view fed through apply(), and the embedded
pipeline, whose core learns from the guard's reports and whose view then refuses."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faultstream.events.circuit_view import Circuit, CircuitOpenError, CircuitView, decode_circuit
from faultstream.events.codec import Codec
from faultstream.events.config import CircuitsSettings
from faultstream.events.emitter import Emitter
from faultstream.events.guard import Guard
from faultstream.events.models import (
    CircuitKind,
    CircuitState,
    CircuitStateChanged,
    EventKind,
    FailureType,
    Operator,
    OperatorAction,
    Tick,
    WorkerEvent,
)
from faultstream.projections.embedded import EmbeddedPipeline, EmbeddedTransport

T0 = 1_764_355_200_000


def record(
    kind: str,
    cid: str,
    to_state: str,
    *,
    ts: int = T0,
    event_id: str | None = None,
    reset_timeout_s: float = 60.0,
    health: float = 18.0,
) -> CircuitStateChanged:
    return CircuitStateChanged(
        event_id=event_id or f"{kind}:{cid}:{to_state}:{ts}",
        ts=ts,
        circuit_kind=kind,
        circuit_id=cid,
        from_state="CLOSED",
        to_state=to_state,
        reason="test",
        consecutive_failures=0,
        trips=1,
        reset_timeout_s=reset_timeout_s,
        health=health,
        caused_by="cause",
    )


class RecordingTransport:
    def __init__(self) -> None:
        self.events: list[WorkerEvent] = []

    def send(self, event: WorkerEvent) -> None:
        self.events.append(event)

    def flush(self, timeout: float) -> int:
        return 0

    def close(self, timeout: float) -> None:
        return None


@pytest.fixture
def view() -> CircuitView:
    return CircuitView()


@pytest.fixture
def emitter() -> Emitter:
    return Emitter(worker_id="w1", hardware_class="cuda", transport=RecordingTransport())


def kinds_sent(emitter: Emitter) -> list[EventKind]:
    return [e.kind for e in emitter.transport.events]  # type: ignore[attr-defined]


# --- the table --------------------------------------------------------------------------


def test_an_unknown_circuit_is_closed_healthy_and_admits(view: CircuitView) -> None:
    assert view.state("worker", "w1") is CircuitState.CLOSED
    assert view.health("worker", "w1") == 100.0
    assert not view.is_open("worker", "w1")
    assert view.get("worker", "w1") is None
    assert view.admits("w1", "cuda", "bert")
    assert len(view) == 0 and list(view) == []


def test_the_newest_record_wins_and_a_repeat_changes_nothing(view: CircuitView) -> None:
    opened = record("worker", "w1", "OPEN", ts=T0)
    assert view.apply(opened)
    assert view.is_open("worker", "w1") and view.state("worker", "w1") is CircuitState.OPEN
    assert not view.apply(opened)  # delivered again: same event_id
    assert view.apply(record("worker", "w1", "CLOSED", ts=T0 + 5, health=100.0))
    assert view.state("worker", "w1") is CircuitState.CLOSED
    assert view.health("worker", "w1") == 100.0
    assert view.admits("w1", "cuda", "bert")
    assert view.newest_ts == T0 + 5


def test_kinds_are_separate_tables_and_bad_kinds_are_refused(view: CircuitView) -> None:
    view.apply(record("task_type", "cuda", "OPEN"))
    assert view.state("hardware_class", "cuda") is CircuitState.CLOSED
    assert view.state(CircuitKind.TASK_TYPE, "cuda") is CircuitState.OPEN
    with pytest.raises(ValueError, match="circuit kind: 'gpu'"):
        view.state("gpu", "cuda")


def test_iteration_and_select_go_by_kind_then_id(view: CircuitView) -> None:
    view.apply_many(
        [
            record("task_type", "t1", "OPEN"),
            record("worker", "w2", "HALF_OPEN"),
            record("worker", "w1", "CLOSED"),
            record("hardware_class", "cuda", "FORCED_OPEN"),
        ]
    )
    assert [c.key for c in view] == [
        "worker:w1",
        "worker:w2",
        "hardware_class:cuda",
        "task_type:t1",
    ]
    assert [c.key for c in view.select(kind="worker")] == ["worker:w1", "worker:w2"]
    assert [c.key for c in view.select(state="OPEN")] == ["task_type:t1"]
    assert [c.key for c in view.select(state="CLOSED")] == ["worker:w1"]


def test_apply_many_ignores_other_records(view: CircuitView) -> None:
    tick = Tick(event_id="t", ts=T0)
    assert view.apply_many([tick, record("worker", "w1", "OPEN")]) == 1


def test_due_at_is_ts_plus_the_reset_timeout_rounded_up_and_never_half_opens(
    view: CircuitView,
) -> None:
    view.apply(record("worker", "w1", "OPEN", ts=T0, reset_timeout_s=1.2))
    circuit = view.get("worker", "w1")
    assert circuit is not None and circuit.due_at == T0 + 1200
    assert circuit.is_due(T0 + 1200) and not circuit.is_due(T0 + 1199)
    # Long past due, the view still says OPEN: only the processor half-opens.
    assert view.state("worker", "w1") is CircuitState.OPEN
    view.apply(record("worker", "w2", "FORCED_OPEN"))
    assert view.due_at("worker", "w2") is None


def test_callbacks_get_before_and_after_and_can_unsubscribe(view: CircuitView) -> None:
    seen: list[tuple[Circuit | None, Circuit]] = []
    stop = view.on_change(lambda before, after: seen.append((before, after)))
    view.apply(record("worker", "w1", "OPEN", ts=T0))
    view.apply(record("worker", "w1", "HALF_OPEN", ts=T0 + 1))
    assert seen[0][0] is None and seen[0][1].state is CircuitState.OPEN
    assert seen[1][0] is not None and seen[1][0].state is CircuitState.OPEN
    assert seen[1][1].state is CircuitState.HALF_OPEN
    stop()
    view.apply(record("worker", "w1", "CLOSED", ts=T0 + 2))
    assert len(seen) == 2


def test_a_failing_callback_does_not_stop_the_view(view: CircuitView) -> None:
    def broken(before: Circuit | None, after: Circuit) -> None:
        raise RuntimeError("listener bug")

    view.on_change(broken)
    assert view.apply(record("worker", "w1", "OPEN"))
    assert view.is_open("worker", "w1")


def test_a_view_without_kafka_reports_its_newest_record_age(view: CircuitView) -> None:
    assert view.staleness().newest_age_s is None
    view.apply(record("worker", "w1", "OPEN", ts=T0))
    staleness = view.staleness()
    assert staleness.caught_up and staleness.behind == 0 and staleness.since_poll_s is None
    assert staleness.newest_age_s is not None and staleness.newest_age_s > 0


def test_the_hand_decoder_reads_what_the_codec_writes() -> None:
    codec = Codec()
    original = record("hardware_class", "cuda-é", "HALF_OPEN", ts=T0 + 123_456_789)
    assert decode_circuit(codec.encode(original)) == Circuit.of_record(original)
    with pytest.raises(ValueError):
        decode_circuit(codec.encode(original) + b"x")


_HEADER = bytes([0, 0, 0, 0, 3])


@given(st.binary(max_size=200))
def test_the_hand_decoder_refuses_garbage_only_with_the_errors_the_follower_catches(
    body: bytes,
) -> None:
    try:
        circuit = decode_circuit(_HEADER + body)
    except (ValueError, IndexError, struct.error):
        return  # UnicodeDecodeError is a ValueError
    assert isinstance(circuit, Circuit)


# --- refusing and probes ----------------------------------------------------------------


def test_an_open_circuit_refuses_with_its_kind_id_state_and_due_moment(view: CircuitView) -> None:
    view.apply(record("hardware_class", "cuda", "OPEN", ts=T0, reset_timeout_s=120))
    assert not view.admits("w1", "cuda", "bert")
    with pytest.raises(CircuitOpenError) as caught:
        view.acquire("w1", "cuda", "bert")
    error = caught.value
    assert (error.kind, error.circuit_id, error.state) == ("hardware_class", "cuda", "OPEN")
    assert error.due_at == T0 + 120_000
    assert error.retry_after_s(now_ms=T0 + 20_000) == 100.0
    assert "hardware_class circuit cuda is OPEN: due to half-open at" in str(error)


def test_the_worker_circuit_is_named_first(view: CircuitView) -> None:
    view.apply(record("task_type", "bert", "OPEN"))
    view.apply(record("worker", "w1", "FORCED_OPEN"))
    refused = view.refusal("w1", "cuda", "bert")
    assert refused is not None and refused.kind == "worker" and refused.due_at is None
    assert "until an operator resets it" in str(refused)


def test_half_open_admits_at_most_half_open_max_calls_probes_at_once() -> None:
    settings = CircuitsSettings(
        task_type={"success_threshold": 2, "half_open_max_calls": 2}  # type: ignore[arg-type]
    )
    view = CircuitView(settings)
    view.apply(record("task_type", "bert", "HALF_OPEN"))
    first, second = view.acquire("w1", "cuda", "bert"), view.acquire("w2", "cuda", "bert")
    assert first.probes == (("task_type", "bert"),)
    assert view.probes_running("task_type", "bert") == 2
    assert not view.admits("w3", "cuda", "bert")
    with pytest.raises(CircuitOpenError, match="all 2 half-open probes are running") as caught:
        view.acquire("w3", "cuda", "bert")
    assert caught.value.state is CircuitState.HALF_OPEN
    first.release()
    first.release()  # twice: gives back once
    assert view.probes_running("task_type", "bert") == 1
    with view.acquire("w3", "cuda", "bert"):
        assert view.probes_running("task_type", "bert") == 2
    second.release()
    assert view.probes_running("task_type", "bert") == 0


def test_a_new_half_open_spell_starts_its_probe_count_again(view: CircuitView) -> None:
    view.apply(record("worker", "w1", "HALF_OPEN", ts=T0))
    held = [view.acquire("w1", "cuda", "bert") for _ in range(3)]
    assert not view.admits("w1", "cuda", "bert")
    view.apply(record("worker", "w1", "OPEN", ts=T0 + 1))
    view.apply(record("worker", "w1", "HALF_OPEN", ts=T0 + 2))
    assert view.admits("w1", "cuda", "bert")
    for permit in held:
        permit.release()  # probes of the old spell: no effect on the new one
    assert view.probes_running("worker", "w1") == 0


def test_a_refused_call_takes_no_probe_elsewhere(view: CircuitView) -> None:
    view.apply(record("worker", "w1", "HALF_OPEN"))
    view.apply(record("task_type", "bert", "OPEN"))
    with pytest.raises(CircuitOpenError):
        view.acquire("w1", "cuda", "bert")
    assert view.probes_running("worker", "w1") == 0


# --- the guard --------------------------------------------------------------------------


def test_a_guarded_function_reports_success_and_returns(
    view: CircuitView, emitter: Emitter
) -> None:
    guard = Guard(view, emitter)

    @guard(task_type="bert")
    def run(x: int) -> int:
        return x * 2

    assert run(21) == 42
    assert kinds_sent(emitter) == [EventKind.TASK_STARTED, EventKind.SUCCESS]
    sent = emitter.transport.events  # type: ignore[attr-defined]
    assert {e.task_type for e in sent} == {"bert"} and sent[0].task_id == sent[1].task_id
    assert run.__name__ == "run"


def test_a_guarded_function_reports_a_classified_failure_and_reraises(
    view: CircuitView, emitter: Emitter
) -> None:
    guard = Guard(view, emitter)

    @guard(task_type="bert", task_id="task-42")
    def run() -> None:
        raise MemoryError("CUDA out of memory")

    with pytest.raises(MemoryError):
        run()
    failure = emitter.transport.events[-1]  # type: ignore[attr-defined]
    assert failure.kind is EventKind.FAILURE and failure.task_id == "task-42"
    assert failure.failure_type is FailureType.RESOURCE_EXHAUSTION


def test_a_refused_call_does_not_run_and_reports_nothing(
    view: CircuitView, emitter: Emitter
) -> None:
    view.apply(record("worker", "w1", "OPEN"))
    ran = []
    guarded = Guard(view, emitter)(task_type="bert")(lambda: ran.append(1))
    with pytest.raises(CircuitOpenError):
        guarded()
    assert ran == [] and kinds_sent(emitter) == []


def test_the_context_manager_yields_the_running_task_and_releases_probes(
    view: CircuitView, emitter: Emitter
) -> None:
    view.apply(record("worker", "w1", "HALF_OPEN"))
    guarded = Guard(view, emitter)(task_type="bert", task_id="t-1")
    with guarded as task:
        assert task is not None and task.task_id == "t-1"
        task.checkpoint(1)
        assert view.probes_running("worker", "w1") == 1
    assert view.probes_running("worker", "w1") == 0
    assert kinds_sent(emitter) == [EventKind.TASK_STARTED, EventKind.CHECKPOINT, EventKind.SUCCESS]
    with pytest.raises(ValueError, match="boom"), guarded:
        raise ValueError("boom")
    assert kinds_sent(emitter)[-1] is EventKind.FAILURE
    assert view.probes_running("worker", "w1") == 0


def test_async_functions_and_async_with_are_guarded(view: CircuitView, emitter: Emitter) -> None:
    guard = Guard(view, emitter)

    @guard(task_type="bert")
    async def run() -> str:
        await asyncio.sleep(0)
        return "done"

    async def block() -> None:
        async with guard(task_type="bert"):
            await asyncio.sleep(0)

    assert asyncio.run(run()) == "done"
    asyncio.run(block())
    assert kinds_sent(emitter) == [EventKind.TASK_STARTED, EventKind.SUCCESS] * 2
    view.apply(record("task_type", "bert", "OPEN"))
    with pytest.raises(CircuitOpenError):
        asyncio.run(run())
    assert len(kinds_sent(emitter)) == 4


def test_one_guarded_block_entered_by_two_tasks_at_once_ends_each_their_own(
    view: CircuitView, emitter: Emitter
) -> None:
    view.apply(record("worker", "w1", "HALF_OPEN"))
    guarded = Guard(view, emitter)(task_type="bert")
    ids: dict[str, str] = {}

    async def first(inside: asyncio.Event, second_in: asyncio.Event) -> None:
        async with guarded as task:
            ids["first"] = task.task_id  # type: ignore[union-attr]
            inside.set()
            await second_in.wait()
            raise ValueError("first fails while second is still inside")

    async def second(inside: asyncio.Event, second_in: asyncio.Event, done: asyncio.Event) -> None:
        await inside.wait()
        async with guarded as task:
            ids["second"] = task.task_id  # type: ignore[union-attr]
            assert view.probes_running("worker", "w1") == 2
            second_in.set()
            await done.wait()

    async def both() -> None:
        inside, second_in, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(second(inside, second_in, done))
        with pytest.raises(ValueError):
            await first(inside, second_in)
        assert view.probes_running("worker", "w1") == 1
        done.set()
        await running

    asyncio.run(both())
    outcomes = {
        e.task_id: e.kind
        for e in emitter.transport.events  # type: ignore[attr-defined]
        if e.kind is not EventKind.TASK_STARTED
    }
    assert outcomes == {ids["first"]: EventKind.FAILURE, ids["second"]: EventKind.SUCCESS}
    assert view.probes_running("worker", "w1") == 0


def test_without_an_emitter_the_guard_only_checks(view: CircuitView) -> None:
    guarded = Guard(view)(worker_id="w9", hardware_class="cpu", task_type="lint")
    with guarded as task:
        assert task is None
    view.apply(record("worker", "w9", "OPEN"))
    with pytest.raises(CircuitOpenError):
        guarded.check()


def test_a_guard_refuses_another_workers_identity_for_the_emitters_reports(
    view: CircuitView, emitter: Emitter
) -> None:
    with pytest.raises(ValueError, match="worker_id: 'w2' is not the emitter's"):
        Guard(view, emitter)(task_type="bert", worker_id="w2")
    with pytest.raises(ValueError, match="required"):
        Guard(view)(task_type="bert")


# --- the embedded pipeline: reports reach the core, the view refuses --------------------


def test_on_the_embedded_pipeline_the_guard_opens_the_circuit_it_reports_to() -> None:
    pipeline = EmbeddedPipeline()
    view = pipeline.circuit_view()
    emitter = Emitter(worker_id="w1", hardware_class="cuda", transport=EmbeddedTransport(pipeline))
    guard = Guard(view, emitter)

    @guard(task_type="bert")
    def crash() -> None:
        raise RuntimeError("worker crash")  # WORKER_CRASH: counts on the worker circuit

    threshold = view.settings.worker.failure_threshold
    for _ in range(threshold):
        with pytest.raises(RuntimeError):
            crash()
    with pytest.raises(CircuitOpenError) as caught:
        crash()
    assert (caught.value.kind, caught.value.circuit_id) == ("worker", "w1")
    assert view.is_open("worker", "w1") and caught.value.due_at is not None
    # An operator's RESET, through the same core, closes it in the view.
    pipeline.ingest(
        Operator(
            event_id="op-1",
            ts=caught.value.due_at - 1,
            action=OperatorAction.RESET,
            circuit_kind=CircuitKind.WORKER,
            circuit_id="w1",
            actor="test",
        )
    )
    assert view.state("worker", "w1") is CircuitState.CLOSED
    assert view.admits("w1", "cuda", "bert")
