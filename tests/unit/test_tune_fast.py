"""Scoring by the compiled twin (`processors/compiled`, the scorer watching its kernel)
against the specification: for random histories and random valid settings, its score
equals a plain `FleetCore` run scored by `score_history`, exactly."""

from __future__ import annotations

import random
import tempfile

import numpy as np
import pyarrow as pa
import pytest
from histories import History
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faultstream.events.config import CoreSettings
from faultstream.events.models import MAX_MILLIS, InputRecord, WorkerEvent
from faultstream.processors import compiled as compiled_twin
from faultstream.processors.compiled import (
    CIRCUIT_COLUMNS,
    EVENT_HASH,
    Encoded,
    UnsupportedHistory,
    encode_history,
    encode_table,
    score_grid,
)
from faultstream.processors.compiled import encode as encode_module
from faultstream.processors.compiled.liveness import liveness
from faultstream.processors.compiled.moments import STATUS, round6
from faultstream.processors.compiled.runs import score_run, scoring_run
from faultstream.processors.core.repeats import SEEN_IDS_PER_WORKER
from faultstream.processors.offline.sources import DuckDBSource
from faultstream.processors.offline.tune import (
    ColumnarHistory,
    Score,
    TunePolicy,
    expand_grid,
    parse_grid,
    run_grid,
    tune_round,
)
from faultstream.processors.offline.tune.runner import evaluate
from faultstream.projections.tables import HistoryWriter

WORKERS = ["w1", "w2", "w3", "w4", "w5", "cuda"]  # "cuda" also names a class: ids tie
CLASSES = ["cuda", "cuda", "cuda", "cuda", "rocm", "cpu"]
FAILURE_TYPES = [
    "WORKER_CRASH",
    "WORKER_DISCONNECTION",
    "BROWSER_FAILURE",
    "HARDWARE_ERROR",
    "RESOURCE_EXHAUSTION",
    "TIMEOUT",
    None,  # classified from the message
]
MESSAGES = ["CUDA out of memory", "cuda error 700", "browser crashed", "worker crash", "boom"]

step = st.tuples(
    st.sampled_from(
        [
            "heartbeat",
            "started",
            "started",
            "success",
            "success",
            "failure",
            "failure",
            "failure",
            "class_failure",
            "class_failure",
            "tick",
            "silence",
            "operator",
            "repeat",
            "reused_id",
            "late",
            "move",
            "skewed",
        ]
    ),
    st.integers(0, len(WORKERS) - 1),
    st.integers(0, 3_000),  # ts step
    st.integers(0, len(FAILURE_TYPES) - 1),
    st.sampled_from(["bert", "resnet"]),
    st.integers(0, 2**16),  # a free choice for the step (message, operator, …)
)


