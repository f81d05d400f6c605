"""Parquet read models: what readers (API, dashboard, replay, tune) open instead of the
live DuckDB file.

Layout of `read_models_dir`:
    manifest.json              the files that make up each table right now (atomic rename)
    <table>/part-<n>.parquet   append-only tables: one part per publish, compacted now
                               and then; current-state tables: one file, rewritten whole

Every file is written under a temporary name and renamed into place, then the manifest is
replaced. A file that leaves the manifest (compacted, or an older current-state file) is
deleted only after `grace_s`, so a reader that read the previous manifest can still open
what it names. Appended rows are found by DuckDB `rowid`: the history tables are only
ever appended to (repeats are anti-joined away), so `rowid >= watermark` is exactly the new rows.

One writer per folder: a publisher holds an OS lock on `writer.lock` inside it for its life,
and a second one (another projector, even on another DuckDB file) is refused rather than
silently mixing two pipelines' histories in one manifest.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from faultstream.events.exceptions import FaultstreamError
from faultstream.events.locks import FileLock, LockedError

from .schema import TABLES

MANIFEST = "manifest.json"
LOCK_FILE = "writer.lock"
CURRENT_STATE_TABLES = ("circuit_states", "checkpoints", "circuit_figures_now")
# What identifies a current-state table's content (a row's event_id changes with it), and
# its order in the file.
_FINGERPRINT = {
    "circuit_states": "hash(event_id, ts)",
    "checkpoints": "hash(event_id, ts)",
    "circuit_figures_now": "hash(event_id, ts)",
}
_ORDER = {
    "circuit_states": "circuit_kind, circuit_id",
    "checkpoints": "task_id",
    "circuit_figures_now": "circuit_kind, circuit_id",
}
APPEND_ONLY_TABLES = tuple(name for name in TABLES if name not in CURRENT_STATE_TABLES)
# A part below this many rows is "small"; this many small parts get merged into one.
SMALL_PART_ROWS = 1_000_000
COMPACT_AFTER_PARTS = 8


class ReadModelsMissingError(FaultstreamError):
    """No published read models where they were expected."""


class ReadModelsLockedError(FaultstreamError):
    """Another process publishes read models into the same folder."""


@dataclass
class Manifest:
    version: int = 0
    # table -> [(relative path, rows)] in append order
    files: dict[str, list[list[Any]]] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)  # table -> next rowid
    fingerprints: dict[str, str] = field(default_factory=dict)  # current-state tables
    next_part: dict[str, int] = field(default_factory=dict)
    retired: dict[str, float] = field(default_factory=dict)  # relative path -> when

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def load(cls, directory: Path) -> Manifest | None:
        try:
            raw = json.loads((directory / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        return cls(**raw)


def read_manifest(directory: str | Path) -> Manifest:
    manifest = Manifest.load(Path(directory))
    if manifest is None:
        raise ReadModelsMissingError(
            f"{directory}: no read models published yet ({MANIFEST} is missing); "
            "is `faultstream projector` running?"
        )
    return manifest


class ReadModelPublisher:
    """Publishes the history of a DuckDB connection (the projector's) as Parquet."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, directory: str | Path, *, grace_s: float = 60.0
    ) -> None:
        self.con = con
        self.directory = Path(directory)
        self.grace_s = grace_s
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.directory / LOCK_FILE)
        try:
            self._lock.acquire()
        except LockedError as exc:
            raise ReadModelsLockedError(
                f"read models {self.directory}: in use by another writer ({exc.holder}); "
                "give each projector its own storage.read_models_dir (--read-models)"
            ) from None
        self.manifest = Manifest.load(self.directory) or Manifest()

    def close(self) -> None:
        """Release the folder for another writer."""
        self._lock.release()

    def __enter__(self) -> ReadModelPublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def publish(self) -> Manifest:
        """Write what is new since the last publish and replace the manifest."""
        m = self.manifest
        for table in APPEND_ONLY_TABLES:
            self._publish_appended(table)
            self._maybe_compact(table)
        for table in CURRENT_STATE_TABLES:
            self._publish_whole(table)
        m.version += 1
        self._write_atomic(self.directory / MANIFEST, m.to_json().encode())
        self._sweep()
        return m

    # --- tables ---------------------------------------------------------------------------

    def _publish_appended(self, table: str) -> None:
        m = self.manifest
        start = m.watermarks.get(table, 0)
        (end,) = self.con.execute(f"SELECT coalesce(max(rowid) + 1, 0) FROM {table}").fetchone()
        parts = m.files.setdefault(table, [])
        if end <= start and parts:
            return
        # An empty table still gets one (empty) part so readers always see its columns.
        rows = self._copy(
            f"SELECT * FROM {table} WHERE rowid >= {start} AND rowid < {end} ORDER BY rowid",
            self._next_name(table),
        )
        parts.append(rows)
        m.watermarks[table] = max(start, end)

    def _maybe_compact(self, table: str) -> None:
        parts = self.manifest.files[table]
        small = [(path, n) for path, n in parts if n < SMALL_PART_ROWS]
        if len(small) < COMPACT_AFTER_PARTS:
            return
        # Small parts are the newest ones (a compacted part is only created from them, and
        # it replaces them at the same place), so the merge keeps append order.
        first = parts.index(list(small[0]))
        paths = ", ".join(f"'{self.directory / path}'" for path, _ in small)
        merged = self._copy(
            f"SELECT * FROM read_parquet([{paths}], file_row_number = false)",
            self._next_name(table),
        )
        parts[first:] = [merged]
        now = time.time()
        for path, _ in small:
            self.manifest.retired[path] = now

    def _publish_whole(self, table: str) -> None:
        m = self.manifest
        old = m.files.get(table, [])
        # Current-state tables change in place: a row's event_id changes with its content.
        fingerprint = str(
            self.con.execute(
                f"SELECT count(*), coalesce(sum({_FINGERPRINT[table]}), 0) FROM {table}"
            ).fetchone()
        )
        if old and m.fingerprints.get(table) == fingerprint:
            return
        new = self._copy(f"SELECT * FROM {table} ORDER BY {_ORDER[table]}", self._next_name(table))
        now = time.time()
        for path, _ in old:
            m.retired[path] = now
        m.files[table] = [new]
        m.fingerprints[table] = fingerprint

    # --- files ----------------------------------------------------------------------------

    def _next_name(self, table: str) -> str:
        n = self.manifest.next_part.get(table, 0)
        self.manifest.next_part[table] = n + 1
        return f"{table}/part-{n:08d}.parquet"

    def _copy(self, select: str, relative: str) -> list[Any]:
        target = self.directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        self.con.execute(f"COPY ({select}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
        rows = duckdb.execute(
            f"SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata('{tmp}')"
        ).fetchone()[0]
        os.replace(tmp, target)
        return [relative, int(rows)]

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _sweep(self) -> None:
        """Delete retired files past their grace period, and stray files of a crash."""
        m = self.manifest
        now = time.time()
        for path, since in list(m.retired.items()):
            if now - since >= self.grace_s:
                (self.directory / path).unlink(missing_ok=True)
                del m.retired[path]
        listed = {path for parts in m.files.values() for path, _ in parts} | set(m.retired)
        for table_dir in self.directory.iterdir():
            if not table_dir.is_dir():
                continue
            for file in table_dir.iterdir():
                relative = f"{table_dir.name}/{file.name}"
                if relative in listed:
                    continue
                try:
                    stale = now - file.stat().st_mtime >= self.grace_s
                except FileNotFoundError:
                    continue
                if stale:
                    file.unlink(missing_ok=True)
