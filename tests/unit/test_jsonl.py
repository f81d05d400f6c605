"""JSON Lines histories: every record kind parses; bad lines name the line and field."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from faultstream.events.exceptions import InvalidEventError
from faultstream.events.jsonl import (
    InvalidLineError,
    parse_input_line,
    read_input_records,
    write_records,
)
from faultstream.events.models import (
    ConfigChanged,
    Operator,
    Tick,
    WorkerEvent,
    input_model_for,
)

GOOD = [
    '{"event_id":"e1","kind":"HEARTBEAT","ts":1,"worker_id":"w1","hardware_class":"cuda"}',
    '{"event_id":"e2","kind":"FAILURE","ts":2,"worker_id":"w1","hardware_class":"cuda",'
    '"task_id":"t1","task_type":"bert","message":"CUDA out of memory"}',
    '{"event_id":"e3","kind":"TICK","ts":3}',
    '{"event_id":"e4","kind":"OPERATOR","ts":4,"action":"FORCE_OPEN",'
    '"circuit_kind":"hardware_class","circuit_id":"cuda","actor":"alice"}',
    '{"event_id":"e5","kind":"CONFIG_CHANGED","ts":5,'
    '"config":{"circuits":{"worker":{"failure_threshold":3}}},"actor":"tune"}',
]


def test_every_record_kind_parses_to_its_model():
    records = list(read_input_records(GOOD))
    assert [type(r) for r in records] == [WorkerEvent, WorkerEvent, Tick, Operator, ConfigChanged]


def test_records_round_trip_through_json_lines_including_checkpoint_bytes():
    checkpoint = WorkerEvent(
        event_id="c1",
        kind="CHECKPOINT",
        ts=9,
        worker_id="w1",
        hardware_class="cpu",
        task_id="t1",
        checkpoint_seq=4,
        checkpoint_state=b"\x00\xffstate",
    )
    records = [*read_input_records(GOOD), checkpoint]
    out = io.StringIO()
    write_records(records, out)
    assert list(read_input_records(out.getvalue().splitlines())) == records


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (
            '{"event_id":"x","kind":"SUCCESS","ts":1,"worker_id":"w","hardware_class":"c"}',
            "task_id",
        ),
        (
            '{"event_id":"x","kind":"SUCCESS","ts":1,"worker_id":"w","hardware_class":"c",'
            '"task_id":"t"}',
            "task_type",
        ),
        ('{"event_id":"x","kind":"HEARTBEAT","ts":-5,"worker_id":"w","hardware_class":"c"}', "ts"),
        ('{"event_id":"x","kind":"NOPE","ts":1}', "kind"),
        ('{"event_id":"x","kind":{"a":1},"ts":1}', "kind"),  # not even hashable
        ('{"event_id":"x","kind":"TICK"}', "ts"),
        ("not json", "line"),
    ],
)
def test_invalid_line_names_line_number_and_field(line, field):
    with pytest.raises(InvalidLineError) as caught:
        list(read_input_records([GOOD[0], line]))
    assert caught.value.lineno == 2
    assert caught.value.field == field
    assert str(caught.value).startswith(f"line 2: {field}")


def test_skip_invalid_keeps_good_lines_and_reports_bad_ones():
    errors: list[InvalidEventError] = []
    records = list(read_input_records([GOOD[0], "{}", GOOD[2]], skip_invalid=True, errors=errors))
    assert len(records) == 2
    assert [e.lineno for e in errors] == [2]


def parse_by_kind(line: str) -> object:
    """The reference: parse, pick the model by `kind`, validate (what the one-parse fast
    path for worker events must agree with)."""
    raw = json.loads(line)
    model = input_model_for(raw.get("kind")) if isinstance(raw, dict) else None
    if model is None:
        raise ValueError("no model")
    return model.model_validate_json(line)


json_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3),
    st.sampled_from(["HEARTBEAT", "FAILURE", "CHECKPOINT", "TICK", "OPERATOR", "TIMEOUT",
                     "cuda", "AAEC", "FORCE_OPEN", "worker"]),
    st.dictionaries(st.sampled_from(["batch_size", "x"]), st.text(max_size=2), max_size=2),
)  # fmt: skip
FIELDS = [
    "event_id",
    "kind",
    "ts",
    "worker_id",
    "hardware_class",
    "task_id",
    "task_type",
    "failure_type",
    "message",
    "attempt",
    "attributes",
    "checkpoint_seq",
    "checkpoint_state",
    "action",
    "circuit_kind",
    "circuit_id",
    "actor",
    "config",
]


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(GOOD),
    changes=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
    dropped=st.lists(st.sampled_from(FIELDS), max_size=2),
)
def test_worker_event_fast_parse_accepts_and_refuses_as_parsing_by_kind_does(
    base: str, changes: dict, dropped: list
) -> None:
    fields = {**json.loads(base), **changes}
    for name in dropped:
        fields.pop(name, None)
    line = json.dumps(fields)
    try:
        expected = parse_by_kind(line)
    except (ValueError, ValidationError):
        expected = None
    try:
        got = parse_input_line(line)
    except InvalidEventError:
        got = None
    assert got == expected
