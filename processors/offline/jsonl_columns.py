"""A JSON Lines history straight into Arrow columns (`JsonlSource.input_columns`): the
table a DuckDB file's `input_columns` gives for the same records, without a pydantic model
per line.

A fast path, strictly narrower than the line-by-line parse (`events/jsonl.py`): the numba
scanner (`jsonl_kernel.py`) checks every rule of events/models.py on canonical JSON, and
on anything it cannot prove valid the read returns None and the caller parses line by
line, which reports the exact error (line number and field) or accepts the lax form. The
few CONFIG_CHANGED lines are parsed by pydantic here, for their free-form `config`.
"""

from __future__ import annotations

import codecs
import json
import mmap
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faultstream.events.exceptions import InvalidEventError
from faultstream.events.jsonl import parse_input_line
from faultstream.events.models import ConfigChanged, InputRecord, WorkerEvent
from faultstream.processors.offline import jsonl_kernel as k

from .jsonl_lexer import chunk_bounds, count_lines, hash_strings
from .sources import REPLAY_COLUMNS

# Lines are scanned in parallel in chunks of about this size (a chunk stays in cache
# while its strings are copied out).
_CHUNK_BYTES = 1 << 18
_TYPES = {
    **dict.fromkeys(REPLAY_COLUMNS, pa.string()),
    "ts": pa.int64(),
    "received_at": pa.int64(),
    "attempt": pa.int32(),
    "checkpoint_seq": pa.int64(),
    "event_hash": pa.uint64(),
}


class Refused(Exception):
    """The fast path cannot prove the history valid; the message says why."""


def read_jsonl_columns(path: str, columns: Sequence[str] = REPLAY_COLUMNS) -> pa.Table | None:
    """`columns` (any of `REPLAY_COLUMNS`) of every record of the JSON Lines file, one row
    per non-blank line in order, or None when the line-by-line parse must decide."""
    try:
        return scan_jsonl_file(path, columns)
    except (Refused, OSError):
        return None


def scan_jsonl_file(path: str, columns: Sequence[str] = REPLAY_COLUMNS) -> pa.Table:
    """`read_jsonl_columns`, raising Refused (with the reason) instead of returning None."""
    with open(path, "rb") as handle:
        if not handle.seek(0, 2):
            return scan_jsonl(b"", columns)
        # Populated up front: faulting the pages in one by one costs more than the scan.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        with mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as view:
            buf = np.frombuffer(view, np.uint8)
            try:
                return scan_jsonl(buf, columns)
            except Refused as exc:
                why = str(exc)  # its traceback holds arrays into the map: let it go
            finally:
                del buf  # the map closes only once no array points into it
    raise Refused(why)


def scan_jsonl(
    data: bytes | np.ndarray,
    columns: Sequence[str] = REPLAY_COLUMNS,
    *,
    chunk_bytes: int = _CHUNK_BYTES,
) -> pa.Table:
    """The table of a JSON Lines history held in memory (see `scan_jsonl_file`)."""
    unknown = [c for c in columns if c not in _TYPES]
    if unknown:
        raise ValueError(f"no such input column: {', '.join(unknown)}")
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    bounds = chunk_bounds(buf, chunk_bytes)
    counts = count_lines(buf, _words(buf), bounds)
    first_row = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=first_row[1:])
    n = int(counts.sum())
    # One row per field (a column per record): each column is read back contiguously.
    sizes = np.empty((len(k.SLOTS), n), np.int32)
    enums = np.empty((len(k.ENUMS), n), np.int8)
    ints = np.empty((len(k.INT_FIELDS), n), np.int64)
    given = np.empty(n, np.int64)
    lines = np.empty((2, n), np.int64)
    arenas = _arenas(len(buf), columns)
    why, wide, length = k.parse_chunks(
        buf, bounds, first_row, sizes, enums, ints, given, lines, arenas
    )
    if why.any():
        raise Refused(k.WHY[int(why[np.flatnonzero(why)[0]])])
    if n and (enums[0] == k.BLANK).any():  # the line-by-line path skips blank lines too
        keep = enums[0] != k.BLANK
        sizes = sizes[:, keep]
        enums, ints, given, lines = enums[:, keep], ints[:, keep], given[keep], lines[:, keep]
        n = int(np.count_nonzero(keep))
    if wide.any():  # the line-by-line path reads the file as UTF-8 text
        try:
            codecs.utf_8_decode(buf, "strict", True)
        except UnicodeDecodeError:
            raise Refused("not UTF-8") from None
    kind = enums[0]
    built: dict[str, pa.Array] = {}
    for name in columns:
        if name in k.SLOTS or name == "event_hash":
            slot = k.SLOTS.index("event_id" if name == "event_hash" else name)
            if k.SLOTS[slot] not in built:
                data = k.assemble(arenas[slot], bounds, length[slot])
                built[k.SLOTS[slot]] = _strings(sizes[slot], data)
            if name == "event_hash":
                built[name] = pa.array(event_hashes(built["event_id"]), pa.uint64())
        elif name in k.ENUM_FIELDS:
            codes = enums[k.ENUM_FIELDS.index(name)]
            names = pa.array([str(v) for v in k.ENUMS[k.ENUM_FIELDS.index(name)]], pa.string())
            built[name] = names.take(pa.array(codes, mask=codes < 0))
        elif name == "ts":
            built[name] = pa.array(ints[k.TS])
        elif name == "received_at":
            built[name] = pa.array(ints[k.RECEIVED_AT], mask=(given & k.B_RECEIVED_AT) == 0)
        elif name == "attempt":  # null on control records, as in the DuckDB tables
            built[name] = pa.array(ints[1].astype(np.int32), mask=kind > k.FAILURE)
        elif name == "checkpoint_seq":
            built[name] = pa.array(ints[2], mask=(given & k.B_CHECKPOINT_SEQ) == 0)
        elif name == "config":
            built[name] = _configs(buf, lines, np.flatnonzero(kind == k.CONFIG_CHANGED), n)
    return pa.table([built[c] for c in columns], names=list(columns))