def build(steps: list[tuple]) -> list[InputRecord]:
    """A history from steps: outcomes, silences long enough to lose workers, failures of
    a whole class at once (the fleet guard), operators, repeated ids, late events."""
    h = History()
    ts = 1_000
    classes = dict(zip(WORKERS, CLASSES, strict=True))
    for kind, wi, delta, fi, task_type, choice in steps:
        ts += delta
        worker = WORKERS[wi]
        hw = classes[worker]
        failure_type = FAILURE_TYPES[fi]
        message = MESSAGES[choice % len(MESSAGES)] if failure_type is None else None
        task = f"t-{worker}-{choice % 3}"
        if kind == "tick":
            h.tick(ts)
        elif kind == "silence":
            ts += 5_000 + choice % 40_000
            h.tick(ts)
        elif kind == "heartbeat":
            h.heartbeat(worker, ts, hardware_class=hw)
        elif kind == "started":
            h.started(worker, ts, hardware_class=hw, task_type=task_type, task_id=task)
        elif kind == "success":
            h.success(worker, ts, hardware_class=hw, task_type=task_type, task_id=task)
        elif kind == "failure":
            h.failure(
                worker, ts, failure_type, hardware_class=hw, task_type=task_type,
                task_id=task, message=message, attempt=choice % 4,
            )  # fmt: skip
        elif kind == "class_failure":  # every worker of the class crashes at once
            for other in WORKERS:
                if classes[other] == hw:
                    h.failure(other, ts, "WORKER_CRASH", hardware_class=hw, task_type=task_type)
        elif kind == "operator":
            circuit_kind = ("worker", "hardware_class", "task_type")[choice % 3]
            circuit_id = (worker, hw, task_type)[choice % 3]
            action = "FORCE_OPEN" if choice % 5 < 2 else "RESET"
            h.operator(action, circuit_kind, circuit_id, ts)
        elif kind == "repeat" and h.records:
            h.records.append(h.records[choice % len(h.records)])
        elif kind == "reused_id":  # an outcome reusing the id of the worker's heartbeat:
            beat = h.heartbeat(worker, ts, hardware_class=hw)  # the core drops it, the
            h.records.append(  # score counts it
                WorkerEvent(
                    event_id=beat.event_id, kind="FAILURE" if choice % 2 else "SUCCESS",
                    ts=ts + 1, worker_id=worker, hardware_class=hw, task_id=task,
                    task_type=task_type,
                )
            )  # fmt: skip
        elif kind == "late":  # an event whose ts is behind the clock
            h.failure(worker, max(0, ts - choice % 8_000), failure_type or "TIMEOUT",
                      hardware_class=hw, task_type=task_type, message=message)  # fmt: skip
        elif kind == "move":  # the worker now reports another class
            classes[worker] = CLASSES[choice % len(CLASSES)]
            h.heartbeat(worker, ts, hardware_class=classes[worker])
        elif kind == "skewed":  # a worker's clock far off: decisions run on received_at
            wild = (choice * 7_919_000_003) % MAX_MILLIS
            if choice % 2:
                h.heartbeat(worker, wild, hardware_class=hw, received_at=ts)
            else:
                h.failure(worker, wild, failure_type or "TIMEOUT", hardware_class=hw,
                          task_type=task_type, message=message, received_at=ts)  # fmt: skip
    return h.records


ATTRIBUTIONS = [
    {},
    {"worker": ["WORKER_CRASH"], "hardware_class": ["HARDWARE_ERROR", "WORKER_DISCONNECTION"]},
    {"worker": ["WORKER_CRASH", "BROWSER_FAILURE"], "hardware_class": []},  # disc. → task
]


@st.composite
def core_settings(draw: st.DrawFn) -> CoreSettings:
    def circuit(threshold_max: int) -> dict:
        success = draw(st.integers(1, 3))
        minimum = draw(st.integers(1, 6))
        time_window = draw(st.booleans())
        return {
            "failure_threshold": draw(st.integers(1, threshold_max)),
            "recovery_timeout_s": draw(st.sampled_from([0.5, 1.5, 2, 3.3, 7, 20])),
            "reset_timeout_factor": draw(st.sampled_from([1.0, 1.2, 1.5, 2.0, 3.7])),
            "max_reset_timeout_s": draw(st.sampled_from([4, 9.9, 60, 600])),
            "success_threshold": success,
            "half_open_max_calls": success + draw(st.integers(0, 2)),
            # The failure-rate rule (often off); scoring refuses the slow-call rule.
            "failure_rate_threshold": draw(st.sampled_from([0, 0, 0, 30, 50, 100])),
            "minimum_number_of_calls": minimum,
            "sliding_window_type": "time" if time_window else "count",
            "sliding_window_size": draw(
                st.sampled_from([1, 4.5, 30]) if time_window else st.integers(minimum, 12)
            ),
        }

    worker = circuit(4) | {
        "max_open_fraction": draw(st.sampled_from([0.2, 0.5, 0.75, 1.0])),
        "guard_min_workers": draw(st.integers(1, 5)),
    }
    return CoreSettings().merged(
        {
            "circuits": {
                "worker": worker,
                "hardware_class": circuit(4),
                "task_type": circuit(4),
                "attribution": draw(st.sampled_from(ATTRIBUTIONS)),
            },
            "recovery": {"heartbeat_timeout_s": draw(st.sampled_from([2, 4.5, 10, 30]))},
        }
    )


checks = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(records: list[InputRecord]) -> Encoded:
    """What the tuner scores: the circuits' encoding, without commands."""
    return encode_history(records, commands=False)


def encode_columns(table: pa.Table) -> Encoded:
    return encode_table(table, commands=False)


def compiled_score(history: Encoded, core: CoreSettings) -> Score:
    return Score.of(score_grid(history, [core], threads=1)[0])


