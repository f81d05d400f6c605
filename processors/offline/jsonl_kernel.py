"""The numba scanner behind `jsonl_columns.py`: JSON Lines bytes to per-row strings,
codes and integers, validating every line against the input models' rules
(events/models.py) as it goes (the JSON pieces are in `jsonl_lexer.py`).

It accepts a strict subset of what `parse_input_line` accepts: canonical JSON only
(integers as plain digits, strings with valid escapes, keys spelled plainly, no duplicate
keys), and anything it is not sure of stops the scan with a reason. The caller then takes
the line-by-line path, which reports the exact error or accepts the lax form.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from faultstream.events.models import (
    MAX_CHECKPOINT_BYTES,
    MAX_MILLIS,
    CircuitKind,
    ConfigChanged,
    EventKind,
    FailureType,
    Operator,
    OperatorAction,
    Tick,
    WorkerEvent,
)

from .jsonl_lexer import (
    canonical_base64,
    decode_string,
    is_blank,
    is_null,
    line_end,
    match_name,
    plain_string_end,
    read_int,
    scan_string,
    skip_value,
    skip_ws,
)

# Top-level fields of every input model, numbered by their bit in a row's `present`/`nulls`
# masks: derived from models.py, so a field added there cannot be missed here.
FIELDS = tuple(
    dict.fromkeys(f for m in (WorkerEvent, Tick, Operator, ConfigChanged) for f in m.model_fields)
)
_BIT = {name: 1 << i for i, name in enumerate(FIELDS)}
N_FIELDS = len(FIELDS)
# String fields whose text the table holds (or whose length is checked), by slot; the
# attributes' `batch_size` and `precision` take the two slots after them.
SLOTS = (
    "event_id",
    "worker_id",
    "hardware_class",
    "task_id",
    "task_type",
    "message",
    "circuit_id",
    "actor",
    "batch_size",
    "precision",
    "recovery_command_id",
)
BATCH_SIZE, PRECISION = SLOTS.index("batch_size"), SLOTS.index("precision")
# Enumerations, by code: the value's index in its group.
KINDS = (*EventKind, "TICK", "OPERATOR", "CONFIG_CHANGED")
ENUMS = (KINDS, tuple(FailureType), tuple(OperatorAction), tuple(CircuitKind))
ENUM_FIELDS = ("kind", "failure_type", "action", "circuit_kind")
INT_FIELDS = ("ts", "attempt", "checkpoint_seq", "received_at")
TS, ATTEMPT, RECEIVED_AT = 0, 1, 3  # rows of `ints`
HEARTBEAT, TASK_STARTED, CHECKPOINT, SUCCESS, FAILURE, TICK, OPERATOR, CONFIG_CHANGED = range(8)

# Field types.
_STR, _ENUM, _INT, _ATTRS, _B64, _ANY = range(6)
_TYPE = {
    **dict.fromkeys(SLOTS, _STR),
    **dict.fromkeys(ENUM_FIELDS, _ENUM),
    **dict.fromkeys(INT_FIELDS, _INT),
    "attributes": _ATTRS,
    "checkpoint_state": _B64,
    "config": _ANY,
}
# Length bounds in characters (events/models.py), -1 for none.
_BOUNDS = {"hardware_class": (1, 64), "message": (0, 4096)}
_INT32_MAX = 2**31 - 1

F_TYPE = np.array([_TYPE[f] for f in FIELDS], np.int64)
F_ARG = np.array(  # the slot, enum group or int column of each field
    [
        SLOTS.index(f) if f in SLOTS else ENUM_FIELDS.index(f) if f in ENUM_FIELDS else
        INT_FIELDS.index(f) if f in INT_FIELDS else -1
        for f in FIELDS
    ],
    np.int64,
)  # fmt: skip
F_MIN = np.array([_BOUNDS.get(f, (1, 128))[0] for f in FIELDS], np.int64)
F_MAX = np.array([_BOUNDS.get(f, (1, 128))[1] for f in FIELDS], np.int64)
F_MIN[FIELDS.index("attributes")] = F_MAX[FIELDS.index("attributes")] = -1


def _packed(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [name.encode() for name in names]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


NAME_BYTES, NAME_OFFSETS = _packed(FIELDS)
ATTR_BYTES, ATTR_OFFSETS = _packed(("batch_size", "precision"))
ENUM_BYTES, ENUM_OFFSETS = _packed(tuple(str(v) for group in ENUMS for v in group))
ENUM_GROUPS = np.cumsum([0, *(len(g) for g in ENUMS)]).astype(np.int64)


def _bits(*names: str) -> int:
    return sum(_BIT[name] for name in names)


# The fields each kind of record may hold, and those it must give a value (not null).
_WORKER_FIELDS = _bits(*WorkerEvent.model_fields)
_TICK_FIELDS = _bits("event_id", "kind", "ts")
_OPERATOR_FIELDS = _TICK_FIELDS | _bits("action", "circuit_kind", "circuit_id", "actor")
_CONFIG_FIELDS = _TICK_FIELDS | _bits("config", "actor")
_ANY_KIND = _bits("received_at")  # optional on every kind
ALLOWED = np.array(
    [_WORKER_FIELDS] * 5 + [_TICK_FIELDS, _OPERATOR_FIELDS, _CONFIG_FIELDS]
) | np.int64(_ANY_KIND)
REQUIRED = np.array(
    [_TICK_FIELDS | _bits("worker_id", "hardware_class")] * 5
    + [_TICK_FIELDS, _OPERATOR_FIELDS, _CONFIG_FIELDS]
)
# Null is refused for these whatever the kind (the per-kind rules come on top).
NEVER_NULL = (
    _OPERATOR_FIELDS
    | _CONFIG_FIELDS
    | _bits("worker_id", "hardware_class", "attempt", "attributes")
)
B_TASK_ID, B_TASK_TYPE = _BIT["task_id"], _BIT["task_type"]
B_FAILURE_TYPE = _BIT["failure_type"]
B_CHECKPOINT = _BIT["checkpoint_seq"] | _BIT["checkpoint_state"]
B_CHECKPOINT_SEQ = _BIT["checkpoint_seq"]
B_RECEIVED_AT = _BIT["received_at"]
MAX_B64 = MAX_CHECKPOINT_BYTES

# Why a scan stopped (0: it did not).
WHY = (
    "",
    "not canonical JSON",
    "an unknown or repeated field",
    "a value of an unexpected type or form",
    "a string out of bounds",
    "an unknown enumeration value",
    "a missing, null or misplaced field",
    "a checkpoint_state that is not canonical base64",
)
SYNTAX, FIELD, VALUE, LENGTH, ENUM, RULE, BASE64 = range(1, 8)


@njit(cache=True)
def _attributes(buf, p, end, row, sizes, spans):
    """Past a string-to-string object, noting `batch_size` and `precision`; -1 if refused."""
    p = skip_ws(buf, p + 1, end)
    if p < end and buf[p] == 125:
        return p + 1, False
    wide = False
    while True:
        if p >= end or buf[p] != 34:
            return -1, False
        key, size, _, esc, w = scan_string(buf, p, end)
        if key < 0:
            return -1, False
        if not esc:
            slot = match_name(buf, p + 1, size, ATTR_BYTES, ATTR_OFFSETS, 0, 2)
        else:  # rare: compare its decoded form
            plain = np.empty(size, np.uint8)
            decode_string(buf, p + 1, plain, 0)
            slot = match_name(plain, 0, size, ATTR_BYTES, ATTR_OFFSETS, 0, 2)
        p = skip_ws(buf, key, end)
        if p >= end or buf[p] != 58:
            return -1, False
        p = skip_ws(buf, p + 1, end)
        if p >= end or buf[p] != 34:  # values are strings: null, numbers... are refused
            return -1, False
        q = plain_string_end(buf, p, end)
        if q >= 0:
            after, size, esc, w2 = q + 1, q - p - 1, False, False
        else:
            after, size, _, esc, w2 = scan_string(buf, p, end)
        if after < 0:
            return -1, False
        wide = wide or w or w2
        if slot >= 0:
            s = BATCH_SIZE + slot
            if sizes[s, row] >= 0:  # repeated: which one pydantic keeps is not ours to say
                return -1, False
            sizes[s, row] = size
            spans[0, s] = p + 1
            spans[1, s] = esc
        p = skip_ws(buf, after, end)
        if p < end and buf[p] == 44:
            p = skip_ws(buf, p + 1, end)
            continue
        if p < end and buf[p] == 125:
            return p + 1, wide
        return -1, False


@njit(cache=True)
def parse_line(buf, p, end, row, sizes, spans, enums, ints, given):
    """One line's object from `p` (at `{`) into row `row`: (position after it, why it was
    refused or 0, whether a string held non-ASCII bytes)."""
    for s in range(sizes.shape[0]):
        sizes[s, row] = -1
    for e in range(enums.shape[0]):
        enums[e, row] = -1
    for i in range(ints.shape[0]):
        ints[i, row] = 0
    present = 0
    nulls = 0
    wide = False
    hint = 0
    p = skip_ws(buf, p + 1, end)
    if p < end and buf[p] == 125:
        return p + 1, RULE, wide
    while True:
        if p >= end or buf[p] != 34:
            return -1, SYNTAX, wide
        f = -1
        if hint < N_FIELDS:  # writers keep one field order: try the next one first
            size = NAME_OFFSETS[hint + 1] - NAME_OFFSETS[hint]
            if p + size + 1 < end and buf[p + size + 1] == 34:
                f = match_name(buf, p + 1, size, NAME_BYTES, NAME_OFFSETS, hint, hint + 1)
            key = p + size + 2
        if f < 0:
            key, size, _, esc, _ = scan_string(buf, p, end)
            if key < 0 or esc:
                return -1, FIELD, wide
            f = match_name(buf, p + 1, size, NAME_BYTES, NAME_OFFSETS, 0, N_FIELDS)
        hint = f + 1
        if f < 0 or present & (1 << f):
            return -1, FIELD, wide
        present |= 1 << f
        p = skip_ws(buf, key, end)
        if p >= end or buf[p] != 58:
            return -1, SYNTAX, wide
        p = skip_ws(buf, p + 1, end)
        if p >= end:
            return -1, SYNTAX, wide
        ftype, arg = F_TYPE[f], F_ARG[f]
        if is_null(buf, p, end):
            nulls |= 1 << f
            p += 4
        elif ftype == _INT:
            p, value = read_int(buf, p, end)
            if p < 0 or (arg == ATTEMPT and value > _INT32_MAX):
                return -1, VALUE, wide
            if (arg == TS or arg == RECEIVED_AT) and value > MAX_MILLIS:  # noqa: SIM109 (numba)
                return -1, VALUE, wide
            ints[arg, row] = value
        elif ftype == _ATTRS:
            if buf[p] != 123:
                return -1, VALUE, wide
            p, w = _attributes(buf, p, end, row, sizes, spans)
            if p < 0:
                return -1, VALUE, wide
            wide = wide or w
        elif ftype == _ANY:
            p = skip_value(buf, p, end)
            if p < 0:
                return -1, SYNTAX, wide
        else:
            if buf[p] != 34:
                return -1, VALUE, wide
            q = plain_string_end(buf, p, end)
            if q >= 0:
                after, size, chars, esc, w = q + 1, q - p - 1, q - p - 1, False, False
            else:
                after, size, chars, esc, w = scan_string(buf, p, end)
            if after < 0:
                return -1, SYNTAX, wide
            wide = wide or w
            if ftype == _STR:
                if chars < F_MIN[f] or chars > F_MAX[f]:
                    return -1, LENGTH, wide
                sizes[arg, row] = size
                spans[0, arg] = p + 1
                spans[1, arg] = esc
            elif ftype == _ENUM:
                first, last = ENUM_GROUPS[arg], ENUM_GROUPS[arg + 1]
                code = -1
                if not esc:
                    code = match_name(buf, p + 1, size, ENUM_BYTES, ENUM_OFFSETS, first, last)
                if code < 0:
                    return -1, ENUM, wide
                enums[arg, row] = code - first
            elif esc or not canonical_base64(buf, p + 1, size, MAX_B64):
                return -1, BASE64, wide
            p = after
        p = skip_ws(buf, p, end)
        if p < end and buf[p] == 44:
            p = skip_ws(buf, p + 1, end)
            continue
        if p < end and buf[p] == 125:
            p += 1
            break
        return -1, SYNTAX, wide
    given[row] = present & ~nulls  # the fields holding a value
    return p, _check_rules(present, nulls, enums[0, row]), wide


@njit(cache=True)
def _check_rules(present, nulls, kind):
    """The models' required, forbidden and per-kind rules (WorkerEvent._kind_rules)."""
    if kind < 0:
        return RULE
    given = present & ~nulls
    if present & ~ALLOWED[kind] or (given & REQUIRED[kind]) != REQUIRED[kind]:
        return RULE
    if nulls & NEVER_NULL:
        return RULE
    if kind > FAILURE:
        return 0
    if kind != HEARTBEAT and not given & B_TASK_ID:
        return RULE
    if kind in (TASK_STARTED, SUCCESS, FAILURE) and not given & B_TASK_TYPE:
        return RULE
    if given & B_FAILURE_TYPE and kind != FAILURE:
        return RULE
    if kind != CHECKPOINT and given & B_CHECKPOINT:
        return RULE
    if kind == CHECKPOINT and not given & B_CHECKPOINT_SEQ:
        return RULE
    return 0


