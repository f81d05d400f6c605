"""When the decider snapshots its core: its own rhythm, bounded by what a snapshot costs."""

from faultstream.processors.stream.decide import (
    SNAPSHOT_EVERY_RECORDS,
    SNAPSHOT_MAX_SHARE,
    snapshot_due,
)


def test_a_snapshot_is_due_after_the_configured_interval():
    assert not snapshot_due(9.9, 100, every_s=10.0, last_pause_s=0.01)
    assert snapshot_due(10.0, 100, every_s=10.0, last_pause_s=0.01)


def test_a_snapshot_is_due_after_enough_records_even_before_the_interval():
    assert snapshot_due(1.0, SNAPSHOT_EVERY_RECORDS, every_s=10.0, last_pause_s=0.01)
    assert not snapshot_due(1.0, SNAPSHOT_EVERY_RECORDS - 1, every_s=10.0, last_pause_s=0.01)


def test_nothing_new_means_no_snapshot():
    assert not snapshot_due(3600.0, 0, every_s=10.0, last_pause_s=0.0)


def test_a_slow_snapshot_spaces_out_the_next_ones():
    # A 1 s pause: the next one waits until it is at most SNAPSHOT_MAX_SHARE of the time,
    # for the interval and the record count alike.
    gap = 1.0 / SNAPSHOT_MAX_SHARE
    assert not snapshot_due(gap - 1, SNAPSHOT_EVERY_RECORDS, every_s=10.0, last_pause_s=1.0)
    assert snapshot_due(gap, 100, every_s=10.0, last_pause_s=1.0)