@checks
@given(st.lists(step, min_size=10, max_size=120).map(build), core_settings())
def test_compiled_score_equals_core_run_and_score_history(
    records: list[InputRecord], core: CoreSettings
) -> None:
    history = encode(records)
    assert compiled_score(history, core) == evaluate(records, core)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=10, max_size=120).map(build), core_settings())
def test_scoring_every_input_equals_scoring_only_the_inputs_that_matter(
    records: list[InputRecord], core: CoreSettings
) -> None:
    """Scoring visits only the inputs that can change a circuit (liveness.py); visiting
    every one, as a replay that derives records does, scores the same."""
    history = encode(records)
    plan = scoring_run(history, core)
    status, every = liveness(history.inputs, history.fleet, plan.rules, True, True)
    assert status == 0 and len(every.record) >= len(plan.visits.record)
    assert score_run(history, plan._replace(visits=every)) == score_run(history, plan)


def test_grid_through_threads_equals_core_per_configuration() -> None:
    rng = random.Random(3)
    steps = [
        (rng.choice(["started", "success", "failure", "failure", "class_failure", "silence"]),
         rng.randrange(len(WORKERS)), rng.randrange(3_000), rng.randrange(len(FAILURE_TYPES)),
         rng.choice(["bert", "resnet"]), rng.randrange(2**16))
        for _ in range(400)
    ]  # fmt: skip
    records = build(steps)
    candidates, _ = expand_grid(
        parse_grid(["worker.failure_threshold=1,3", "task_type.recovery_timeout_s=2,30"]),
        CoreSettings(),
    )
    history = encode(records)
    scores = score_grid(history, [c.settings for c in candidates], threads=2)
    assert [Score.of(s) for s in scores] == [evaluate(records, c.settings) for c in candidates]


def test_round6_matches_python_round_to_the_microsecond() -> None:
    rng = random.Random(11)
    counters = np.zeros(1, np.int64)
    waits = [0.0, 1.2, 0.1, 1.5e3, 746.496, 4.5, 33.3]
    values = [rng.randrange(10**9) + rng.choice(waits) * 1000.0 for _ in range(20_000)]
    values += [rng.randrange(2**33, 2**41) + rng.choice(waits) * 1000.0 for _ in range(5_000)]
    values += [1000 + 1.2 * 1000, 2**33 + 0.3, 1.764e12 + 90000.00000001]
    for x in values:
        assert round6(x, counters) == round(x, 6), x
    assert counters[STATUS] == 0  # no near-tie needed the core


def test_history_with_config_changed_is_unsupported() -> None:
    h = History()
    h.failure("w1", 1_000, "WORKER_CRASH")
    h.config(2_000, {"circuits": {"worker": {"failure_threshold": 2}}})
    with pytest.raises(UnsupportedHistory, match="CONFIG_CHANGED"):
        encode(h.records)


def test_unsupported_history_falls_back_to_the_core_with_a_note(capsys) -> None:
    h = History()
    for i in range(6):
        h.failure("w1", 1_000 + 1_000 * i, "WORKER_CRASH")
    h.config(9_000, {"circuits": {"worker": {"failure_threshold": 2}}})
    h.failure("w1", 10_000, "WORKER_CRASH")
    h.failure("w1", 11_000, "WORKER_CRASH")
    candidates, _ = expand_grid(parse_grid(["worker.failure_threshold=1,3"]), CoreSettings())
    results = run_grid(h.records, candidates, processes=1)
    for result in results:  # the core applied the CONFIG_CHANGED: exact scores all the same
        assert result.score == evaluate(h.records, result.candidate.settings)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exact path" in err and "CONFIG_CHANGED" in err


def test_rules_the_twin_does_not_score_fall_back_to_the_core_with_a_note(capsys) -> None:
    h = History()
    for i in range(30):  # tasks that take 1 s: slow calls at 0.5 s
        h.started("w1", 2_000 * i, task_id=f"t-{i}")
        h.success("w1", 2_000 * i + 1_000, task_id=f"t-{i}")
    grid = ["worker.slow_call_duration_s=0,0.5", "worker.minimum_number_of_calls=5"]
    candidates, _ = expand_grid(parse_grid(grid), CoreSettings())
    results = run_grid(h.records, candidates, processes=1)
    for result in results:
        assert result.score == evaluate(h.records, result.candidate.settings)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exact path" in err and "slow-call" in err


