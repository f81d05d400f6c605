"""When the decider snapshots its core: its own rhythm, bounded by what a snapshot costs;
and how a forked child writes one while the decider goes on."""

import os
import time
import zlib

import pytest

from faultstream.events.models import WorkerEvent
from faultstream.processors.core import FleetCore
from faultstream.processors.stream.decide import (
    SNAPSHOT_EVERY_RECORDS,
    SNAPSHOT_MAX_SHARE,
    snapshot_due,
)
from faultstream.processors.stream.snapshots import (
    ForkedSnapshot,
    SnapshotStore,
    remove_stale_parts,
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


# --- snapshots written by a forked child -------------------------------------------------


def _core_after(records: int) -> FleetCore:
    core = FleetCore()
    for n in range(records):
        event = WorkerEvent(event_id=f"p.{n + 1}", kind="FAILURE", ts=1_000 + n, worker_id="w1",
                            hardware_class="cuda", task_id=f"t{n}", task_type="bert",
                            failure_type="TIMEOUT")  # fmt: skip
        core.process(event)
    return core


def _wait(forked: ForkedSnapshot) -> tuple[int, bytes]:
    for _ in range(1_000):
        written = forked.result()
        if written is not None:
            return written
        time.sleep(0.01)
    raise AssertionError("the snapshot's child did not finish")


def test_a_forked_snapshot_is_the_core_as_it_was_at_the_fork(tmp_path) -> None:
    core = _core_after(5)
    expected = core.snapshot()
    forked = ForkedSnapshot(core, offset=5, directory=str(tmp_path))
    for n in range(5, 9):  # the decider goes on while the child writes
        core.process(WorkerEvent(event_id=f"p.{n + 1}", kind="HEARTBEAT", ts=9_000 + n,
                                 worker_id="w2", hardware_class="cuda"))  # fmt: skip
    size, packed = _wait(forked)
    assert size == len(expected) and zlib.decompress(packed) == expected
    assert list(tmp_path.iterdir()) == []  # its file is gone once read
    table: dict = {}
    store = SnapshotStore(table)
    store.save_packed(forked.offset, packed)
    loaded = store.load()
    assert loaded is not None and loaded.offset == 5
    assert set(FleetCore.restore(loaded.data)._workers) == {"w1"}


def test_a_failed_child_is_reported_and_leaves_no_file(tmp_path) -> None:
    class Unpicklable(FleetCore):
        def snapshot(self) -> bytes:
            raise RuntimeError("cannot pickle")

    forked = ForkedSnapshot(Unpicklable(), offset=0, directory=str(tmp_path))
    with pytest.raises(OSError, match="child process failed"):
        _wait(forked)
    assert list(tmp_path.iterdir()) == []


def test_an_abandoned_snapshot_stops_its_child_and_removes_its_file(tmp_path) -> None:
    forked = ForkedSnapshot(_core_after(2_000), offset=0, directory=str(tmp_path))
    forked.abandon()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ChildProcessError):
        os.waitpid(forked.pid, os.WNOHANG)  # reaped: no zombie left behind


def test_a_finished_snapshot_can_be_asked_for_again(tmp_path) -> None:
    # The decider asks at every batch until the outputs the snapshot covers are delivered.
    forked = ForkedSnapshot(_core_after(3), offset=3, directory=str(tmp_path))
    first = _wait(forked)
    assert forked.result() == first


class _HeldCore:
    """A core whose snapshot waits for `gate` to exist: its child is alive until then."""

    def __init__(self, gate) -> None:
        self.gate = gate

    def snapshot(self) -> bytes:
        while not self.gate.exists():
            time.sleep(0.001)
        return b"state"


def test_the_child_does_not_hold_the_parents_instance_lock(tmp_path) -> None:
    # A parent killed while its child writes must be able to start again at once: by the
    # time the fork returns, the child has closed every descriptor it inherited.
    import fcntl

    gate = tmp_path / "gate"
    held = open(tmp_path / "instance.lock", "w")  # noqa: SIM115 - held across the fork
    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    forked = ForkedSnapshot(_HeldCore(gate), offset=0, directory=str(tmp_path / "s"))
    held.close()  # as the kernel does for a killed parent
    try:
        assert os.waitpid(forked.pid, os.WNOHANG) == (0, 0)  # the child is still writing
        with open(tmp_path / "instance.lock", "w") as again:
            fcntl.flock(again.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no BlockingIOError
    finally:
        gate.touch()
    assert zlib.decompress(_wait(forked)[1]) == b"state"


def test_a_killed_runs_unfinished_snapshot_files_are_removed_but_a_young_one_is_kept(
    tmp_path,
) -> None:
    # A SIGKILL mid-snapshot leaves the child's file; another instance's child may be
    # writing one right now.
    old, young, other = (
        tmp_path / "snapshot-old.part",
        tmp_path / "snapshot-young.part",
        tmp_path / "old.json",
    )
    for path in (old, young, other):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 3_600
    for path in (old, other):
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert remove_stale_parts(str(tmp_path), older_than_s=600) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json", "snapshot-young.part"]
    assert remove_stale_parts(str(tmp_path / "missing")) == 0
