"""Properties of the core over random histories (hypothesis).

The generated histories are shaped to reach the states worth checking: bursts of failures
on a few busy workers, waits long enough for circuits to half-open and for workers to be
lost, operators resetting and forcing open every kind of circuit, configuration changes,
and workers whose clocks are off. test_generated_histories_reach_the_interesting_states
measures how often each state is reached (the figures are in docs/TESTING.md), so a
change that starves the generator fails there rather than leaving the properties idle.

Runs are derandomized (the profile in tests/conftest.py); FAULTSTREAM_HYPOTHESIS_PROFILE=long
explores afresh with many more examples.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from faultstream.events.config import CoreSettings
from faultstream.events.exceptions import ConfigError
from faultstream.events.models import (
    Alert,
    CircuitFigures,
    CircuitKind,
    CircuitStateChanged,
    ConfigChanged,
    InputRecord,
    Operator,
    RecoveryCommand,
    Tick,
    WorkerEvent,
    derived_to_json,
)
from faultstream.processors.core import FleetCore

# Weights by repetition: failures most, then successes (probes close circuits), ticks.
KINDS = ["FAILURE"] * 4 + ["SUCCESS"] * 3 + ["HEARTBEAT"] * 2 + ["TICK"] * 2
KINDS += ["TASK_STARTED", "CHECKPOINT", "OPERATOR", "CONFIG_CHANGED", "RESET_TOO_SOON"]
WORKERS = ["w1", "w1", "w1", "w2", "w2", "w3", "w4", "w5"]  # a few busy workers
CLASSES = ["cuda", "cpu"]  # w5 may report either: it moves between classes
FAILURE_TYPES = ["WORKER_CRASH"] * 3 + [
    "HARDWARE_ERROR",
    "TIMEOUT",
    "RESOURCE_EXHAUSTION",
    "SOFTWARE_ERROR",
    None,  # classified from its message
]
OPERATOR_TARGETS = ["worker", "worker", "hardware_class", "task_type"]
# CONFIG_CHANGED payloads; the last is invalid and must be ignored.
CONFIG_CHANGES: list[dict[str, Any]] = [
    {"circuits": {"worker": {"recovery_timeout_s": 3}}},
    {
        "circuits": {
            "task_type": {"recovery_timeout_s": 6},
            "hardware_class": {"failure_threshold": 3},
        }
    },
    {"recovery": {"heartbeat_timeout_s": 8}},
    {"recovery": {"max_retries": 1}},
    {"circuits": {"worker": {"failure_threshold": 3, "recovery_timeout_s": 9}}},
    {"circuits": {"hardware_class": {"half_open_max_calls": 1}}},
]
# Small thresholds, timeouts and caps: several consecutive trips reach the cap.
FAST = CoreSettings().merged(
    {
        "circuits": {
            "worker": {
                "failure_threshold": 2,
                "recovery_timeout_s": 5,
                "max_reset_timeout_s": 12,
                "success_threshold": 2,
                "half_open_max_calls": 2,
                "guard_min_workers": 3,
            },
            "hardware_class": {
                "failure_threshold": 2,
                "recovery_timeout_s": 7,
                "max_reset_timeout_s": 12,
                "success_threshold": 2,
                "half_open_max_calls": 2,
            },
            "task_type": {
                "failure_threshold": 3,
                "recovery_timeout_s": 11,
                "max_reset_timeout_s": 14,
                "success_threshold": 2,
                "half_open_max_calls": 2,
            },
        },
        "recovery": {"heartbeat_timeout_s": 12},
    }
)

step = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from(WORKERS),
    st.one_of(  # ts step: mostly close together, sometimes a long wait, sometimes late
        st.integers(0, 1_500), st.integers(3_000, 16_000), st.integers(-2_000, 0)
    ),
    st.sampled_from(FAILURE_TYPES),
    st.integers(0, 4),  # attempt
    st.sampled_from(CLASSES),
    st.integers(1, 3),  # a FAILURE repeats this often: bursts reach the thresholds
    st.integers(0, len(CONFIG_CHANGES) * len(OPERATOR_TARGETS) - 1),  # which control record
    st.sampled_from([0, 0, 0, 250_000]),  # a worker's clock ahead of the broker's
)


def build(steps: list[tuple]) -> list[InputRecord]:
    records: list[InputRecord] = []
    ts = 1_000
    for n, (kind, worker, delta, failure_type, attempt, hardware_class, repeat, option,
            skew) in enumerate(steps):  # fmt: skip
        ts = max(0, ts + delta)
        event_id = f"e{n}"
        if kind == "TICK":
            records.append(Tick(event_id=event_id, ts=ts))
        elif kind == "OPERATOR":
            target = OPERATOR_TARGETS[option % len(OPERATOR_TARGETS)]
            circuit_id = {"worker": worker, "hardware_class": "cuda", "task_type": "bert"}
            records.append(
                Operator(
                    event_id=event_id,
                    ts=ts,
                    action="RESET" if attempt % 2 else "FORCE_OPEN",
                    circuit_kind=target,
                    circuit_id=circuit_id[target],
                    actor="prop",
                )
            )
        elif kind == "RESET_TOO_SOON":  # an operator resets a worker that fails again at once
            records.append(
                Operator(
                    event_id=event_id,
                    ts=ts,
                    action="RESET",
                    circuit_kind="worker",
                    circuit_id=worker,
                    actor="prop",
                )
            )
            for i in range(repeat + 1):
                records.append(
                    WorkerEvent(
                        event_id=f"{event_id}.{i}",
                        kind="FAILURE",
                        ts=ts,
                        worker_id=worker,
                        hardware_class="cuda",
                        task_id=f"t-{worker}",
                        task_type="bert",
                        failure_type="WORKER_CRASH",
                    )
                )
        elif kind == "CONFIG_CHANGED":
            config = CONFIG_CHANGES[option % len(CONFIG_CHANGES)]
            records.append(ConfigChanged(event_id=event_id, ts=ts, config=config, actor="prop"))
        else:
            fields: dict[str, Any] = {"task_id": f"t-{worker}-{attempt}"}
            if kind == "HEARTBEAT":
                fields = {}
            if kind in ("TASK_STARTED", "SUCCESS", "FAILURE"):
                fields["task_type"] = "bert"
            if kind == "FAILURE":
                fields["failure_type"] = failure_type
                fields["message"] = "CUDA out of memory" if failure_type is None else None
                fields["attributes"] = {"batch_size": "8"} if attempt == 0 else {}
            if kind == "CHECKPOINT":
                fields["checkpoint_seq"] = n
            if skew:
                fields["received_at"] = ts
            for i in range(repeat if kind == "FAILURE" else 1):
                records.append(
                    WorkerEvent(
                        event_id=event_id if i == 0 else f"{event_id}.{i}",
                        kind=kind,
                        ts=ts + skew,
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


histories = st.lists(step, min_size=20, max_size=150).map(build)
checks = settings(
    max_examples=max(150, settings.default.max_examples),  # the long profile asks more
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


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
        if isinstance(record, ConfigChanged):  # new settings may shorten the next wait
            tripping.clear()


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


# --- how often the generator reaches each state ------------------------------------------

CAPS = {kind: FAST.circuits.for_kind(kind).max_reset_timeout_s for kind in CircuitKind}
# state -> the least share of generated histories that must reach it
REACH = {
    "a transition": 0.9,
    "a half-open probe": 0.5,
    "a probe that closes": 0.2,
    "a probe that fails": 0.3,
    "two trips in a row": 0.3,
    "the backoff cap": 0.15,
    "the fleet guard": 0.1,
    "a lost worker": 0.5,
    "a task moved off a lost worker": 0.2,
    "an operator RESET of an open circuit": 0.1,
    "FORCED_OPEN": 0.3,
    "ESCALATION at max_retries": 0.3,
    "a DELAYED_RETRY for an open circuit": 0.15,
    "DIFFERENT_HARDWARE_CLASS": 0.15,
    "a worker moving class": 0.2,
    "a configuration change": 0.3,
    "a stale half-open moment passing": 0.1,
}


def reached(records: list[InputRecord]) -> set[str]:
    """The interesting states one history reaches."""
    core = FleetCore(FAST)
    found: set[str] = set()
    classes: dict[str, str] = {}
    dues: dict[tuple[str, str], float] = {}  # an OPEN circuit's due moment
    stale: dict[tuple[str, str], float] = {}  # one that a RESET or FORCE_OPEN cancelled
    for record in records:
        outputs = [o for o in core.process(record) if not isinstance(o, CircuitFigures | Alert)]
        for out in outputs:
            if isinstance(out, CircuitStateChanged):
                key = (out.circuit_kind, out.circuit_id)
                if out.to_state == "OPEN":
                    dues[key] = out.ts + out.reset_timeout_s * 1000
                elif out.from_state == "OPEN" and out.to_state != "HALF_OPEN":
                    stale[key] = dues.pop(key)
                else:
                    dues.pop(key, None)
        for key in [key for key, due in stale.items() if due <= core.now]:
            if dues.get(key, -math.inf) > core.now:  # the first input past it finds it OPEN
                found.add("a stale half-open moment passing")
            del stale[key]
        if any(worker.lost for worker in core._workers.values()):
            found.add("a lost worker")
        if isinstance(record, ConfigChanged):
            found.add("a configuration change")
        if isinstance(record, WorkerEvent):
            if classes.setdefault(record.worker_id, record.hardware_class) != record.hardware_class:
                found.add("a worker moving class")
            classes[record.worker_id] = record.hardware_class
        for out in outputs:
            if "fleet_guard" in out.reason:
                found.add("the fleet guard")
            if isinstance(out, CircuitStateChanged):
                found.add("a transition")
                move = (out.from_state, out.to_state)
                if out.to_state == "HALF_OPEN":
                    found.add("a half-open probe")
                if move == ("HALF_OPEN", "CLOSED"):
                    found.add("a probe that closes")
                if move == ("HALF_OPEN", "OPEN"):
                    found.add("a probe that fails")
                if out.to_state == "OPEN" and out.trips >= 2:
                    found.add("two trips in a row")
                if out.to_state == "OPEN" and out.reset_timeout_s == CAPS[out.circuit_kind]:
                    found.add("the backoff cap")
                if out.to_state == "FORCED_OPEN":
                    found.add("FORCED_OPEN")
                if out.from_state != "CLOSED" and "RESET" in out.reason:
                    found.add("an operator RESET of an open circuit")
            else:
                if out.command_id.startswith("mig-"):
                    found.add("a task moved off a lost worker")
                if "reached max_retries" in out.reason:
                    found.add("ESCALATION at max_retries")
                if out.strategy == "DELAYED_RETRY" and " circuit " in out.reason:
                    found.add("a DELAYED_RETRY for an open circuit")
                if out.strategy == "DIFFERENT_HARDWARE_CLASS":
                    found.add("DIFFERENT_HARDWARE_CLASS")
    return found


def test_generated_histories_reach_the_interesting_states() -> None:
    """A measurement, always on the same examples; the shares are in docs/TESTING.md."""
    counts: Counter[str] = Counter()
    examples = 0

    @settings(max_examples=300, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(histories)
    def sample(records: list[InputRecord]) -> None:
        nonlocal examples
        examples += 1
        counts.update(reached(records))

    sample()
    shares = {state: counts[state] / examples for state in REACH}
    print("share of generated histories reaching each state:")  # pytest -s shows them
    for state, share in shares.items():
        print(f"  {share:6.1%}  {state}")
    assert examples >= 250
    assert {s: v for s, v in shares.items() if v < REACH[s]} == {}


# --- the rules, checked against a model of the circuits ----------------------------------

OPENISH = ("OPEN", "FORCED_OPEN")


class Circuit:
    """What the model knows of one circuit, from the transitions the core reported."""

    def __init__(self) -> None:
        self.state = "CLOSED"
        self.trips = 0
        self.reset_timeout_s = 0.0
        self.due = 0.0  # ms, unrounded

    def wait_s(self, now: int) -> float:
        if self.state == "FORCED_OPEN":
            return self.reset_timeout_s
        return max(0.0, (math.ceil(self.due) - now) / 1000.0)


class Model:
    """docs/circuits.md read independently of processors/core: each output of the core is
    checked against the rules, given the circuits' states so far."""

    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        self.circuits: dict[tuple[str, str], Circuit] = {}
        self.ids: dict[str, Any] = {}

    def circuit(self, kind: str, circuit_id: str) -> Circuit:
        return self.circuits.setdefault((kind, circuit_id), Circuit())

    def check(self, record: InputRecord, before: int, now: int, outputs: list) -> None:
        for out in outputs:
            type(out).model_validate(out.model_dump())  # a valid record of its schema
            assert out.caused_by == record.event_id
            assert before <= out.ts <= now
            if isinstance(out, CircuitStateChanged):
                # Distinct transitions never share an id, not even the same move of a
                # circuit revealed twice by one input (test_core_rules.py names that case).
                move = (out.caused_by, out.circuit_kind, out.circuit_id, out.from_state,
                        out.to_state, out.ts)  # fmt: skip
                assert self.ids.setdefault(out.event_id, move) == move
                self.transition(record, before, now, out)
            elif isinstance(out, CircuitFigures):  # after the TICK's transitions
                assert isinstance(record, Tick) and out.ts == now
                assert out.state == self.circuit(out.circuit_kind, out.circuit_id).state
            elif isinstance(out, Alert):  # test_alert_rules.py holds their rules
                continue
            else:
                assert out.command_id not in self.ids  # one command per id
                self.ids[out.command_id] = out
                self.command(record, now, out)
        for (kind, circuit_id), circuit in self.circuits.items():
            # an OPEN circuit half-opens at the first input at or after its due moment
            assert circuit.state != "OPEN" or circuit.due > now, (kind, circuit_id)
        if isinstance(record, ConfigChanged):  # from this record on; an invalid one: never
            with contextlib.suppress(ConfigError):
                self.settings = self.settings.merged(record.config)

    def transition(
        self, record: InputRecord, before: int, now: int, out: CircuitStateChanged
    ) -> None:
        params = self.settings.circuits.for_kind(out.circuit_kind)
        circuit = self.circuit(out.circuit_kind, out.circuit_id)
        assert out.from_state == circuit.state != out.to_state
        if out.to_state == "OPEN":
            assert circuit.state in ("CLOSED", "HALF_OPEN")
            trips = circuit.trips + 1
            wait = min(
                params.recovery_timeout_s * params.reset_timeout_factor ** (trips - 1),
                params.max_reset_timeout_s,
            )
            assert (out.trips, out.reset_timeout_s) == (trips, wait)
            circuit.trips, circuit.reset_timeout_s = trips, wait
            circuit.due = round(out.ts + wait * 1000.0, 6)
        elif out.to_state == "HALF_OPEN":
            assert circuit.state == "OPEN" and circuit.due <= now
            assert out.ts == max(math.ceil(circuit.due), before)
            assert f"{params.half_open_max_calls} probe calls" in out.reason
        elif out.to_state == "FORCED_OPEN":
            assert isinstance(record, Operator) and record.action == "FORCE_OPEN"
            if circuit.state == "CLOSED":  # a closed circuit's wait: the current setting
                circuit.reset_timeout_s = params.recovery_timeout_s
            assert out.reset_timeout_s == circuit.reset_timeout_s  # else the wait it had
        else:  # CLOSED: by enough probe successes or by an operator
            if circuit.state == "HALF_OPEN" and not isinstance(record, Operator):
                assert record.kind == "SUCCESS"
            else:
                assert isinstance(record, Operator) and record.action == "RESET"
            assert (out.trips, out.consecutive_failures) == (0, 0)
            assert out.reset_timeout_s == params.recovery_timeout_s
            circuit.trips = 0
        circuit.state = out.to_state

    def command(self, record: InputRecord, now: int, out: RecoveryCommand) -> None:
        max_retries = self.settings.recovery.max_retries
        if out.command_id.startswith("mig-"):  # a task moved off a lost worker
            escalate = out.attempt - 1 >= max_retries
            assert out.strategy == ("ESCALATION" if escalate else "DIFFERENT_WORKER")
            return
        assert isinstance(record, WorkerEvent) and record.kind == "FAILURE"
        assert (out.task_id, out.attempt, out.worker_id) == (
            record.task_id,
            record.attempt + 1,
            record.worker_id,
        )
        worker = self.circuit("worker", record.worker_id)
        hardware = self.circuit("hardware_class", record.hardware_class)
        task_type = self.circuit("task_type", record.task_type)
        reason = out.reason.removeprefix("fleet_guard; ")
        if record.attempt >= max_retries:
            expected = ("ESCALATION", f"attempt {record.attempt} reached max_retries")
        elif worker.state in OPENISH:
            expected = ("DIFFERENT_WORKER", f"worker circuit {record.worker_id} is")
        elif hardware.state in OPENISH and record.hardware_class == "cpu":
            expected = ("DELAYED_RETRY", "hardware_class circuit cpu is")
            assert out.delay_s == hardware.wait_s(now)
        elif hardware.state in OPENISH:
            expected = ("DIFFERENT_HARDWARE_CLASS", f"hardware_class circuit {hardware_id(out)}")
            assert out.target_hardware_class == "cpu"
        elif task_type.state in OPENISH:
            expected = ("DELAYED_RETRY", f"task_type circuit {record.task_type} is")
            assert out.delay_s == task_type.wait_s(now)
        else:
            assert " ladder " in reason
            return
        assert (out.strategy, reason[: len(expected[1])]) == expected


