"""The framing of `<prefix>.ordered` records (events/frames.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faultstream.events import frames
from faultstream.events.codec import Codec
from faultstream.events.exceptions import DecodeError
from faultstream.events.models import Tick


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=50))
def test_unpack_returns_the_packed_records_in_order(records):
    assert frames.unpack(frames.pack(records)) == records


@given(
    st.lists(
        st.tuples(st.binary(max_size=100), st.none() | st.integers(0, 2**62)),
        min_size=1,
        max_size=30,
    )
)
def test_each_record_keeps_its_broker_time_through_the_frame(stamped):
    records = [raw for raw, _ in stamped]
    times = [frames.UNKNOWN_TIME if at is None else at for _, at in stamped]
    assert frames.unpack_stamped(frames.pack(records, times)) == (
        [at for _, at in stamped],
        records,
    )


def test_a_bare_avro_record_is_not_a_frame():
    raw = Codec().encode(Tick(event_id="t1", ts=1))
    with pytest.raises(DecodeError, match="version 0"):
        frames.unpack(raw)


def test_an_empty_or_oversized_batch_is_refused():
    with pytest.raises(ValueError, match="1 to 65536 records"):
        frames.pack([])
    with pytest.raises(ValueError, match="not 65537"):
        frames.pack([b""] * (frames.MAX_RECORDS + 1))


def test_a_truncated_frame_is_a_decode_error_naming_the_record():
    frame = frames.pack([b"abc", b"defgh"])
    with pytest.raises(DecodeError, match="truncated in record 1 of 2"):
        frames.unpack(frame[:-1])
    with pytest.raises(DecodeError, match="trailing bytes"):
        frames.unpack(frame + b"x")
    with pytest.raises(DecodeError, match="version 7"):
        frames.unpack(b"\x07" + frame[1:])
    with pytest.raises(DecodeError, match="in the times of its 2 records"):
        frames.unpack(frame[:10])
    with pytest.raises(DecodeError, match="empty"):
        frames.unpack(b"")


def test_pack_all_splits_by_bytes_and_keeps_a_large_record_alone():
    small, large = b"s" * 1000, b"L" * (frames.MAX_FRAME_BYTES + 10)
    records = [small] * 600 + [large] + [small] * 3
    packed = frames.pack_all(records, list(range(len(records))))
    assert all(len(frame) <= frames.MAX_FRAME_BYTES + 20 for frame in packed[:-2])
    assert frames.unpack(packed[-2]) == [large]
    assert [r for frame in packed for r in frames.unpack(frame)] == records


def test_seq_orders_by_offset_then_index_within_the_cap():
    positions = [(0, 0), (0, 1), (0, frames.MAX_RECORDS - 1), (1, 0), (2, 5)]
    seqs = [frames.seq(offset, index) for offset, index in positions]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