BLANK = -2  # `kind` of the row of a blank line (dropped afterwards)


@njit(cache=True, parallel=True)
def parse_chunks(buf, bounds, first_row, sizes, enums, ints, given, lines, arenas):
    """Every line into its row (chunks in parallel; a blank line's row has kind BLANK):
    per chunk, why it stopped (0: it did not), whether it saw non-ASCII bytes, and for each
    slot with an arena (one as long as `buf`; empty: not wanted), where the chunk's
    strings begin there, and how many bytes they take. Strings are copied (decoded) as
    they are scanned, each chunk into its own span of each arena, while in cache."""
    n = len(bounds) - 1
    why = np.zeros(n, np.int64)
    wide = np.zeros(n, np.bool_)
    stop = np.zeros(1, np.bool_)  # set by the first chunk that refuses: the others give up
    length = np.zeros((len(arenas), n), np.int64)
    for k in prange(n):
        p, end = bounds[k], bounds[k + 1]
        row = first_row[k]
        cursor = np.full(len(arenas), p, np.int64)
        wanted = np.array([len(arena) > 0 for arena in arenas])
        spans = np.empty((2, len(arenas)), np.int64)  # a line's strings: start, escaped
        while p < end and not stop[0]:
            q = skip_ws(buf, p, end)
            if q >= end or buf[q] != 123:
                stop_at = line_end(buf, q, end)
                if not is_blank(buf, q, stop_at):
                    why[k] = SYNTAX
                    stop[0] = True
                    break
                enums[0, row] = BLANK
                for s in range(sizes.shape[0]):
                    sizes[s, row] = -1
                row += 1
                p = stop_at + 1
                continue
            after, reason, w = parse_line(buf, q, end, row, sizes, spans, enums, ints, given)
            wide[k] = wide[k] or w
            if not reason:
                lines[0, row] = p
                lines[1, row] = after
                after = skip_ws(buf, after, end)
                if after < end and buf[after] == 13:
                    after += 1
                if after < end and buf[after] != 10:
                    reason = SYNTAX
            if reason:
                why[k] = reason
                stop[0] = True
                break
            for s in range(len(arenas)):  # copied while the line is in cache
                size = sizes[s, row]
                if size > 0 and wanted[s]:
                    at = cursor[s]
                    if spans[1, s]:
                        decode_string(buf, spans[0, s], arenas[s], at)
                    else:
                        _copy(buf, spans[0, s], arenas[s], at, size)
                    cursor[s] = at + size
            row += 1
            p = after + 1
        for s in range(len(arenas)):
            length[s, k] = cursor[s] - bounds[k]
    return why, wide, length


