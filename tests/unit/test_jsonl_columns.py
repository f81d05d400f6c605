"""JSON Lines straight into columns (`JsonlSource.input_columns`): either the fast path
refuses the file (None: the line-by-line parse decides) or its table equals the one built
from `parse_input_line` of every line; it is taken for plain valid histories; and the
compiled replay and the tuner over it equal the core and the tuner over the records."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from faultstream.cli import main
from faultstream.events.config import CoreSettings
from faultstream.events.jsonl import InvalidLineError, read_input_records, write_records
from faultstream.events.models import (
    MAX_MILLIS,
    CircuitKind,
    ConfigChanged,
    EventKind,
    FailureType,
    InputRecord,
    Operator,
    OperatorAction,
    Tick,
    WorkerEvent,
    derived_to_json,
)
from faultstream.processors.compiled import replay_compiled_table
from faultstream.processors.core import FleetCore
from faultstream.processors.offline import sources
from faultstream.processors.offline.jsonl_columns import Refused, records_to_columns, scan_jsonl
from faultstream.processors.offline.sources import (
    INPUT_COLUMNS,
    REPLAY_COLUMNS,
    DuckDBSource,
    JsonlSource,
    Window,
)
from faultstream.processors.offline.tune import ColumnarHistory, TunePolicy, parse_grid, tune_round
from faultstream.projections.tables import HistoryWriter

EXAMPLES = int(os.environ.get("JSONL_EXAMPLES", "200"))
checks = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def columns_for_every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """These files are small: read them as columns all the same (the reader is under test)."""
    monkeypatch.setattr(sources, "JSONL_COLUMNS_MIN_BYTES", 0)


def test_a_file_under_the_size_threshold_is_left_to_the_line_by_line_parse(
    simulated, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = simulated
    monkeypatch.setattr(sources, "JSONL_COLUMNS_MIN_BYTES", path.stat().st_size + 1)
    assert JsonlSource(str(path)).input_columns() is None
    monkeypatch.setattr(sources, "JSONL_COLUMNS_MIN_BYTES", path.stat().st_size)
    assert JsonlSource(str(path)).input_columns() is not None


def line_parse_table(path: Path, columns=REPLAY_COLUMNS):
    """The specification: the file read as `--input` reads it, line by line, into the
    same columns; None when that parse refuses the file."""
    try:
        with open(path, encoding="utf-8") as handle:  # as replay.open_input opens it
            return records_to_columns(list(read_input_records(handle)), columns)
    except (InvalidLineError, UnicodeDecodeError):
        return None


def columns_of(path: Path, columns=REPLAY_COLUMNS):
    return JsonlSource(str(path)).input_columns(columns=columns)


def write(tmp: str, data: bytes) -> Path:
    path = Path(tmp) / "history.jsonl"
    path.write_bytes(data)
    return path


# --- records of every kind ---------------------------------------------------------------

# Characters that need escapes in JSON, multi-byte UTF-8 and astral ones (surrogate pairs
# when escaped), besides any other.
tricky = st.sampled_from(['"', "\\", "/", "\n", "\t", "\x00", "\x1f", "é", "€", "😀", "\u2028"])
chars = st.one_of(tricky, st.characters(codec="utf-8"))
ids = st.text(chars, min_size=1, max_size=10) | st.sampled_from(["w1", "w2", "é" * 128])
maybe = lambda s: st.none() | s  # noqa: E731
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(chars, max_size=5)
json_values = st.recursive(
    scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(chars, max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


# Up to the models' bound, and at it.
millis = st.integers(0, MAX_MILLIS) | st.just(MAX_MILLIS)


@st.composite
def worker_events(draw) -> WorkerEvent:
    kind = draw(st.sampled_from(list(EventKind)))
    fields = {
        "event_id": draw(ids),
        "kind": kind,
        "ts": draw(millis),
        "received_at": draw(maybe(millis)),
        "worker_id": draw(ids),
        "hardware_class": draw(st.text(chars, min_size=1, max_size=4) | st.just("x" * 64)),
        "task_id": draw(ids if kind != EventKind.HEARTBEAT else maybe(ids)),
        "message": draw(maybe(st.text(chars, max_size=12) | st.just("é" * 4096))),
        "attempt": draw(st.integers(0, 2**31 - 1)),
        "recovery_command_id": draw(maybe(ids)),
        "attributes": draw(
            st.dictionaries(
                st.sampled_from(["batch_size", "precision", "model"]) | st.text(chars, max_size=3),
                st.text(chars, max_size=4),
                max_size=3,
            )
        ),
    }
    needs_type = kind in (EventKind.TASK_STARTED, EventKind.SUCCESS, EventKind.FAILURE)
    fields["task_type"] = draw(st.text(chars, min_size=1, max_size=6) | maybe(st.just("bert")))
    if needs_type and fields["task_type"] is None:
        fields["task_type"] = "bert"
    if kind == EventKind.FAILURE:
        fields["failure_type"] = draw(maybe(st.sampled_from(list(FailureType))))
    if kind == EventKind.CHECKPOINT:
        fields["checkpoint_seq"] = draw(st.integers(0, 10**17))
        fields["checkpoint_state"] = draw(maybe(st.binary(max_size=7)))
    return WorkerEvent(**fields)


control_records = st.one_of(
    st.builds(Tick, event_id=ids, ts=millis, received_at=maybe(millis)),
    st.builds(
        Operator,
        event_id=ids,
        ts=millis,
        action=st.sampled_from(list(OperatorAction)),
        circuit_kind=st.sampled_from(list(CircuitKind)),
        circuit_id=ids,
        actor=ids,
    ),
    st.builds(
        ConfigChanged,
        event_id=ids,
        ts=millis,
        config=st.dictionaries(st.text(chars, max_size=4), json_values, max_size=3),
        actor=ids,
    ),
)
records = st.one_of(worker_events(), worker_events(), control_records)


@st.composite
def valid_lines(draw, record: InputRecord) -> str:
    """One valid record as a JSON line: pydantic's own form, or json.dumps of it with
    the keys shuffled, spaces, nulls left out, non-ASCII escaped or not."""
    if draw(st.booleans()):
        return record.model_dump_json()
    data = record.model_dump(mode="json", exclude_none=draw(st.booleans()))
    data = dict(draw(st.permutations(list(data.items()))))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return json.dumps(data, ensure_ascii=draw(st.booleans()), separators=separators)


# --- perturbed lines ---------------------------------------------------------------------

odd_values = st.sampled_from(
    [None, 1, 1.0, -1, 2**31, MAX_MILLIS, MAX_MILLIS + 1, 10**19, True, "", "1", "x" * 129,
     "x" * 65, "NOPE", "heartbeat",
     [], {}, {"batch_size": 1}, {"precision": None}, "AAF=", "AA", "+-8=", "AQ==", "TICK",
     "OPERATOR", "CONFIG_CHANGED", "FAILURE", "CHECKPOINT", "worker", "RESET"]
)  # fmt: skip
field_names = st.sampled_from(
    ["event_id", "kind", "ts", "worker_id", "hardware_class", "task_id", "task_type",
     "failure_type", "message", "attempt", "recovery_command_id", "attributes",
     "checkpoint_seq", "checkpoint_state", "action", "circuit_kind", "circuit_id", "actor",
     "config", "received_at", "extra"]
)  # fmt: skip


@st.composite
def perturbed_lines(draw, record: InputRecord) -> str:
    """A record changed so that it may or may not still be valid (the line-by-line
    parse decides), in JSON or in its raw text."""
    data = record.model_dump(mode="json")
    how = draw(st.sampled_from(["drop", "set", "float", "exponent", "string_int", "text"]))
    if how == "drop":
        data.pop(draw(field_names), None)
    elif how == "set":
        data[draw(field_names)] = draw(odd_values)
    line = json.dumps(data, separators=(",", ":"))
    ts = f'"ts":{data.get("ts")}'
    if how == "float":
        return line.replace(ts, ts + ".0")
    if how == "exponent":
        return line.replace(ts, ts + "e0")
    if how == "string_int":
        return line.replace(ts, f'"ts":"{data.get("ts")}"')
    if how == "text":
        at = draw(st.integers(0, len(line)))
        edit = draw(
            st.sampled_from(["cut", "garbage", "duplicate", "bom", "cr", "formfeed", "space"])
        )
        if edit == "cut":
            return line[:at]
        if edit == "garbage":
            return line + draw(st.sampled_from(["x", "}", ",", " {}"]))
        if edit == "duplicate":
            return '{"ts":5,' + line[1:]
        if edit == "bom":
            return "\ufeff" + line
        if edit == "cr":
            return line[:at] + "\r" + line[at:]
        if edit == "formfeed":
            return "\x0c" + line
        return line[:at] + " " + line[at:]
    return line


blank_lines = st.sampled_from(["", "  ", "\t", " \t ", "\x0c", "\x0b"])
bad_lines = st.sampled_from(["{", "[]", "null", "garbage", "{}", '{"kind":"TICK"}', "1"])


@st.composite
def any_files(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        choice = draw(st.sampled_from(["valid", "valid", "valid", "perturbed", "blank", "bad"]))
        if choice == "blank":
            lines.append(draw(blank_lines))
        elif choice == "bad":
            lines.append(draw(bad_lines))
        else:
            record = draw(records)
            maker = valid_lines if choice == "valid" else perturbed_lines
            lines.append(draw(maker(record)))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    text = ending.join(lines) + draw(st.sampled_from(["", ending]))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 19)) == 0:
        data += b'{"event_id":"\xff"}\n'  # not UTF-8
    return data


@st.composite
def valid_files(draw) -> tuple[bytes, list[InputRecord]]:
    history = draw(st.lists(records, max_size=8))
    lines = [draw(valid_lines(record)) for record in history]
    for _ in range(draw(st.integers(0, 2))):  # blank lines, anywhere
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "  "])))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    return (ending.join(lines) + ending).encode(), history


def scanned(data: bytes, chunk_bytes: int):
    try:
        return scan_jsonl(data, chunk_bytes=chunk_bytes)
    except Refused:
        return None


@checks
@given(any_files(), st.integers(1, 400))
def test_columns_are_refused_or_equal_to_the_line_by_line_parse(
    data: bytes, chunk_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, data)
        table = columns_of(path)
        expected = line_parse_table(path)
    event("columns" if table is not None else "refused")
    event("valid" if expected is not None else "invalid")
    if table is not None:
        assert expected is not None, "the fast path took a file the line parse refuses"
        assert table.equals(expected)
    # Scanned in many small chunks (in parallel), it takes and gives the same.
    in_chunks = scanned(data, chunk_bytes)
    assert (in_chunks is None) == (table is None)
    assert in_chunks is None or in_chunks.equals(table)


@checks
@given(valid_files(), st.integers(1, 400))
def test_valid_histories_take_the_fast_path_and_give_the_records_columns(
    case, chunk_bytes: int
) -> None:
    data, history = case
    table = scan_jsonl(data)  # raises Refused, naming why, if the fast path balks
    assert table.equals(records_to_columns(history))
    assert scan_jsonl(data, chunk_bytes=chunk_bytes).equals(table)
    assert scan_jsonl(data, INPUT_COLUMNS).equals(records_to_columns(history, INPUT_COLUMNS))


# --- named scenarios ---------------------------------------------------------------------

TICK = '{"event_id":"t1","kind":"TICK","ts":1000}'
HEARTBEAT = '{"event_id":"h1","kind":"HEARTBEAT","ts":2000,"worker_id":"w1","hardware_class":"cpu"}'


def test_float_timestamp_is_left_to_the_line_parse_which_accepts_it(tmp_path) -> None:
    path = write(str(tmp_path), (TICK.replace("1000", "1000.0") + "\n").encode())
    assert columns_of(path) is None
    assert line_parse_table(path)["ts"].to_pylist() == [1000]


def test_unknown_field_is_left_to_the_line_parse_which_names_its_line(tmp_path) -> None:
    path = write(str(tmp_path), f'{TICK}\n{HEARTBEAT[:-1]},"colour":"red"}}\n'.encode())
    assert columns_of(path) is None
    with pytest.raises(InvalidLineError, match="line 2: colour"):
        list(JsonlSource(str(path)).inputs())


def test_blank_lines_and_crlf_endings_are_skipped_as_the_line_parse_skips_them(
    tmp_path,
) -> None:
    path = write(str(tmp_path), f"\r\n{TICK}\r\n  \r\n{HEARTBEAT}\r\n\r\n".encode())
    table = columns_of(path)
    assert table is not None and table["event_id"].to_pylist() == ["t1", "h1"]
    assert table.equals(line_parse_table(path))


def test_escaped_strings_are_decoded_as_pydantic_decodes_them(tmp_path) -> None:
    message = 'say \\"hi\\"\\n\\u00e9\\ud83d\\ude00\\/'
    line = HEARTBEAT[:-1] + f',"message":"{message}","attributes":{{"precision":"fp\\u0031"}}}}'
    path = write(str(tmp_path), (line + "\n").encode())
    table = columns_of(path)
    assert table is not None
    assert table["message"].to_pylist() == ['say "hi"\né😀/']
    assert table["precision"].to_pylist() == ["fp1"]
    assert table.equals(line_parse_table(path))


def test_a_file_that_is_not_utf8_is_left_to_the_line_parse(tmp_path) -> None:
    path = write(str(tmp_path), (HEARTBEAT.replace("w1", "w\xe9") + "\n").encode("latin-1"))
    assert columns_of(path) is None


def test_stdin_is_read_line_by_line_only() -> None:
    assert JsonlSource("-").input_columns() is None


def test_a_missing_file_is_left_to_the_line_parse_which_names_it(tmp_path) -> None:
    assert columns_of(tmp_path / "none.jsonl") is None


# --- whole histories: the simulator, DuckDB, the compiled core, the tuner ------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[InputRecord]]:
    """`faultstream simulate --output`, with an operator's reset and a settings change
    written in among its records."""
    directory = tmp_path_factory.mktemp("simulated")
    raw = directory / "raw.jsonl"
    args = ["simulate", "--workers", "20", "--duration", "40m", "--seed", "5"]
    assert main([*args, "--output", str(raw)]) == 0
    with raw.open(encoding="utf-8") as handle:
        history = list(read_input_records(handle))
    at = len(history) // 3
    ts = history[at].ts
    worker = next(r.worker_id for r in history if isinstance(r, WorkerEvent))
    history[at:at] = [
        Operator(event_id="op-1", ts=ts, action="FORCE_OPEN", circuit_kind="worker",
                 circuit_id=worker, actor="alice"),
        ConfigChanged(event_id="cfg-1", ts=ts, actor="tune",
                      config={"circuits": {"worker": {"failure_threshold": 2}}}),
    ]  # fmt: skip
    path = directory / "history.jsonl"
    with path.open("w", encoding="utf-8") as out:
        write_records(history, out)
    return path, history


def test_simulator_history_takes_the_fast_path(simulated) -> None:
    path, history = simulated
    table = scan_jsonl(path.read_bytes())  # raises Refused, naming why, if it balks
    assert table.num_rows == len(history)
    assert table.equals(records_to_columns(history))


def test_columns_equal_those_of_a_duckdb_file_of_the_same_records(simulated, tmp_path) -> None:
    path, history = simulated
    writer = HistoryWriter(tmp_path / "history.duckdb")
    writer.append_inputs(history, range(len(history)))
    writer.close()
    from_db = DuckDBSource(str(tmp_path / "history.duckdb")).input_columns(columns=REPLAY_COLUMNS)
    from_file = columns_of(path)
    without_hash = [c for c in REPLAY_COLUMNS if c != "event_hash"]
    assert from_file.select(without_hash).equals(from_db.select(without_hash))


def test_window_keeps_the_rows_the_records_path_keeps(simulated) -> None:
    path, history = simulated
    since, until = history[len(history) // 4].ts, history[len(history) // 2].ts
    window = Window(since, until)
    table = JsonlSource(str(path)).input_columns(window, REPLAY_COLUMNS)
    assert table.equals(records_to_columns(window.filter(history)))


def test_compiled_replay_of_the_columns_equals_the_core_over_the_records(simulated) -> None:
    path, history = simulated
    core = FleetCore(CoreSettings())
    expected = [derived_to_json(out) for record in history for out in core.process(record)]
    derived = replay_compiled_table(columns_of(path))
    assert len(expected) > 10
    assert [derived_to_json(out) for out in derived] == expected


def test_tuner_over_the_columns_ranks_as_over_the_records(simulated) -> None:
    path, history = simulated
    policy = TunePolicy(
        grid=parse_grid(["worker.failure_threshold=1,3,6", "worker.recovery_timeout_s=10,90"]),
        min_events=1,
        processes=1,
    )
    source = JsonlSource(str(path))
    table = source.input_columns()
    assert table is not None
    from_columns = tune_round(ColumnarHistory(table, source.inputs), CoreSettings(), policy)
    from_records = tune_round(history, CoreSettings(), policy)

    def ranking(outcome) -> list:
        return [(r.candidate.changes, r.score, r.total) for r in outcome.results]

    assert ranking(from_columns) == ranking(from_records)
    assert from_columns.proposal == from_records.proposal


def test_tune_command_reads_json_lines_as_columns(simulated, monkeypatch, capsys) -> None:
    path, _ = simulated

    def no_records(self, window=None):
        raise AssertionError("tune --input built a record per line")

    monkeypatch.setattr(JsonlSource, "inputs", no_records)
    args = ["tune", "--input", str(path), "--grid", "worker.failure_threshold=2,8"]
    assert main([*args, "--min-events", "1", "--processes", "1"]) == 0
    assert "best" in capsys.readouterr().out


# --- the DuckDB reader the scanner was weighed against (issue #13, bench/) ---------------
# It is kept for bench/bench_replay_sources.py; these hold it to the same verdicts, so the
# comparison there is between two readers that give the same table or refuse.


def load_duckdb_reader():
    path = Path(__file__).resolve().parents[2] / "bench" / "jsonl_duckdb.py"
    spec = importlib.util.spec_from_file_location("bench_jsonl_duckdb", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # for its dataclass
    spec.loader.exec_module(module)
    return module


duckdb_reader = load_duckdb_reader()
fewer_checks = settings(checks, max_examples=max(EXAMPLES // 4, 25))


def duckdb_read(data: bytes, batch_rows: int = 1 << 16, stats=None):
    try:
        table = duckdb_reader.read_jsonl(data, batch_rows=batch_rows, stats=stats)
    except duckdb_reader.Refused:
        return None
    without_hash = [c for c in REPLAY_COLUMNS if c != "event_hash"]  # each has its own
    return table.select(without_hash)


@fewer_checks
@given(any_files(), st.integers(1, 5))
def test_duckdb_reader_refuses_or_gives_the_line_by_line_table(data: bytes, batch_rows) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        expected = line_parse_table(write(tmp, data))
    # In small batches: DuckDB's threads hand rows back out of order, put back in place.
    table = duckdb_read(data, batch_rows)
    event("read" if table is not None else "refused")
    if table is not None:
        assert expected is not None, "the DuckDB reader took a file the line parse refuses"
        assert table.equals(expected.select(table.column_names))


# The control characters DuckDB escapes in capitals (\u001F) and pydantic in small letters.
CAPITAL_ESCAPES = re.compile(r"\\u00(0[b-f]|1[a-f])")


@st.composite
def lines_in_model_order(draw, record: InputRecord) -> str:
    """A record as pydantic writes it, or in model order with nulls and defaults left
    out, or spaced as json.dumps spaces it: the layouts DuckDB reads without pydantic."""
    if draw(st.booleans()):
        return record.model_dump_json()
    data = record.model_dump(mode="json", exclude_none=draw(st.booleans()))
    for field, default in (("attempt", 0), ("attributes", {}), ("received_at", None)):
        if data.get(field, "absent") == default and draw(st.booleans()):
            del data[field]
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return json.dumps(data, ensure_ascii=False, separators=separators)


def pydantic_needed(line: str, record: InputRecord) -> bool:
    """Whether the DuckDB reader leaves this line to pydantic: CONFIG_CHANGED (its free
    config), the escapes DuckDB writes otherwise, spaced attributes beside a backslash."""
    spaced = '"event_id": ' in line
    return (
        isinstance(record, ConfigChanged)
        or bool(CAPITAL_ESCAPES.search(line))
        or (isinstance(record, WorkerEvent) and spaced and "\\" in line and bool(record.attributes))
    )


@fewer_checks
@given(st.lists(records, max_size=12), st.data(), st.integers(1, 5))
def test_duckdb_reader_takes_lines_in_model_order_without_pydantic(history, data, batch_rows):
    lines = [data.draw(lines_in_model_order(record)) for record in history]
    stats = duckdb_reader.ReadStats()
    table = duckdb_read("".join(f"{line}\n" for line in lines).encode(), batch_rows, stats)
    assert table is not None
    assert table.equals(records_to_columns(history, table.column_names))
    assert stats.rows == len(history)
    assert stats.parsed_by_pydantic == sum(map(pydantic_needed, lines, history))


CANONICAL_TICK = Tick(event_id="t1", ts=1000).model_dump_json()


@pytest.mark.parametrize(
    ("line", "valid"),
    [
        (CANONICAL_TICK[:-1] + ",}", False),  # a trailing comma: DuckDB takes it
        (CANONICAL_TICK.replace('"ts":1000', '"ts":NaN'), False),  # DuckDB reads NaN
        (CANONICAL_TICK.replace('"event_id":"t1"', '"event_id":11'), False),  # and casts
        (CANONICAL_TICK[:-1] + ',"worker_id":null}', False),  # not a TICK's field
        (HEARTBEAT[:-1] + ',"attempt":null}', False),  # null where there is a default
        (HEARTBEAT[:-1] + ',"attributes":{"batch_size":32}}', False),
        (CANONICAL_TICK.replace('"ts":1000', '"ts":5,"ts":1000'), True),  # the last one
        (CANONICAL_TICK.replace('"ts":1000', '"ts":"1000"'), True),  # pydantic's lax int
        (HEARTBEAT[:-1] + ',"attributes":{"batch_size":"1","batch_size":"2"}}', True),
        (HEARTBEAT[:-1] + ',"attributes":{"batch\\u005fsize":"1","batch_size":"2"}}', True),
    ],
)
def test_duckdb_reader_leaves_what_duckdb_is_laxer_about_to_pydantic(tmp_path, line, valid):
    data = f"{TICK}\n{line}\n".encode()
    expected = line_parse_table(write(str(tmp_path), data))
    assert (expected is not None) == valid
    table = duckdb_read(data)
    assert (table is not None) == valid
    assert table is None or table.equals(expected.select(table.column_names))


def test_duckdb_reader_reads_the_simulator_history_as_the_scanner_does(simulated) -> None:
    path, _ = simulated
    stats = duckdb_reader.ReadStats()
    table = duckdb_read(path.read_bytes(), stats=stats)
    assert table is not None and stats.parsed_by_pydantic == 1  # the CONFIG_CHANGED line
    assert table.equals(scan_jsonl(path.read_bytes()).select(table.column_names))
