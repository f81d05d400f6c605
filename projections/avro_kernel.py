"""The numba kernels behind `columns.py`: frame split and worker events decoded
from one buffer holding a whole consumed batch, into spans and numbers per field.

The kernels only accept what they are sure of: a record with another schema id, a varint
longer than 10 bytes, invalid UTF-8, an out-of-range enum, union branch or int, a repeated
map key, a truncated or overlong body — anything unusual — is flagged and left to the
codec (fastavro), which decodes it or says why it cannot. Being stricter than fastavro is
therefore always safe; the tests check every kind of record against it.

Layout of the worker event (schemas/worker_event.avsc, checked in columns.py):
event_id, kind, ts, worker_id, hardware_class, task_id?, task_type?, failure_type?,
message?, attempt, recovery_command_id?, attributes (map), checkpoint_seq?,
checkpoint_state? (? = union with null first).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Span columns: byte strings of a record, as (start in the buffer, length; -1 = null).
S_EVENT_ID, S_WORKER_ID, S_HARDWARE_CLASS, S_TASK_ID, S_TASK_TYPE = range(5)
S_MESSAGE, S_RECOVERY_COMMAND_ID, S_CHECKPOINT_STATE = range(5, 8)
SPANS = 8
# Record status.
OK, TO_CODEC = 0, 1
# Message status of the frame split.
FRAME_OK, FRAME_BAD = 0, 1
_FRAME_VERSION = 2  # events/frames.py
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


@njit(cache=True, nogil=True)
def _varint(buf: np.ndarray, pos: int, end: int) -> tuple[int, int]:
    """(zigzag-decoded long, position after it); position -1 when cut short or longer
    than the 10 bytes a long can take."""
    z = np.int64(0)
    shift = 0
    while True:
        if pos >= end or shift > 63:
            return 0, -1
        b = np.int64(buf[pos])
        pos += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    # Logical shift right by one, then undo the zigzag.
    return ((z >> 1) & 0x7FFFFFFFFFFFFFFF) ^ -(z & 1), pos


@njit(cache=True, nogil=True)
def _valid_utf8(buf: np.ndarray, start: int, end: int) -> bool:
    """As strict as Python's `bytes.decode()`: no overlongs, surrogates or code points past
    U+10FFFF."""
    i = start
    while i < end:
        b = buf[i]
        if b < 0x80:
            i += 1
            continue
        lo, hi = 0x80, 0xBF  # the range of the first continuation byte
        if 0xC2 <= b <= 0xDF:
            more = 1
        elif 0xE0 <= b <= 0xEF:
            more = 2
            if b == 0xE0:
                lo = 0xA0
            elif b == 0xED:
                hi = 0x9F
        elif 0xF0 <= b <= 0xF4:
            more = 3
            if b == 0xF0:
                lo = 0x90
            elif b == 0xF4:
                hi = 0x8F
        else:
            return False
        if i + more >= end:  # cut short
            return False
        c = buf[i + 1]
        if c < lo or c > hi:
            return False
        for k in range(2, more + 1):
            c = buf[i + k]
            if c < 0x80 or c > 0xBF:
                return False
        i += more + 1
    return True


@njit(cache=True, nogil=True)
def _string(buf: np.ndarray, pos: int, end: int, text: bool) -> tuple[int, int, int]:
    """(start, length, position after it) of a string or bytes; position -1 when bad."""
    length, pos = _varint(buf, pos, end)
    if pos < 0 or length < 0 or pos + length > end:
        return 0, 0, -1
    if text and not _valid_utf8(buf, pos, pos + length):
        return 0, 0, -1
    return pos, length, pos + length


@njit(cache=True, nogil=True)
def _branch(buf: np.ndarray, pos: int, end: int) -> tuple[int, int]:
    """A ["null", T] union's branch (0 or 1); position -1 for any other index."""
    branch, pos = _varint(buf, pos, end)
    if pos < 0 or branch < 0 or branch > 1:
        return 0, -1
    return branch, pos