@njit(cache=True, inline="always")
def _copy(buf, p, out, at, size):
    for i in range(size):
        out[at + i] = buf[p + i]


@njit(cache=True)
def string_offsets(size):
    """An Arrow string column's offsets and validity bitmap from each row's byte size
    (-1: null), and how many nulls; offsets -1 at the end if they outgrow int32."""
    n = len(size)
    offsets = np.empty(n + 1, np.int32)
    bitmap = np.zeros((n + 7) // 8, np.uint8)
    at = 0
    nulls = 0
    for row in range(n):
        offsets[row] = at
        if size[row] < 0:
            nulls += 1
        else:
            at += size[row]
            bitmap[row >> 3] |= 1 << (row & 7)
            if at > 2**31 - 1:
                offsets[n] = -1
                return offsets, bitmap, nulls
    offsets[n] = at
    return offsets, bitmap, nulls


@njit(cache=True, parallel=True)
def assemble(arena, bounds, length):
    """One slot's strings, chunk after chunk, as one Arrow data buffer."""
    ends = np.cumsum(length)
    out = np.empty(ends[-1] if len(ends) else 0, np.uint8)
    for k in prange(len(length)):
        o, p = ends[k] - length[k], bounds[k]
        out[o : o + length[k]] = arena[p : p + length[k]]
    return out