def _arenas(size: int, columns: Sequence[str]) -> tuple[np.ndarray, ...]:
    """Per string slot, where the scan copies its strings: as long as the file (each
    chunk writes into its own span, which its strings cannot outgrow), of which only what
    is written is ever touched; empty for a slot no column needs."""
    wanted = set(columns) | ({"event_id"} if "event_hash" in columns else set())
    try:
        return tuple(_sparse(size) if s in wanted else _NOTHING for s in k.SLOTS)
    except OSError:  # address space refused (strict overcommit)
        raise Refused("no address space for the string arenas") from None


_NOTHING = np.zeros(0, np.uint8)


def _sparse(size: int) -> np.ndarray:
    """Bytes of which only those written are backed by memory, in 4 KiB pages: an
    anonymous map, not numpy's allocation, which asks for 2 MiB pages (every chunk's
    first write would zero one; measured: seconds, in bursts, per read)."""
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), np.uint8)


def _words(buf: np.ndarray) -> np.ndarray:
    """`buf` as uint64 words (its whole words; copied if not 8-byte aligned)."""
    if buf.ctypes.data % 8:
        buf = buf.copy()
    return buf[: len(buf) // 8 * 8].view(np.uint64)


def _strings(size: np.ndarray, data: np.ndarray) -> pa.Array:
    """An Arrow string column from each row's size (-1: null) and the bytes, in order."""
    offsets, bitmap, nulls = k.string_offsets(size)
    if offsets[-1] < 0:
        raise Refused("a string column over 2 GiB")
    validity = pa.py_buffer(bitmap) if nulls else None
    return pa.StringArray.from_buffers(
        len(size), pa.py_buffer(offsets), pa.py_buffer(data), validity, nulls
    )


def _configs(buf: np.ndarray, lines: np.ndarray, rows: np.ndarray, n: int) -> pa.Array:
    """CONFIG_CHANGED's `config` as the history tables hold it (sorted JSON text), from
    pydantic's own parse of those lines (few); null on every other row."""
    texts = []
    for row in rows.tolist():
        start, end = lines[0, row], lines[1, row]
        try:
            record = parse_input_line(bytes(buf[start:end]).decode("utf-8"))
        except (InvalidEventError, UnicodeDecodeError) as exc:
            raise Refused(f"a CONFIG_CHANGED record pydantic refuses ({exc})") from None
        if not isinstance(record, ConfigChanged):
            raise Refused("a CONFIG_CHANGED line that is another record")
        texts.append(json.dumps(record.config, sort_keys=True))
    slot = np.full(n, len(texts), np.int64)  # the null after the texts
    slot[rows] = np.arange(len(texts))
    return pa.array([*texts, None], pa.string()).take(pa.array(slot))


def event_hashes(event_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each event id (equal ids, equal hashes): the encoders' cheap repeat
    finder, every repeat re-checked on the strings (processors/compiled/encode.py)."""
    if isinstance(event_ids, pa.ChunkedArray):
        event_ids = event_ids.combine_chunks()
    _, offsets, data = event_ids.buffers()
    at = event_ids.offset
    offsets = np.frombuffer(offsets, np.int32)[at : at + len(event_ids) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return hash_strings(offsets.astype(np.int64), data)


def in_window(table: pa.Table, since: int | None, until: int | None) -> pa.Table:
    """Only the rows with `since <= received_at < until` (None: open; a row without
    `received_at` counts at its `ts`)."""
    if since is None and until is None:
        return table
    at = table["ts"]
    if "received_at" in table.column_names:
        at = pc.coalesce(table["received_at"], at)
    mask = None
    if since is not None:
        mask = pc.greater_equal(at, since)
    if until is not None:
        below = pc.less(at, until)
        mask = below if mask is None else pc.and_(mask, below)
    return table if mask is None else table.filter(mask)


def records_to_columns(
    records: Iterable[InputRecord],
    columns: Sequence[str] = REPLAY_COLUMNS,
    hashes: Callable[[pa.Array], np.ndarray] | None = None,
) -> pa.Table:
    """The same table built from validated records, one Python row at a time: the
    specification the fast path is tested against. `hashes` makes `event_hash`
    (default: `event_hashes`)."""
    rows = [_row(record) for record in records]
    built = {
        name: pa.array([row.get(name) for row in rows], _TYPES[name])
        for name in columns
        if name != "event_hash"
    }
    if "event_hash" in columns:
        ids = pa.array([row["event_id"] for row in rows], pa.string())
        built["event_hash"] = pa.array((hashes or event_hashes)(ids), pa.uint64())
    return pa.table([built[c] for c in columns], names=list(columns))


def _row(record: InputRecord) -> dict:
    row = record.model_dump(exclude={"attributes", "checkpoint_state"})
    row["kind"] = str(record.kind)
    if isinstance(record, WorkerEvent):
        row["batch_size"] = record.attributes.get("batch_size")
        row["precision"] = record.attributes.get("precision")
    if isinstance(record, ConfigChanged):
        row["config"] = json.dumps(record.config, sort_keys=True)
    return {key: str(v) if hasattr(v, "value") else v for key, v in row.items()}
