"""The alternative to the numba JSON Lines scanner measured for issue #13 (kept for
`bench_replay_sources.py`; replay uses the scanner, processors/offline/jsonl_columns.py):
a JSON Lines history into the same Arrow columns with DuckDB, with exactly the verdicts
of the line-by-line parse.

DuckDB parses every line (`json_transform`, in parallel), and a line is taken as it
parsed only when it is exactly the line of those values in a known layout (pydantic's
`model_dump_json`: every field in model order, no spaces, as `write_records`,
`simulate --output` and the processor write; or that with fields left out, or spaced as
`json.dumps` spaces) and the values pass every rule of events/models.py, checked as SQL
over the columns. Being byte for byte such a line rules out what DuckDB is laxer about
than pydantic (unknown, repeated or missing keys, trailing commas, NaN, numbers as
strings and strings as numbers, `1.0` for `1`).

Every other non-blank line (another layout, CONFIG_CHANGED with its free-form `config`, a
line that breaks a rule) is parsed by pydantic itself (`parse_input_line`), and its row
built from the record. If pydantic refuses one, or DuckDB cannot parse one, the read is
refused (Refused) and the caller would parse the whole file line by line. So the table
is always the one the line-by-line parse gives, or none.
"""

from __future__ import annotations

import contextlib
import json
import mmap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from faultstream.events.exceptions import InvalidEventError
from faultstream.events.jsonl import parse_input_line
from faultstream.events.models import (
    MAX_CHECKPOINT_BYTES,
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
)
from faultstream.processors.offline.jsonl_columns import records_to_columns as scanner_rows
from faultstream.processors.offline.sources import REPLAY_COLUMNS

_TYPES = {
    **dict.fromkeys(REPLAY_COLUMNS, pa.string()),
    "ts": pa.int64(),
    "received_at": pa.int64(),
    "attempt": pa.int32(),
    "checkpoint_seq": pa.int64(),
    "event_hash": pa.uint64(),
}
# Lines handed to DuckDB per Arrow chunk (its threads take chunks in turn).
_BATCH_ROWS = 1 << 16
# Newlines are looked for in slices of this many bytes (small temporaries, in cache).
_SPLIT_BYTES = 1 << 22
# Lines pydantic parses at a time (their records are turned into rows and let go).
_PARSE_ROWS = 1 << 15


class Refused(Exception):
    """The file is not read as columns; the message says why (the line-by-line parse
    gives the exact error, or accepts it)."""


@dataclass
class ReadStats:
    """What a read did: rows read, and how many of them pydantic parsed."""

    rows: int = 0
    parsed_by_pydantic: int = 0


def read_jsonl_file(
    path: str, columns: Sequence[str] = REPLAY_COLUMNS, stats: ReadStats | None = None
) -> pa.Table:
    """`columns` (any of `REPLAY_COLUMNS`) of every record of the JSON Lines file, one row
    per non-blank line in order; Refused (with the reason) when the line-by-line parse
    must decide."""
    with open(path, "rb") as handle:
        if not handle.seek(0, 2):
            return read_jsonl(b"", columns, stats=stats)
        # Populated up front: faulting the pages in one by one costs more than the read.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        view = mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    try:
        return read_jsonl(view, columns, stats=stats)
    finally:
        with contextlib.suppress(BufferError):  # a traceback holds an array into it
            view.close()  # (then it closes when that is freed)


def read_jsonl(
    data: bytes | mmap.mmap,
    columns: Sequence[str] = REPLAY_COLUMNS,
    *,
    batch_rows: int = _BATCH_ROWS,
    stats: ReadStats | None = None,
) -> pa.Table:
    """The table of a JSON Lines history held in memory (see `read_jsonl_file`)."""
    unknown = [c for c in columns if c not in _TYPES]
    if unknown:
        raise ValueError(f"no such input column: {', '.join(unknown)}")
    buf = np.frombuffer(data, np.uint8)
    starts, ends = _lines(buf)
    lines = _line_array(data, starts, ends)
    blank = _blank_lines(buf, starts, ends)
    if len(blank):  # the line-by-line parse skips them too
        keep = np.ones(len(starts), bool)
        keep[blank] = False
        starts, ends, lines = starts[keep], ends[keep], lines.filter(pa.array(keep))
    stats = stats if stats is not None else ReadStats()
    stats.rows = len(starts)
    if not len(starts):
        return records_to_columns([], columns)
    table = _in_order(_parsed_by_duckdb(lines, columns, batch_rows))
    trusted = table.column("trusted").to_numpy(zero_copy_only=False)
    table = table.drop_columns(["trusted", "row"]).cast(_schema(columns))
    doubtful = np.flatnonzero(~trusted)
    stats.parsed_by_pydantic = len(doubtful)
    if not len(doubtful):
        return table
    parsed = _parsed_by_pydantic(buf, starts[doubtful], ends[doubtful], columns)
    return _merged(table, parsed, doubtful)