def test_exact_flag_skips_the_compiled_path(monkeypatch, capsys) -> None:
    h = History()
    h.failure("w1", 1_000, "WORKER_CRASH")
    candidates, _ = expand_grid(parse_grid(["worker.failure_threshold=1,3"]), CoreSettings())
    compiled = run_grid(h.records, candidates, processes=1)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the compiled path ran despite exact=True")

    monkeypatch.setattr(compiled_twin, "score_grid", refuse)
    exact = run_grid(h.records, candidates, processes=1, exact=True)
    assert [r.score for r in compiled] == [r.score for r in exact]
    assert capsys.readouterr().err == ""


def test_repeated_id_is_ignored_inside_the_window_and_processed_again_after_it() -> None:
    h = History()
    first = h.failure("w1", 1_000, "WORKER_CRASH")
    h.records.append(first)  # inside the window: ignored, the circuit stays CLOSED
    for i in range(SEEN_IDS_PER_WORKER):
        h.heartbeat("w1", 2_000 + i)
    h.records.append(first)  # forgotten by now: the core counts it, the circuit opens
    core = CoreSettings().merged({"circuits": {"worker": {"failure_threshold": 2}}})
    history = encode(h.records)
    assert history.inputs.skip[1] == 1 and history.inputs.skip[-1] == 0
    score = compiled_score(history, core)
    assert score == evaluate(h.records, core)
    assert score.openings == 1


def test_event_ids_sharing_a_hash_are_told_apart_by_their_strings(monkeypatch) -> None:
    rng = random.Random(5)
    steps = [
        (rng.choice(["heartbeat", "success", "failure", "repeat", "reused_id", "tick"]),
         rng.randrange(len(WORKERS)), rng.randrange(3_000), rng.randrange(len(FAILURE_TYPES)),
         rng.choice(["bert", "resnet"]), rng.randrange(2**16))
        for _ in range(300)
    ]  # fmt: skip
    records = build(steps)
    honest = encode(records)
    monkeypatch.setattr(encode_module, "_id_hash", lambda event_id: 7)  # all collide
    colliding = encode(records)
    assert (colliding.inputs.skip == honest.inputs.skip).all()
    assert (colliding.inputs.scored == honest.inputs.scored).all()
    assert honest.inputs.skip.any() and not honest.inputs.scored.all()  # it has repeats
    core = CoreSettings()
    assert compiled_score(colliding, core) == evaluate(records, core)


def as_columns(records: list[InputRecord], event_hash: list[int] | None = None) -> pa.Table:
    """The records as an `input_columns` table (repeats kept), with `event_hash` if given."""
    rows = [r.model_dump(mode="json") for r in records]
    table = pa.table({c: pa.array([row.get(c) for row in rows]) for c in CIRCUIT_COLUMNS})
    if event_hash is not None:
        table = table.append_column(EVENT_HASH, pa.array(event_hash, pa.uint64()))
    return table


def assert_same_encoding(a: Encoded, b: Encoded) -> None:
    """Equal arrays and values, wherever they were read from."""
    for part in ("inputs", "fleet"):
        x, y = getattr(a, part), getattr(b, part)
        for name in x._fields:
            u, v = getattr(x, name), getattr(y, name)
            assert np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v, name
    assert (a.names, a.configs, a.end_ts) == (b.names, b.configs, b.end_ts)


def test_column_event_hashes_that_collide_are_told_apart_by_their_strings() -> None:
    rng = random.Random(5)
    steps = [
        (rng.choice(["heartbeat", "success", "failure", "repeat", "reused_id", "tick"]),
         rng.randrange(len(WORKERS)), rng.randrange(3_000), rng.randrange(len(FAILURE_TYPES)),
         rng.choice(["bert", "resnet"]), rng.randrange(2**16))
        for _ in range(300)
    ]  # fmt: skip
    records = build(steps)
    honest = encode(records)
    assert honest.inputs.skip.any() and not honest.inputs.scored.all()  # it has repeats
    distinct = [hash(r.event_id) % 2**64 for r in records]
    for hashes in (None, distinct, [7] * len(records)):  # codes, real hashes, all collide
        assert_same_encoding(honest, encode_columns(as_columns(records, hashes)))


