"""Exclusive OS file locks for what one process must own alone (a read-models folder, a
processor instance's data dir).

`flock` rather than a pid file: the kernel drops the lock when its holder exits, however
it exits (SIGKILL included), so a crash never leaves a stale lock behind to clear by hand.
The holder writes who it is into the file, for the message the next one prints.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from .exceptions import FaultstreamError


class LockedError(FaultstreamError):
    """Another process holds the lock."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class FileLock:
    """An exclusive, non-blocking `flock` on `path`, held until `release()` (or exit)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def acquire(self) -> FileLock:
        """Take the lock; LockedError (naming the holder) when another process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "a+": never truncates the holder's note before we know the lock is ours.
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the lock's life)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise LockedError(f"{self.path} is locked by {holder}", holder) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._file = fh
        return self

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            # Closing drops the lock; the file stays (unlinking it would race a new holder).
            self._file.close()
            self._file = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()
