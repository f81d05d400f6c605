"""The emitter's local spool: worker events that could not be delivered, kept on disk.

JSON Lines of WorkerEvent (the replay format), fsync'd on every append. A lock (a thread
lock plus `flock` on a sidecar file) keeps two emitters, in one process or in several,
from interleaving or losing each other's lines while one of them rewrites the file.

Each `event_id` is kept once, however often an event fails, and the file stays within
`max_bytes` (`[emitter] spool_max_bytes`): past it the oldest events are dropped, and how
many is logged. What cannot be written is logged as lost; nothing leaves silently.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import EmitterSettings
from .exceptions import InvalidEventError
from .jsonl import parse_input_line
from .models import WorkerEvent

log = logging.getLogger(__name__)

DEFAULT_SPOOL_MAX_BYTES: int = EmitterSettings.model_fields["spool_max_bytes"].default

_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class Appended:
    """What one `Spool.append` did with the events it was given."""

    added: int  # written now
    already: int  # their event_id was spooled already: not written twice
    unwritable: int  # could not be serialized: lost (logged)
    dropped: int  # oldest events dropped to stay within max_bytes (logged), any run's

    @property
    def lost(self) -> int:
        return self.unwritable + self.dropped


class Spool:
    def __init__(
        self, path: str | os.PathLike[str], max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        self.path = Path(path).expanduser().absolute()
        self.max_bytes = max_bytes
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        with _THREAD_LOCKS_GUARD:
            self._thread_lock = _THREAD_LOCKS.setdefault(self.path, threading.Lock())
        # The ids in the file and their line sizes, valid while the file is as we left it
        # (same inode, size and mtime): appends then skip re-reading a large spool.
        self._index: dict[str, int] = {}
        self._index_stamp: tuple[int, int, int] | None = None
        self._unreadable = 0  # lines the last scan could not read

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    def append(self, events: Iterable[WorkerEvent]) -> Appended:
        """Add events durably (written and fsync'd before this returns). An event whose
        `event_id` is spooled already is not written again; an event that cannot be
        serialized is logged as lost; past `max_bytes` the oldest events are dropped."""
        lines: dict[str, str] = {}
        already = unwritable = 0
        failures: list[str] = []
        for event in events:
            if event.event_id in lines:
                already += 1
                continue
            try:
                lines[event.event_id] = event.model_dump_json() + "\n"
            except ValueError as exc:  # e.g. a lone surrogate: no UTF-8 form exists
                unwritable += 1
                failures.append(f"{event.event_id!r}: {exc}")
        if failures:
            log.error(
                "spool %s: %d events could not be written and are lost (%s)",
                self.path,
                len(failures),
                failures[0] if len(failures) == 1 else f"first {failures[0]}",
            )
        if not lines:
            return Appended(0, already, unwritable, 0)
        with self._locked():
            index = self._current_index()
            for event_id in [event_id for event_id in lines if event_id in index]:
                del lines[event_id]
                already += 1
            sizes = {event_id: len(line.encode()) for event_id, line in lines.items()}
            if sum(index.values()) + sum(sizes.values()) > self.max_bytes:
                dropped, dropped_new = self._rewrite_within_bound(lines)
                return Appended(len(lines) - dropped_new, already, unwritable, dropped)
            if lines:
                with open(self.path, "a", encoding="utf-8") as out:
                    out.write("".join(lines.values()))
                    out.flush()
                    os.fsync(out.fileno())
                index.update(sizes)
                self._stamp()
        return Appended(len(lines), already, unwritable, 0)

    def read(self) -> list[WorkerEvent]:
        """Every spooled event once, oldest first; a corrupt line (a torn write) is logged
        and skipped rather than blocking the ones after it."""
        with self._locked():
            return self._read_unlocked()

    def _read_unlocked(self) -> list[WorkerEvent]:
        if not self.path.exists():
            return []
        events: dict[str, WorkerEvent] = {}
        with open(self.path, encoding="utf-8", errors="replace") as spool_file:
            for lineno, line in enumerate(spool_file, start=1):
                if not line.strip():
                    continue
                try:
                    record = parse_input_line(line)
                except InvalidEventError as exc:
                    log.warning("spool %s line %d skipped: %s", self.path, lineno, exc)
                    continue
                if isinstance(record, WorkerEvent):
                    events.setdefault(record.event_id, record)  # a repeat adds nothing
        return list(events.values())

    def remove(self, event_ids: Collection[str]) -> int:
        """Drop the events with these ids (they were delivered); returns how many remain."""
        with self._locked():
            events = self._read_unlocked()
            if not event_ids:
                return len(events)
            keep = [event for event in events if event.event_id not in event_ids]
            if len(keep) == len(events):
                return len(keep)
            self._replace([event.model_dump_json() + "\n" for event in keep])
            return len(keep)

    def __len__(self) -> int:
        return len(self.read())

    # --- bookkeeping, under the lock -----------------------------------------------------

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _stamp(self) -> None:
        self._index_stamp = self._file_stamp()

    def _current_index(self) -> dict[str, int]:
        """event_id -> bytes of its line, oldest first; re-read when another writer (or
        process) changed the file since this spool last wrote it."""
        stamp = self._file_stamp()
        if stamp is None:
            self._index = {}
        elif stamp != self._index_stamp:
            self._index = {event_id: len(line) for event_id, line in self._scan()}
        self._index_stamp = stamp
        return self._index

    def _scan(self) -> list[tuple[str, bytes]]:
        """(event_id, raw line) of each readable line, first occurrence of an id only."""
        self._unreadable = 0
        if not self.path.exists():
            return []
        seen: dict[str, bytes] = {}
        with open(self.path, "rb") as spool_file:
            for line in spool_file:
                try:
                    event_id = json.loads(line)["event_id"]
                except (ValueError, KeyError, TypeError):
                    # Torn or foreign: read() reports it, a rewrite drops it (counted).
                    if line.strip():
                        self._unreadable += 1
                    continue
                if isinstance(event_id, str) and event_id not in seen:
                    seen[event_id] = line if line.endswith(b"\n") else line + b"\n"
        return list(seen.items())

    def _rewrite_within_bound(self, lines: dict[str, str]) -> tuple[int, int]:
        """Rewrite the file as its events plus `lines`, without the oldest ones that do not
        fit in max_bytes; returns (events dropped, how many of them were in `lines`)."""
        entries = [*self._scan(), *((eid, line.encode()) for eid, line in lines.items())]
        total = sum(len(line) for _, line in entries)
        cut = 0
        while cut < len(entries) and total > self.max_bytes:
            total -= len(entries[cut][1])
            cut += 1
        kept = entries[cut:]
        new = sum(1 for eid, _ in entries[:cut] if eid in lines)
        self._replace([line.decode() for _, line in kept])
        log.warning(
            "spool %s: dropped the %d oldest events to stay within %d bytes "
            "([emitter] spool_max_bytes); they are lost%s",
            self.path,
            cut,
            self.max_bytes,
            f" (and {self._unreadable} unreadable lines)" if self._unreadable else "",
        )
        return cut, new

    def _replace(self, lines: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new file
        self._index = {}
        self._index_stamp = None  # re-read on the next append (cheap: rewrites are rare)
