"""The byte-level JSON pieces of the JSON Lines scanner (`jsonl_kernel.py`), in numba:
strings (escapes, characters, UTF-8), canonical integers, base64, skipping a value,
line and chunk boundaries, and the hash of the event ids. Every function refuses what
it is not sure of (a position of -1) rather than guess.

numba keys each cached function on its own file: after editing this one, delete
processors/__pycache__/jsonl_kernel*.nb* too, or the kernel keeps the old code inlined.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Byte classes inside a JSON string: plain ASCII, quote, backslash, raw control
# character (refused), UTF-8 continuation byte, UTF-8 lead byte.
_PLAIN, _QUOTE, _BACKSLASH, _CONTROL, _FOLLOW, _LEAD = range(6)
BYTE_CLASS = np.array([_CONTROL] * 32 + [_PLAIN] * 96 + [_FOLLOW] * 64 + [_LEAD] * 64, np.uint8)
BYTE_CLASS[34], BYTE_CLASS[92] = _QUOTE, _BACKSLASH


@njit(cache=True, inline="always")
def skip_ws(buf, p, end):
    while p < end and (buf[p] == 32 or buf[p] == 9):
        p += 1
    return p


@njit(cache=True)
def hex4(buf, p, end):
    if p + 4 > end:
        return -1
    value = 0
    for i in range(4):
        c = buf[p + i]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return -1
        value = value * 16 + d
    return value


@njit(cache=True, inline="always")
def plain_string_end(buf, p, end):
    """`p` at an opening quote: its closing quote's position if all between is plain
    ASCII (no escape), else -1 (then `scan_string` it). Most strings are: kept inline."""
    q = p + 1
    while q < end and BYTE_CLASS[buf[q]] == _PLAIN:
        q += 1
    return q if q < end and buf[q] == 34 else -1


@njit(cache=True)
def scan_string(buf, p, end):
    """`p` at an opening quote: (position after the closing quote, decoded UTF-8 length,
    characters, escaped, non-ASCII); position -1 for anything refused (a raw control
    character, a bad escape, a lone surrogate, no closing quote)."""
    p += 1
    start = p
    shrink = 0  # raw bytes minus decoded bytes, over the escapes
    extra = 0  # decoded bytes minus characters
    escaped = False
    wide = False
    while p < end:
        c = BYTE_CLASS[buf[p]]
        if c == _PLAIN:
            p += 1
            continue
        if c == _QUOTE:
            size = p - start - shrink
            return p + 1, size, size - extra, escaped, wide
        if c >= _FOLLOW:  # non-ASCII
            wide = True
            extra += c == _FOLLOW
            p += 1
            continue
        if c == _CONTROL or p + 1 >= end:
            return -1, 0, 0, False, False
        escaped = True
        e = buf[p + 1]
        if e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114:
            shrink += 1
            p += 2
            continue
        if e == 116:
            shrink += 1
            p += 2
            continue
        if e != 117:
            return -1, 0, 0, False, False
        u = hex4(buf, p + 2, end)
        if u < 0 or 0xDC00 <= u < 0xE000:
            return -1, 0, 0, False, False
        if 0xD800 <= u < 0xDC00:  # a surrogate pair: one character, four bytes
            low = -1
            if p + 7 < end and buf[p + 6] == 92 and buf[p + 7] == 117:
                low = hex4(buf, p + 8, end)
            if not 0xDC00 <= low < 0xE000:
                return -1, 0, 0, False, False
            shrink += 8
            extra += 3
            p += 12
            continue
        width = 1 if u < 0x80 else (2 if u < 0x800 else 3)
        shrink += 6 - width
        extra += width - 1
        p += 6
    return -1, 0, 0, False, False


@njit(cache=True, inline="always")
def match_name(buf, p, size, names, offsets, first, last):
    """The index in [first, last) of the name equal to buf[p:p+size], or -1."""
    for i in range(first, last):
        a, b = offsets[i], offsets[i + 1]
        if b - a != size:
            continue
        same = True
        for j in range(size):
            if buf[p + j] != names[a + j]:
                same = False
                break
        if same:
            return i
    return -1


@njit(cache=True, inline="always")
def is_null(buf, p, end):
    return (
        p + 4 <= end
        and buf[p] == 110
        and buf[p + 1] == 117
        and buf[p + 2] == 108
        and buf[p + 3] == 108
    )


@njit(cache=True)
def _b64_value(c):
    """A base64 digit's value; 62 and 63 come as `+/` (standard, 64 and 65 here) or as
    `-_` (URL-safe, what pydantic writes); -1 if none."""
    if 65 <= c <= 90:
        return c - 65
    if 97 <= c <= 122:
        return c - 71
    if 48 <= c <= 57:
        return c + 4
    if c == 45 or c == 95:
        return 62 if c == 45 else 63
    if c == 43 or c == 47:
        return 64 if c == 43 else 65
    return -1


@njit(cache=True)
def canonical_base64(buf, p, size, limit):
    """Padded base64 in one alphabet with zero trailing bits, decoding to ≤ `limit` bytes
    (what pydantic's `val_json_bytes="base64"` decodes, and writes)."""
    if size % 4:
        return False
    pad = 0
    if size and buf[p + size - 1] == 61:
        pad = 2 if buf[p + size - 2] == 61 else 1
    standard = False
    url_safe = False
    last = 0
    for i in range(size - pad):
        last = _b64_value(buf[p + i])
        if last < 0:
            return False
        standard = standard or last > 63
        url_safe = url_safe or last == 62 or last == 63
    if standard and url_safe:
        return False
    last = last - 2 if last > 63 else last
    if pad and last & (0xF if pad == 2 else 0x3):
        return False
    return size // 4 * 3 - pad <= limit


@njit(cache=True)
def skip_value(buf, p, end):
    """Past one JSON value (a CONFIG_CHANGED `config`, validated again by pydantic)."""
    depth = 0
    while p < end:
        c = buf[p]
        if c == 34:
            p, _, _, _, _ = scan_string(buf, p, end)
            if p < 0:
                return -1
        elif c == 123 or c == 91:
            depth += 1
            p += 1
        elif c == 125 or c == 93:
            if depth == 0:
                return p
            depth -= 1
            p += 1
        elif c == 44 and depth == 0:
            return p
        else:
            p += 1
        if depth == 0 and (c == 34 or c == 125 or c == 93):
            return p
    return -1


@njit(cache=True, inline="always")
def read_int(buf, p, end):
    """(position after, value) of canonical non-negative digits (≤ 18), or (-1, 0)."""
    start = p
    value = 0
    while p < end and 48 <= buf[p] <= 57:
        value = value * 10 + (buf[p] - 48)
        p += 1
    digits = p - start
    if digits == 0 or digits > 18 or (digits > 1 and buf[start] == 48):
        return -1, 0
    if p < end and (buf[p] == 46 or buf[p] == 101 or buf[p] == 69):
        return -1, 0
    return p, value


@njit(cache=True)
def line_end(buf, p, end):
    """The end of the line at `p` (its newline, or `end`)."""
    while p < end and buf[p] != 10:
        p += 1
    return p


@njit(cache=True)
def is_blank(buf, p, end):
    """Whether buf[p:end] holds only spaces, tabs and carriage returns."""
    for i in range(p, end):
        c = buf[i]
        if c != 32 and c != 9 and c != 13:
            return False
    return True


@njit(cache=True)
def chunk_bounds(buf, size):
    """Edges of chunks of about `size` bytes, each just after a newline (no line
    straddles two chunks; a line longer than a chunk joins the chunk it starts in)."""
    edges = [0]
    at = size
    while at < len(buf):
        at = line_end(buf, at, len(buf)) + 1
        if at < len(buf):
            edges.append(at)
        at += size
    edges.append(len(buf))
    return np.array(edges, np.int64)


_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_NEWLINES = np.uint64(0x0A0A0A0A0A0A0A0A)


@njit(cache=True, parallel=True)
def count_lines(buf, words, bounds):
    """Lines per chunk [bounds[k], bounds[k+1]) (`words`: `buf` as aligned uint64): its
    newlines, eight bytes at a time, plus an unterminated last line."""
    n = len(bounds) - 1
    counts = np.zeros(n, np.int64)
    for k in prange(n):
        p, end = bounds[k], bounds[k + 1]
        lines = 0
        while p < end and p % 8:
            lines += buf[p] == 10
            p += 1
        for w in range(p // 8, end // 8):
            v = words[w] ^ _NEWLINES  # a newline byte becomes zero
            zero = ~(((v & _LOW7) + _LOW7) | v | _LOW7) & _HIGH
            lines += ((zero >> np.uint64(7)) * _ONES) >> np.uint64(56)
        for i in range(max(p, end // 8 * 8), end):
            lines += buf[i] == 10
        if end > bounds[k] and buf[end - 1] != 10:
            lines += 1
        counts[k] = lines
    return counts


@njit(cache=True)
def decode_string(buf, p, out, o):
    """The escaped string at `p` (after its quote) into out[o:], as UTF-8."""
    while buf[p] != 34:
        c = buf[p]
        if c != 92:
            out[o] = c
            o += 1
            p += 1
            continue
        e = buf[p + 1]
        if e != 117:
            if e == 98:
                c = 8
            elif e == 102:
                c = 12
            elif e == 110:
                c = 10
            elif e == 114:
                c = 13
            elif e == 116:
                c = 9
            else:  # " \ /
                c = e
            out[o] = c
            o += 1
            p += 2
            continue
        u = hex4(buf, p + 2, p + 6)
        p += 6
        if 0xD800 <= u < 0xDC00:
            u = 0x10000 + ((u - 0xD800) << 10) + (hex4(buf, p + 2, p + 6) - 0xDC00)
            p += 6
        if u < 0x80:
            out[o] = u
            o += 1
        elif u < 0x800:
            out[o] = 0xC0 | (u >> 6)
            out[o + 1] = 0x80 | (u & 0x3F)
            o += 2
        elif u < 0x10000:
            out[o] = 0xE0 | (u >> 12)
            out[o + 1] = 0x80 | ((u >> 6) & 0x3F)
            out[o + 2] = 0x80 | (u & 0x3F)
            o += 3
        else:
            out[o] = 0xF0 | (u >> 18)
            out[o + 1] = 0x80 | ((u >> 12) & 0x3F)
            out[o + 2] = 0x80 | ((u >> 6) & 0x3F)
            out[o + 3] = 0x80 | (u & 0x3F)
            o += 4


@njit(cache=True, parallel=True)
def hash_strings(offsets, data):
    """A 64-bit hash (FNV-1a, then mixed) of each string of an Arrow string column."""
    n = len(offsets) - 1
    out = np.empty(n, np.uint64)
    for i in prange(n):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        out[i] = h
    return out