@njit(cache=True, nogil=True)
def split_frames(
    buf: np.ndarray, bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The records of each frames `m` (bytes `bounds[m]:bounds[m + 1]`):
    (message status, record start, record end, record's message, record's index in frame,
    record's received_at or -1). A bad frame gets FRAME_BAD and no records (its reason
    comes from frames.unpack)."""
    messages = len(bounds) - 1
    status = np.zeros(messages, np.uint8)
    capacity = max(16, messages)
    starts = np.empty(capacity, np.int64)
    ends = np.empty(capacity, np.int64)
    owner = np.empty(capacity, np.int64)
    index = np.empty(capacity, np.int64)
    received = np.empty(capacity, np.int64)
    n = 0
    for m in range(messages):
        pos, end = bounds[m], bounds[m + 1]
        if end - pos < 5 or buf[pos] != _FRAME_VERSION:
            status[m] = FRAME_BAD
            continue
        count = np.int64(0)
        for k in range(1, 5):
            count = (count << 8) | np.int64(buf[pos + k])
        times = pos + 5
        pos = times + 8 * count
        if pos > end:
            status[m] = FRAME_BAD
            continue
        first = n
        for i in range(count):
            if pos + 4 > end:
                status[m] = FRAME_BAD
                break
            length = np.int64(0)
            for k in range(4):
                length = (length << 8) | np.int64(buf[pos + k])
            rec_start, rec_end = pos + 4, pos + 4 + length
            if rec_end > end:
                status[m] = FRAME_BAD
                break
            if n == capacity:
                capacity *= 2
                starts = _grow(starts, capacity)
                ends = _grow(ends, capacity)
                owner = _grow(owner, capacity)
                index = _grow(index, capacity)
                received = _grow(received, capacity)
            at = np.int64(0)
            for k in range(8):  # big-endian, two's complement
                at = (at << 8) | np.int64(buf[times + 8 * i + k])
            starts[n], ends[n], owner[n], index[n], received[n] = rec_start, rec_end, m, i, at
            n += 1
            pos = rec_end
        if status[m] == FRAME_OK and pos != end:
            status[m] = FRAME_BAD  # trailing bytes
        if status[m] != FRAME_OK:
            n = first
    return status, starts[:n], ends[:n], owner[:n], index[:n], received[:n]


@njit(cache=True, nogil=True)
def _grow(values: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.empty(capacity, values.dtype)
    grown[: len(values)] = values
    return grown


@njit(cache=True, nogil=True)
def decode_worker_events(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    schema_id: int,
    kinds: int,
    failure_types: int,
) -> tuple[np.ndarray, ...]:
    """Every field of the records `buf[starts[r]:ends[r]]` (wire format, 5-byte header):
    (status, spans start, spans length, kind, ts, failure_type (-1 null), attempt,
    checkpoint_seq, checkpoint_seq present, map offsets, map key spans, map value spans).
    A record with status TO_CODEC has garbage in its fields."""
    n = len(starts)
    status = np.zeros(n, np.uint8)
    span_start = np.zeros((SPANS, n), np.int64)
    span_len = np.full((SPANS, n), -1, np.int64)
    kind = np.zeros(n, np.int8)
    ts = np.zeros(n, np.int64)
    failure_type = np.full(n, -1, np.int8)
    attempt = np.zeros(n, np.int32)
    checkpoint_seq = np.zeros(n, np.int64)
    has_checkpoint_seq = np.zeros(n, np.bool_)
    map_offsets = np.zeros(n + 1, np.int64)
    capacity = max(16, 2 * n)
    key_start = np.empty(capacity, np.int64)
    key_len = np.empty(capacity, np.int64)
    value_start = np.empty(capacity, np.int64)
    value_len = np.empty(capacity, np.int64)
    entries = 0
    for r in range(n):
        pos, end = starts[r], ends[r]
        first_entry = entries
        map_offsets[r] = entries
        # Header: magic byte 0, then the schema id (4 bytes, big-endian).
        ok = end - pos >= 5 and buf[pos] == 0
        if ok:
            sid = np.int64(0)
            for k in range(1, 5):
                sid = (sid << 8) | np.int64(buf[pos + k])
            ok = sid == schema_id
        pos += 5
        if ok:
            s, ln, pos = _string(buf, pos, end, True)
            span_start[S_EVENT_ID, r], span_len[S_EVENT_ID, r] = s, ln
            ok = pos >= 0
        if ok:
            value, pos = _varint(buf, pos, end)
            kind[r] = value
            ok = pos >= 0 and 0 <= value < kinds
        if ok:
            ts[r], pos = _varint(buf, pos, end)
            ok = pos >= 0
        for column in (S_WORKER_ID, S_HARDWARE_CLASS):
            if ok:
                s, ln, pos = _string(buf, pos, end, True)
                span_start[column, r], span_len[column, r] = s, ln
                ok = pos >= 0
        for column in (S_TASK_ID, S_TASK_TYPE):
            if ok:
                branch, pos = _branch(buf, pos, end)
                ok = pos >= 0
                if ok and branch == 1:
                    s, ln, pos = _string(buf, pos, end, True)
                    span_start[column, r], span_len[column, r] = s, ln
                    ok = pos >= 0
        if ok:
            branch, pos = _branch(buf, pos, end)
            ok = pos >= 0
            if ok and branch == 1:
                value, pos = _varint(buf, pos, end)
                failure_type[r] = value
                ok = pos >= 0 and 0 <= value < failure_types
        if ok:
            branch, pos = _branch(buf, pos, end)
            ok = pos >= 0
            if ok and branch == 1:
                s, ln, pos = _string(buf, pos, end, True)
                span_start[S_MESSAGE, r], span_len[S_MESSAGE, r] = s, ln
                ok = pos >= 0
        if ok:
            value, pos = _varint(buf, pos, end)
            attempt[r] = value
            ok = pos >= 0 and _INT32_MIN <= value <= _INT32_MAX
        if ok:
            branch, pos = _branch(buf, pos, end)
            ok = pos >= 0
            if ok and branch == 1:
                s, ln, pos = _string(buf, pos, end, True)
                span_start[S_RECOVERY_COMMAND_ID, r], span_len[S_RECOVERY_COMMAND_ID, r] = s, ln
                ok = pos >= 0
        while ok:  # the attributes map: blocks of entries, ended by a block of 0
            count, pos = _varint(buf, pos, end)
            ok = pos >= 0
            if not ok or count == 0:
                break
            if count < 0:  # a block that also gives its size in bytes
                count = -count
                _, pos = _varint(buf, pos, end)
                ok = pos >= 0
            for _ in range(count):
                if not ok:
                    break
                ks, kl, pos = _string(buf, pos, end, True)
                ok = pos >= 0
                if ok:
                    vs, vl, pos = _string(buf, pos, end, True)
                    ok = pos >= 0
                if ok:
                    for e in range(first_entry, entries):  # a repeated key: the codec's way
                        if key_len[e] == kl and _same(buf, key_start[e], ks, kl):
                            ok = False
                if ok:
                    if entries == capacity:
                        capacity *= 2
                        key_start = _grow(key_start, capacity)
                        key_len = _grow(key_len, capacity)
                        value_start = _grow(value_start, capacity)
                        value_len = _grow(value_len, capacity)
                    key_start[entries], key_len[entries] = ks, kl
                    value_start[entries], value_len[entries] = vs, vl
                    entries += 1
        if ok:
            branch, pos = _branch(buf, pos, end)
            ok = pos >= 0
            if ok and branch == 1:
                checkpoint_seq[r], pos = _varint(buf, pos, end)
                has_checkpoint_seq[r] = True
                ok = pos >= 0
        if ok:
            branch, pos = _branch(buf, pos, end)
            ok = pos >= 0
            if ok and branch == 1:
                s, ln, pos = _string(buf, pos, end, False)
                span_start[S_CHECKPOINT_STATE, r], span_len[S_CHECKPOINT_STATE, r] = s, ln
                ok = pos >= 0
        if not ok or pos != end:
            status[r] = TO_CODEC
            entries = first_entry
    map_offsets[n] = entries
    return (status, span_start, span_len, kind, ts, failure_type, attempt, checkpoint_seq,
            has_checkpoint_seq, map_offsets, key_start[:entries], key_len[:entries],
            value_start[:entries], value_len[:entries])  # fmt: skip


@njit(cache=True, nogil=True)
def _same(buf: np.ndarray, a: int, b: int, length: int) -> bool:
    for k in range(length):  # noqa: SIM110 (numba)
        if buf[a + k] != buf[b + k]:
            return False
    return True


@njit(cache=True, nogil=True)
def gather(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Arrow's (int32 offsets, data) of the spans `rows` picks; a null (-1) is empty."""
    offsets = np.empty(len(rows) + 1, np.int32)
    total = 0
    offsets[0] = 0
    for i in range(len(rows)):
        length = lengths[rows[i]]
        if length > 0:
            total += length
        offsets[i + 1] = total
    data = np.empty(max(total, 1), np.uint8)
    at = 0
    for i in range(len(rows)):
        length = lengths[rows[i]]
        if length > 0:
            start = starts[rows[i]]
            data[at : at + length] = buf[start : start + length]
            at += length
    return offsets, data


@njit(cache=True, nogil=True)
def map_entries(map_offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 offsets per picked row, the picked rows' entry numbers) of a map column."""
    offsets = np.empty(len(rows) + 1, np.int32)
    offsets[0] = 0
    total = 0
    for i in range(len(rows)):
        total += map_offsets[rows[i] + 1] - map_offsets[rows[i]]
        offsets[i + 1] = total
    picked = np.empty(total, np.int64)
    at = 0
    for i in range(len(rows)):
        for e in range(map_offsets[rows[i]], map_offsets[rows[i] + 1]):
            picked[at] = e
            at += 1
    return offsets, picked