def _lines(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each line starts, and ends (after its newline): bytes-wise, as `--input`
    reads the file (only `\\n` ends a line)."""
    found = [
        np.flatnonzero(buf[at : at + _SPLIT_BYTES] == 10) + (at + 1)
        for at in range(0, len(buf), _SPLIT_BYTES)
    ]
    ends = np.concatenate([*found, np.zeros(0, np.int64)]).astype(np.int64)
    if len(buf) and buf[-1] != 10:  # the last line has no newline
        ends = np.append(ends, len(buf))
    starts = np.zeros(len(ends), np.int64)
    starts[1:] = ends[:-1]
    return starts, ends


def _line_array(data: bytes | mmap.mmap, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """The lines (newline included) as Arrow strings over the bytes themselves. Refused
    if the file is not UTF-8, as the line-by-line parse refuses such a line."""
    offsets = np.append(starts, ends[-1] if len(ends) else 0)
    lines = pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:
        raise Refused("not UTF-8") from None
    return lines


def _blank_lines(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The blank lines (`bytes.strip`, as the line-by-line parse finds them): only a line
    that does not start with `{` can be one."""
    maybe = np.flatnonzero(buf[starts] != ord("{")) if len(starts) else starts
    blank = [i for i in maybe.tolist() if not buf[starts[i] : ends[i]].tobytes().strip()]
    return np.array(blank, np.int64)


def _parsed_by_duckdb(lines: pa.Array, columns: Sequence[str], batch_rows: int) -> pa.Table:
    # Each line with its row number: DuckDB's threads may hand the rows back in any order.
    rows = pa.array(np.arange(len(lines), dtype=np.int64))
    step = max(batch_rows, 1)
    source = pa.Table.from_batches(
        [
            pa.record_batch([lines.slice(at, step), rows.slice(at, step)], names=["line", "row"])
            for at in range(0, len(lines), step)
        ]
    )
    con = duckdb.connect()
    try:
        con.register("lines", source)
        return con.sql(_query(columns)).to_arrow_table()
    except duckdb.Error as exc:  # a line that is not JSON, to DuckDB
        why = str(exc).splitlines()[0]
        raise Refused(f"DuckDB cannot parse a line ({why})") from None
    finally:
        con.close()


def _in_order(table: pa.Table) -> pa.Table:
    """The rows by `row`: DuckDB's threads hand back runs of consecutive rows, put back
    in place by slicing (nothing copied)."""
    row = table.column("row").to_numpy()
    breaks = np.flatnonzero(np.diff(row) != 1) + 1
    if not len(breaks):
        return table
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.append(starts, len(row)))
    order = np.argsort(row[starts], kind="stable")
    expected = np.cumsum(np.concatenate([[0], lengths[order][:-1]]))
    if not (row[starts][order] == expected).all():  # not a permutation of runs: sort
        return table.take(pa.array(np.argsort(row, kind="stable")))
    return pa.concat_tables([table.slice(int(starts[i]), int(lengths[i])) for i in order])


