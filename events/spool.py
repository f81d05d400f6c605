"""The emitter's local spool: worker events that could not be delivered, kept on disk.

JSON Lines of WorkerEvent (the replay format), fsync'd on every append. A lock (a thread
lock plus `flock` on a sidecar file) keeps two emitters, in one process or in several,
from interleaving or losing each other's lines while one of them rewrites the file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .exceptions import InvalidEventError
from .jsonl import parse_input_line
from .models import WorkerEvent

log = logging.getLogger(__name__)

_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class Spool:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        with _THREAD_LOCKS_GUARD:
            self._thread_lock = _THREAD_LOCKS.setdefault(self.path, threading.Lock())

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

    def append(self, events: Iterable[WorkerEvent]) -> int:
        """Add events durably (written and fsync'd before this returns); returns how many."""
        lines = [event.model_dump_json() + "\n" for event in events]
        if not lines:
            return 0
        with self._locked(), open(self.path, "a", encoding="utf-8") as out:
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
        return len(lines)

    def read(self) -> list[WorkerEvent]:
        """Every spooled event, oldest first; a corrupt line (a torn write) is logged and
        skipped rather than blocking the ones after it."""
        with self._locked():
            return self._read_unlocked()

    def _read_unlocked(self) -> list[WorkerEvent]:
        if not self.path.exists():
            return []
        events: list[WorkerEvent] = []
        with open(self.path, encoding="utf-8") as spool_file:
            for lineno, line in enumerate(spool_file, start=1):
                if not line.strip():
                    continue
                try:
                    record = parse_input_line(line)
                except InvalidEventError as exc:
                    log.warning("spool %s line %d skipped: %s", self.path, lineno, exc)
                    continue
                if isinstance(record, WorkerEvent):
                    events.append(record)
        return events

    def remove(self, event_ids: Collection[str]) -> int:
        """Drop the events with these ids (they were delivered); returns how many remain."""
        with self._locked():
            events = self._read_unlocked()
            if not event_ids:
                return len(events)
            keep = [event for event in events if event.event_id not in event_ids]
            if len(keep) == len(events):
                return len(keep)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as out:
                out.write("".join(event.model_dump_json() + "\n" for event in keep))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new file
            return len(keep)

    def __len__(self) -> int:
        return len(self.read())