def hardware_id(out: RecoveryCommand) -> str:
    return out.reason.removeprefix("fleet_guard; ").split()[2]


@checks
@given(histories)
def test_every_output_follows_the_rules_given_the_states_before_it(
    records: list[InputRecord],
) -> None:
    core = FleetCore(FAST)
    model = Model(FAST)
    for record in records:
        before = core.now
        outputs = core.process(record)
        model.check(record, before, core.now, outputs)
    for state in sorted({c.state for c in model.circuits.values()}):
        event(f"a circuit ends {state}")


# --- circuit_figures: what the core publishes is what its views show ---------------------

SECTION = {"worker": "workers", "hardware_class": "hardware_classes", "task_type": "task_types"}


def published(record: CircuitFigures) -> tuple:
    """A circuit_figures record's figures (all but its id, time and cause)."""
    fields = record.model_dump(exclude={"event_id", "ts", "caused_by"})
    return tuple(str(v) if k in ("circuit_kind", "state") else v for k, v in fields.items())


def viewed(core: FleetCore) -> dict[tuple[str, str], tuple]:
    """Each circuit's figures as the core's views give them now (`circuits_view`,
    `workers_view`, `capacity_view`; the counters the views do not show from the circuit)."""
    circuits, workers, capacity = core.circuits_view(), core.workers_view(), core.capacity_view()
    figures = {}
    for kind, section in SECTION.items():
        for circuit_id, row in circuits[section].items():
            circuit = core._circuits[list(SECTION).index(kind)][circuit_id]
            worker = workers.get(circuit_id) if kind == "worker" else None
            known = capacity.get(circuit_id) if kind == "hardware_class" else None
            figures[(kind, circuit_id)] = (
                kind,
                circuit_id,
                row["state"],
                circuit.consecutive_failures,
                circuit.half_open_successes,
                circuit.trips,
                circuit.total_trips,
                row["total_successes"],
                row["total_failures"],
                row["health_percentage"],
                worker and worker["hardware_class"],
                worker and worker["status"] == "live",
                worker and worker["available"],
                known and known["workers"],
                known and known["live"],
                known and known["available"],
            )
    return figures


@checks
@given(histories)
def test_at_every_tick_the_published_figures_are_the_views(records: list[InputRecord]) -> None:
    """Each TICK publishes a circuit's figures exactly as the views give them at that moment,
    and leaves out only circuits whose figures are what it last published: after every TICK
    the newest figures of every circuit equal the views (nothing changed goes unpublished)."""
    core = FleetCore(FAST)
    newest: dict[tuple[str, str], tuple] = {}
    for record in records:
        outputs = core.process(record)
        figures = [o for o in outputs if isinstance(o, CircuitFigures)]
        if not isinstance(record, Tick):
            assert figures == []
            continue
        assert outputs[len(outputs) - len(figures) :] == figures  # after what it revealed
        order = [(list(SECTION).index(f.circuit_kind), f.circuit_id) for f in figures]
        assert order == sorted(set(order))  # one each, by kind rank then id
        now = viewed(core)
        for record_figures in figures:
            key = (str(record_figures.circuit_kind), record_figures.circuit_id)
            assert (record_figures.ts, record_figures.caused_by) == (core.now, record.event_id)
            assert published(record_figures) == now[key]
            newest[key] = published(record_figures)
        assert newest == now
        event(f"a TICK publishes {min(len(figures), 3)}+ figures")