def _schema(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([(c, _TYPES[c]) for c in columns])


def _parsed_by_pydantic(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, columns: Sequence[str]
) -> pa.Table:
    """The rows of these lines from pydantic's own parse; Refused at the first line it
    refuses (the line-by-line parse will name it)."""
    tables = []
    for at in range(0, len(starts), _PARSE_ROWS):
        records = []
        for start, end in zip(starts[at : at + _PARSE_ROWS], ends[at : at + _PARSE_ROWS],
                              strict=True):  # fmt: skip
            line = buf[start:end].tobytes()
            if b"\r" in line.rstrip(b" \t\r\n"):
                # `--input` reads bytes, where only \n ends a line; text reading (and
                # other tools) would also end one at this \r: too ambiguous to take.
                raise Refused("a carriage return inside a line")
            try:
                records.append(parse_input_line(line))
            except InvalidEventError as exc:
                raise Refused(f"a line pydantic refuses ({exc})") from None
        try:
            tables.append(records_to_columns(records, columns))
        except (pa.ArrowInvalid, OverflowError) as exc:  # e.g. an attempt past int32
            raise Refused(f"a value the columns cannot hold ({exc})") from None
    return pa.concat_tables(tables)


def _merged(table: pa.Table, parsed: pa.Table, rows: np.ndarray) -> pa.Table:
    """`table` with its `rows` replaced by those of `parsed`, in order."""
    if len(rows) <= 64:  # a few: by slicing, nothing copied
        pieces, start = [], 0
        for i, row in enumerate(rows.tolist()):
            if row > start:
                pieces.append(table.slice(start, row - start))
            pieces.append(parsed.slice(i, 1))
            start = row + 1
        pieces.append(table.slice(start))
        return pa.concat_tables(pieces)
    order = np.arange(table.num_rows)
    order[rows] = table.num_rows + np.arange(len(rows))
    return pa.concat_tables([table, parsed]).take(pa.array(order)).combine_chunks()


# --- the query ------------------------------------------------------------------------

_WORKER_KINDS = tuple(str(k) for k in EventKind)
_NEEDS_TASK_TYPE = ("TASK_STARTED", "SUCCESS", "FAILURE")  # WorkerEvent._kind_rules
# Length bounds in characters (events/models.py): (1, 128) unless named here.
_BOUNDS = {"hardware_class": (1, 64), "message": (0, 4096)}
_INT32_MAX = 2**31 - 1
# How each input field is written: JSON text of a string, an integer, a JSON object (the
# attributes, or CONFIG_CHANGED's config, never taken from DuckDB), base64 bytes.
_STRING, _INT, _OBJECT, _BASE64 = "string", "int", "object", "base64"
_FIELD_TYPES = {
    **dict.fromkeys(
        ["event_id", "kind", "worker_id", "hardware_class", "task_id", "task_type",
         "failure_type", "message", "recovery_command_id", "action", "circuit_kind",
         "circuit_id", "actor"],
        _STRING,
    ),
    **dict.fromkeys(["ts", "attempt", "checkpoint_seq", "received_at"], _INT),
    "attributes": _OBJECT,
    "config": _OBJECT,
    "checkpoint_state": _BASE64,
}  # fmt: skip
_MODELS = (WorkerEvent, Tick, Operator)  # ConfigChanged: always pydantic's (its config)
_FIELDS = tuple(dict.fromkeys(f for m in (*_MODELS, ConfigChanged) for f in m.model_fields))
missing = [f for f in _FIELDS if f not in _FIELD_TYPES]
if missing:  # a field added to events/models.py must be read here too
    raise ImportError(f"jsonl_duckdb does not know how to read {', '.join(missing)}")
_SQL_TYPES = {_STRING: "VARCHAR", _INT: "BIGINT", _OBJECT: "JSON", _BASE64: "VARCHAR"}
# Padded base64 in one alphabet, with zero trailing bits: what pydantic decodes (and
# writes) for `checkpoint_state` (val_json_bytes="base64").
_B64 = "|".join(
    f"(?:[A-Za-z0-9{a}]{{4}})*(?:[A-Za-z0-9{a}]{{2}}[AEIMQUYcgkosw048]=|[A-Za-z0-9{a}][AQgw]==)?"
    for a in ("+/", "_-")
)


def _one_of(column: str, values: Iterable[object]) -> str:
    """SQL: is `column` one of `values`? (Not `IN`, which DuckDB turns into a join.)"""
    listed = ", ".join(f"'{v}'" for v in values)
    return f"list_contains([{listed}], {column})"


# The layouts a line is taken in without pydantic, each tried only on the lines the ones
# before it did not match: (between fields, between key and value, whether a field with a
# default may be left out). pydantic's own (`model_dump_json`: every field, in model order,
# compact); the same with fields left out (`exclude_none`, files older than a field, lines
# written by hand); `json.dumps`'s spacing of that.
_LAYOUTS = ((",", ":", False), (",", ":", True), (", ", ": ", True))
# Fields that may be null (their default is None); those with another default (attempt,
# attributes) may be left out but not null; the rest must be given (and `kind` always is,
# as it picks the model).
_NULLABLE = {
    field
    for model in _MODELS
    for field, info in model.model_fields.items()
    if not info.is_required() and info.default is None and info.default_factory is None
}


def _required(model: type, field: str) -> bool:
    return model.model_fields[field].is_required() or field == "kind"


def _text(field: str, escaped: bool, spaced: bool = False) -> list[str]:
    """SQL for the JSON text of `field`'s value (null for NULL where the field may be
    null), as arguments of `concat`, which skips NULLs (so no string is built per field)."""
    kind = _FIELD_TYPES[field]
    null = [f"CASE WHEN {field} IS NULL THEN 'null' END"] if field in _NULLABLE else []
    if kind == _INT:
        return [field, *null]
    if kind == _OBJECT and spaced and not escaped:
        # DuckDB writes the object compact; without a backslash every quote in it is
        # structural, so its string-to-string members can be spaced as json.dumps does.
        spaced_text = f"""replace(replace({field}::VARCHAR, '":"', '": "'), '","', '", "')"""
        return [spaced_text]
    if kind == _OBJECT:
        return [f"{field}::VARCHAR"]
    if escaped:  # yyjson's escapes: a line whose escapes pydantic writes otherwise does
        # not match, and goes to pydantic
        return [f"to_json({field})::VARCHAR", *null]
    # No backslash in the line: no escape in any string, so its text is the string quoted.
    if not null:
        return ["'\"'", field, "'\"'"]
    quote = f"""CASE WHEN {field} IS NOT NULL THEN '"' END"""
    return [f"""CASE WHEN {field} IS NULL THEN 'null' ELSE '"' END""", field, quote]


def _line(model: type, escaped: bool, layout: tuple[str, str, bool]) -> str:
    """SQL for the line of the row's values in `layout` (`_LAYOUTS`); with fields left
    out, a field is written when its key is in the line (a wrong guess only makes the
    line not match)."""
    between, colon, omissions = layout
    parts, first = [], True
    for field in model.model_fields:
        key = f'"{field}"{colon}'
        value = _text(field, escaped, spaced=colon != ":")
        member = [f"'{'{' if first else between}{key}'", *value]
        if omissions and not _required(model, field):
            member = [f"CASE WHEN contains(line, '{key}') THEN concat({', '.join(member)}) END"]
        elif first and not _required(model, field):
            raise ImportError(f"jsonl_duckdb: {model.__name__} may begin without {field}")
        parts += member
        first = False
    return f"concat({', '.join(parts)}, '}}')"


def _length_ok(field: str, nullable: bool = True) -> str:
    low, high = _BOUNDS.get(field, (1, 128))
    # Bytes first (cheap): a string of at most `high` bytes has at most `high` characters.
    size = f"strlen({field})"
    ok = f"({size} BETWEEN {low} AND {high} OR ({size} > {high} AND length({field}) <= {high}))"
    return f"({field} IS NULL OR {ok})" if nullable else f"({field} IS NOT NULL AND {ok})"


def _millis(field: str, nullable: bool) -> str:
    ok = f"{field} BETWEEN 0 AND {MAX_MILLIS}"
    return f"({field} IS NULL OR {ok})" if nullable else f"({ok})"


_B64_CHARS = 4 * -(-MAX_CHECKPOINT_BYTES // 3)
_RULES = {
    WorkerEvent: [
        _length_ok("event_id", False), _millis("ts", False), _millis("received_at", True),
        _length_ok("worker_id", False), _length_ok("hardware_class", False),
        _length_ok("task_id"), _length_ok("task_type"), _length_ok("message"),
        _length_ok("recovery_command_id"),
        # left out: 0; the column is int32 (the model's int64 is left to the line parse)
        f"(attempt IS NULL OR attempt BETWEEN 0 AND {_INT32_MAX})",
        f"(failure_type IS NULL OR {_one_of('failure_type', FailureType)})",
        "(checkpoint_seq IS NULL OR checkpoint_seq >= 0)",
        # WorkerEvent._kind_rules
        "(kind = 'HEARTBEAT' OR task_id IS NOT NULL)",
        f"(NOT {_one_of('kind', _NEEDS_TASK_TYPE)} OR task_type IS NOT NULL)",
        "(failure_type IS NULL OR kind = 'FAILURE')",
        "(kind = 'CHECKPOINT' OR (checkpoint_seq IS NULL AND checkpoint_state IS NULL))",
        "(kind <> 'CHECKPOINT' OR checkpoint_seq IS NOT NULL)",
        f"(checkpoint_state IS NULL OR (strlen(checkpoint_state) <= {_B64_CHARS}"
        f" AND regexp_full_match(checkpoint_state, '{_B64}')"
        f" AND strlen(checkpoint_state) // 4 * 3 - (CASE WHEN ends_with(checkpoint_state, '==')"
        f" THEN 2 WHEN ends_with(checkpoint_state, '=') THEN 1 ELSE 0 END)"
        f" <= {MAX_CHECKPOINT_BYTES}))",
        # dict[str, str]: string values; a repeated key is refused (pydantic keeps the
        # last, DuckDB's `json_extract_string` the first)
        "(CASE WHEN attributes IS NULL OR strlen(attributes) = 2 THEN true"  # {}: no parse
        " ELSE list_distinct(json_type(attributes, '$.*')) = ['VARCHAR']"
        " AND list_unique(json_keys(attributes)) = len(json_keys(attributes)) END)",
    ],
    Tick: [_length_ok("event_id", False), _millis("ts", False), _millis("received_at", True)],
    Operator: [
        _length_ok("event_id", False), _millis("ts", False), _millis("received_at", True),
        _one_of("action", OperatorAction),
        _one_of("circuit_kind", CircuitKind),
        _length_ok("circuit_id", False), _length_ok("actor", False),
    ],
}  # fmt: skip
_KINDS_OF = {WorkerEvent: _WORKER_KINDS, Tick: ("TICK",), Operator: ("OPERATOR",)}


def _trusted() -> str:
    """SQL: is the row's line one of a valid record of its kind, in one of `_LAYOUTS`?"""
    cases = []
    for model in _MODELS:
        layouts = " ".join(
            f"WHEN starts_with(line, CASE WHEN escaped THEN {_line(model, True, layout)}"
            f" ELSE {_line(model, False, layout)} END) THEN true"
            for layout in _LAYOUTS
        )
        checks = " AND ".join([f"CASE {layouts} ELSE false END", *_RULES[model]])
        cases.append(f"WHEN {_one_of('kind', _KINDS_OF[model])} THEN {checks}")
    return f"coalesce(CASE {' '.join(cases)} ELSE false END, false)"


def _output(column: str) -> str:
    if column == "event_hash":
        return "hash(event_id)"
    if column == "config":
        return "NULL::VARCHAR"  # CONFIG_CHANGED rows are pydantic's
    if column == "attempt":  # null on control records, as in the DuckDB tables
        worker = _one_of("kind", _WORKER_KINDS)
        return f"CASE WHEN {worker} THEN coalesce(TRY_CAST(attempt AS INTEGER), 0) END"
    if column in ("batch_size", "precision"):
        value = f"json_extract_string(attributes, '$.{column}')"
        return f"CASE WHEN strlen(attributes) > 2 THEN {value} END"  # not {}
    return column


def _query(columns: Sequence[str]) -> str:
    structure = json.dumps({f: _SQL_TYPES[_FIELD_TYPES[f]] for f in _FIELDS}, separators=(",", ":"))
    select = ", ".join(f"{_output(c)} AS {c}" for c in columns)
    return (
        "WITH parsed AS (SELECT line, row, contains(line, '\\') AS escaped,"
        f" unnest(json_transform(line, '{structure}')) FROM lines)"
        f" SELECT {select}, {_trusted()} AS trusted, row FROM parsed"
    )


# --- the rows of the records pydantic parsed ----------------------------------------------


def event_hashes(event_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each event id (equal ids, equal hashes): DuckDB's `hash`, as the
    DuckDB sources and the query compute it (the scanner has its own)."""
    ids = pa.table({"event_id": event_ids})
    con = duckdb.connect()
    try:
        con.register("ids", ids)
        hashes = con.sql("SELECT hash(event_id) AS h FROM ids").to_arrow_table()["h"]
    finally:
        con.close()
    return hashes.to_numpy()


def records_to_columns(
    records: Iterable[InputRecord], columns: Sequence[str] = REPLAY_COLUMNS
) -> pa.Table:
    """The same table built from validated records (the scanner's specification, with
    this module's event hash): the rows of the lines pydantic parses."""
    return scanner_rows(records, columns, hashes=event_hashes).cast(_schema(columns))