def test_column_event_hashes_without_repeats_keep_every_record() -> None:
    h = History()
    for i in range(50):
        h.failure(WORKERS[i % 3], 1_000 + i, "WORKER_CRASH", task_id=f"t{i}")
    history = encode_columns(as_columns(h.records, [hash(r.event_id) % 2**64 for r in h.records]))
    assert not history.inputs.skip.any() and history.inputs.scored.all()
    assert_same_encoding(encode(h.records), history)


def test_half_opening_revealed_only_by_trailing_heartbeats_counts_as_the_core_does() -> None:
    h = History()
    h.failure("w1", 1_000, "WORKER_CRASH")
    h.heartbeat("w1", 1_501)  # past the due moment (1,500): the last input reveals it
    core = CoreSettings().merged(
        {"circuits": {"worker": {"failure_threshold": 1, "recovery_timeout_s": 0.5}}}
    )
    history = encode(h.records)
    score = compiled_score(history, core)
    assert score == evaluate(h.records, core)
    assert score.open_time_s == 0.5


# --- the columnar path: a DuckDB history encoded straight from its columns ---------------


def written_to_duckdb(records: list[InputRecord], directory: str) -> DuckDBSource:
    """The history as the embedded pipeline stores it (a repeated record is stored once)."""
    path = f"{directory}/history.duckdb"
    writer = HistoryWriter(path)
    writer.append_inputs(records, range(len(records)))
    writer.close()
    return DuckDBSource(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=10, max_size=120).map(build), core_settings())
def test_scores_from_duckdb_columns_equal_scores_from_its_records_and_the_core(
    records: list[InputRecord], core: CoreSettings
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        source = written_to_duckdb(records, directory)
        stored = list(source.inputs())
        from_columns = encode_columns(source.input_columns())
    from_models = encode(stored)
    assert_same_encoding(from_models, from_columns)
    score = compiled_score(from_columns, core)
    assert score == compiled_score(from_models, core)
    assert score == evaluate(stored, core)


def columnar(records: list[InputRecord], directory: str, *, load=None) -> ColumnarHistory:
    source = written_to_duckdb(records, directory)
    stored = list(source.inputs())
    return ColumnarHistory(source.input_columns(), load or (lambda: iter(stored)))


def tune_history() -> list[InputRecord]:
    h = History()
    for i in range(12):
        h.failure("w1", 1_000 + 1_000 * i, "WORKER_CRASH", task_type="bert", task_id=f"t{i}")
        h.success("w2", 1_500 + 1_000 * i, task_type="bert", task_id=f"u{i}")
    h.config(20_000, {"circuits": {"worker": {"failure_threshold": 4}}})
    h.operator("FORCE_OPEN", "hardware_class", "rocm", 21_000)
    for i in range(6):
        h.failure("w3", 22_000 + 500 * i, None, message="CUDA out of memory", task_id=f"v{i}")
    h.tick(40_000)
    return h.records


def test_tune_round_over_duckdb_columns_equals_the_round_over_its_records(tmp_path) -> None:
    def refuse() -> list:
        raise AssertionError("records were built although the compiled path ran")

    history = columnar(tune_history(), str(tmp_path), load=refuse)
    records = list(DuckDBSource(f"{tmp_path}/history.duckdb").inputs())
    policy = TunePolicy(
        grid=parse_grid(["worker.failure_threshold=1,3,6", "recovery.max_retries=1,2"]),
        min_events=1,
        window_ms=35_000,
        processes=1,
    )
    from_columns = tune_round(history, CoreSettings(), policy)
    from_records = tune_round(records, CoreSettings(), policy)
    assert from_columns.current.candidate.settings.circuits.worker.failure_threshold == 4
    assert [(r.candidate.changes, r.score) for r in from_columns.results] == [
        (r.candidate.changes, r.score) for r in from_records.results
    ]
    assert from_columns.current.score == from_records.current.score
    assert (from_columns.events, from_columns.proposal, from_columns.reason) == (
        from_records.events,
        from_records.proposal,
        from_records.reason,
    )


def test_exact_path_over_duckdb_columns_builds_the_records_it_needs(tmp_path) -> None:
    history = columnar(tune_history(), str(tmp_path))
    policy = TunePolicy(grid=parse_grid(["worker.failure_threshold=1,3"]), processes=1)
    exact = tune_round(history, CoreSettings(), TunePolicy(**{**vars(policy), "exact": True}))
    compiled = tune_round(history, CoreSettings(), policy)
    assert [r.score for r in exact.results] == [r.score for r in compiled.results]
