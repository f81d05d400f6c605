"""The decider's durable state: snapshots of the core in a changelog-backed Faust table.

A snapshot is `FleetCore.snapshot()` plus the `<prefix>.ordered` offset it covers (the
next record the restored core must see). It is written only after the outputs of every
record it covers were flushed, so a restart that restores it and re-reads the `.ordered`
partition from its offset re-sends at most outputs already sent, with the same ids.

Snapshots can outgrow Kafka's 1 MB message limit, so one is compressed and split into
chunks (base64 text: Faust tables serialize plain values as JSON). Two slots (A and B)
alternate: a crash in the middle of writing one slot leaves the other intact, and a
digest tells a torn slot from a whole one.

Pickling the core takes time in proportion to the fleet (about 100 ms per 10,000
workers), and the decider stands still meanwhile. Where the platform can fork, a child
process pickles and compresses a copy-on-write image of the core instead: the decider
stops only for the fork, goes on deciding, and writes the snapshot to the table (from an
agent event, as Faust requires) once the child has finished.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from faultstream.processors.core import FleetCore

CHUNK_BYTES = 512 * 1024
SLOTS = ("A", "B")


class TableLike(Protocol):
    def __getitem__(self, key: str) -> Any: ...
    def __setitem__(self, key: str, value: Any) -> None: ...
    def get(self, key: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class Snapshot:
    offset: int
    data: bytes


class SnapshotStore:
    """Reads and writes core snapshots in a key → bytes table (a Faust table, a dict)."""

    def __init__(self, table: TableLike) -> None:
        self._table = table
        self._next_slot = 0
        self._seq = 0

    def save(self, offset: int, data: bytes) -> None:
        self.save_packed(offset, pack(data))

    def save_packed(self, offset: int, packed: bytes) -> None:
        """Save a snapshot already `pack`ed (by a forked child)."""
        chunks = [packed[i : i + CHUNK_BYTES] for i in range(0, len(packed), CHUNK_BYTES)]
        slot = SLOTS[self._next_slot]
        self._next_slot = 1 - self._next_slot
        self._seq += 1
        for index, chunk in enumerate(chunks):
            self._table[f"chunk:{slot}:{index}"] = base64.b64encode(chunk).decode()
        meta = {
            "offset": offset,
            "chunks": len(chunks),
            "sha256": hashlib.sha256(packed).hexdigest(),
            "seq": self._seq,
        }
        # The meta record goes last: the changelog has one partition, so it is restored
        # after the chunks it describes.
        self._table[f"meta:{slot}"] = meta

    def load(self) -> Snapshot | None:
        """The newest whole snapshot, or None when there is none."""
        best: Snapshot | None = None
        for position, slot in enumerate(SLOTS):
            meta = self._table.get(f"meta:{slot}")
            if not isinstance(meta, dict):
                continue
            self._seq = max(self._seq, int(meta.get("seq", 0)))
            snapshot = self._assemble(slot, meta)
            if snapshot is not None and (best is None or snapshot.offset > best.offset):
                best = snapshot
                self._next_slot = 1 - position
        return best

    def _assemble(self, slot: str, meta: dict[str, Any]) -> Snapshot | None:
        parts = []
        for index in range(int(meta["chunks"])):
            chunk = self._table.get(f"chunk:{slot}:{index}")
            if chunk is None:
                return None
            parts.append(base64.b64decode(chunk))
        packed = b"".join(parts)
        if hashlib.sha256(packed).hexdigest() != meta["sha256"]:
            return None  # torn: a later write of this slot was cut short
        return Snapshot(offset=int(meta["offset"]), data=zlib.decompress(packed))


def pack(data: bytes) -> bytes:
    return zlib.compress(data, 1)


CAN_FORK = hasattr(os, "fork")
PART_PATTERN = "snapshot-*.part"
STALE_PART_S = 600.0  # a child writes for about a second per 10,000 workers
_MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65_536


def remove_stale_parts(directory: str, older_than_s: float = STALE_PART_S) -> int:
    """Delete the files of snapshot children that never finished (killed with their
    parent); a young one may be another instance's child still writing. Returns how many."""
    cutoff = time.time() - older_than_s
    removed = 0
    for part in Path(directory).glob(PART_PATTERN):
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_mtime < cutoff:
                part.unlink()
                removed += 1
    return removed


def _close_all_but(*keep: int) -> None:
    """Close every descriptor from 3 up, except `keep`."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _MAX_FD)


class ForkedSnapshot:
    """A snapshot of the core as it was at `offset`, being written by a forked child."""

    def __init__(self, core: FleetCore, offset: int, directory: str) -> None:
        self.offset = offset
        self._written: tuple[int, bytes] | None = None
        os.makedirs(directory, exist_ok=True)
        fd, self.path = tempfile.mkstemp(dir=directory, prefix="snapshot-", suffix=".part")
        # The child closes `released` once it holds nothing of the parent's but its file.
        ready, released = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: write, and leave without running any cleanup
            status = 1
            try:
                # A signal must not wake the parent's event loop through the shared fd.
                with contextlib.suppress(ValueError):  # (only the main thread may)
                    signal.set_wakeup_fd(-1)
                # Nor may the child keep what the parent holds open: its instance lock (a
                # flock, shared by both until the last holder closes it) would outlive a
                # parent that was killed, and refuse its restart.
                _close_all_but(fd, released)
                os.close(released)
                data = core.snapshot()
                with os.fdopen(fd, "wb") as out:
                    out.write(len(data).to_bytes(8, "big"))
                    out.write(pack(data))
                status = 0
            finally:
                os._exit(status)
        os.close(fd)
        os.close(released)
        try:
            # Until the child has closed them, a SIGKILL of this process would leave them
            # (the lock) open. About 1 ms more pause at 10,000 workers (4.8 ms, not 3.7).
            os.read(ready, 1)  # EOF: the child closed its end, or died
        finally:
            os.close(ready)

    def result(self) -> tuple[int, bytes] | None:
        """(the snapshot's size unpacked, its packed bytes) once the child is done, else
        None; raises OSError when the child failed."""
        if self._written is not None:
            return self._written
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        try:
            if os.waitstatus_to_exitcode(status) != 0:
                raise OSError(f"the snapshot's child process failed (status {status})")
            with open(self.path, "rb") as written:
                size = int.from_bytes(written.read(8), "big")
                self._written = (size, written.read())
                return self._written
        finally:
            os.unlink(self.path)

    def abandon(self) -> None:
        """The state it copies is no longer this instance's to save."""
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
