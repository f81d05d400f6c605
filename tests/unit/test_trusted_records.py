"""The derived records the core and its compiled twin build with `trusted` (no validation,
no walk over the fields) are the records pydantic would build from the same values: every
field given, each of the type the schema says, and the same JSON."""

from __future__ import annotations

from histories import History

from faultstream.events.config import CoreSettings
from faultstream.events.models import derived_to_json, trusted
from faultstream.processors.compiled import replay_compiled
from faultstream.processors.core import FleetCore

SETTINGS = CoreSettings().merged(
    {
        "circuits": {"worker": {"failure_rate_threshold": 50, "minimum_number_of_calls": 2}},
        "recovery": {"adaptive": True},
    }
)


def history() -> History:
    """A class opened by crashes, a reduced batch, a lost worker's task moved, figures."""
    h = History()
    h.started("w2", 500, task_id="t-w2")
    h.failure("w1", 1_000, "RESOURCE_EXHAUSTION", attributes={"batch_size": "8"})
    for n in range(5):
        h.failure("w1", 2_000 + n, "WORKER_CRASH")
    h.heartbeat("w3", 3_000)
    h.tick(200_000)  # w2 is lost: its task moves to w3
    return h


def check(outputs: list) -> set[str]:
    for record in outputs:
        values = dict(vars(record))
        validated = type(record).model_validate(values)
        assert record == validated
        assert record.model_fields_set == validated.model_fields_set
        assert derived_to_json(record) == derived_to_json(validated)
        rebuilt = trusted(type(record), values)
        assert derived_to_json(rebuilt) == derived_to_json(record)
    return {type(record).__name__ for record in outputs}


def test_the_cores_records_are_those_pydantic_builds() -> None:
    core = FleetCore(SETTINGS)
    outputs = [out for record in history().records for out in core.process(record)]
    kinds = check(outputs)
    assert kinds == {"CircuitStateChanged", "RecoveryCommand", "Alert", "CircuitFigures"}


def test_the_compiled_twins_records_are_those_pydantic_builds() -> None:
    kinds = check(replay_compiled(history().records, SETTINGS))
    assert kinds == {"CircuitStateChanged", "RecoveryCommand", "Alert", "CircuitFigures"}
