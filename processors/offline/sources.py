"""Where a recorded history comes from, for replay and tune.

Every source yields the validated input records in the order the core saw them, and,
where it also holds them, the derived records that really happened (for `--diff`):

- `JsonlSource`: a JSON Lines file (inputs only).
- `DuckDBSource`: a history DuckDB file nobody writes (the `events` and `control` tables,
  ordered by the ingestion counter `seq`; `circuit_transitions` and `commands`).
- `ReadModelsSource`: the projector's Parquet read models (same tables).
  Both read through `faultstream.projections.queries.History`.
- `KafkaSource`: `<prefix>.ordered` from the beginning to its end offset at start (the
  processor's total order of inputs, framed: events/frames.py), plus `.circuits`
  and `.commands` for what happened.

`processors` reads `faultstream.projections` here, only to share its query module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from faultstream.events.admin import end_offsets
from faultstream.events.config import KafkaSettings
from faultstream.events.decode import stamped
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.jsonl import InvalidLineError, read_input_records
from faultstream.events.kafka_clients import librdkafka_config
from faultstream.events.models import (
    Alert,
    CircuitStateChanged,
    DerivedRecord,
    InputRecord,
    RecoveryCommand,
    received_at,
)
from faultstream.processors.compiled.columns import INPUT_COLUMNS
from faultstream.processors.compiled.columns import REPLAY_COLUMNS as REPLAY_COLUMNS
from faultstream.projections.queries import History  # reading only: the shared queries

from .input_columns import read_input_columns

log = logging.getLogger(__name__)
_KAFKA_POLL_S = 1.0
_KAFKA_IDLE_POLLS = 30  # give up when the end offset is not reached within ~30 s of quiet


class HistoryError(FaultstreamError):
    """A history that cannot be read; the message names the source."""


# An input's decision time in the history tables (models.received_at).
RECEIVED_AT_SQL = "coalesce(received_at, ts)"


@dataclass(frozen=True)
class Window:
    """Time bounds: `since <= t < until`, None meaning open, where t is an input's decision
    time (its `received_at`) and a derived record's `ts`."""

    since: int | None = None
    until: int | None = None

    def holds(self, ts: int) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def filter(self, records: Iterable[Any]) -> Iterator[Any]:
        if self.since is None and self.until is None:
            yield from records
            return
        for record in records:
            if self.holds(received_at(record)):
                yield record

    def sql(self, column: str = "ts") -> tuple[str, list[int]]:
        clauses, params = [], []
        if self.since is not None:
            clauses.append(f"{column} >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{column} < ?")
            params.append(self.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


ALL_TIME = Window()


class HistorySource(Protocol):
    name: str

    def inputs(self, window: Window = ALL_TIME) -> Iterator[InputRecord]: ...

    def derived(self, window: Window = ALL_TIME) -> Iterator[DerivedRecord] | None:
        """What really happened, or None when this source does not hold it."""

    def input_columns(
        self, window: Window = ALL_TIME, columns: Sequence[str] = INPUT_COLUMNS
    ) -> pa.Table | None:
        """The inputs as Arrow columns (`INPUT_COLUMNS`, or `REPLAY_COLUMNS` for the
        compiled core), or None when this source only yields records."""


# --- JSON Lines -------------------------------------------------------------------------


# Measured: the columnar read and the compiled core cost ~0.9 s to load plus ~1.5 µs a
# line; the line-by-line parse and FleetCore ~6-10 µs a line: even at ~40 MB (~140k lines).
JSONL_COLUMNS_MIN_BYTES = 32 * 2**20


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # `inputs` names the problem when it opens the file


class JsonlSource:
    def __init__(self, path: str, *, skip_invalid: bool = False) -> None:
        self.name = f"--input {path}"
        self.path = path
        self.skip_invalid = skip_invalid
        self.invalid: list[InvalidLineError] = []

    def inputs(self, window: Window = ALL_TIME) -> Iterator[InputRecord]:
        from .replay import open_input

        with open_input(self.path) as handle:
            # Bytes, decoded line by line: a line that is not UTF-8 is one invalid line
            # (named, or skipped and counted with --skip-invalid), not the end of the read.
            lines = getattr(handle, "buffer", handle)
            records = read_input_records(lines, skip_invalid=self.skip_invalid, errors=self.invalid)
            yield from window.filter(records)

    def derived(self, window: Window = ALL_TIME) -> None:
        return None

    def input_columns(
        self, window: Window = ALL_TIME, columns: Sequence[str] = INPUT_COLUMNS
    ) -> pa.Table | None:
        """The inputs of `inputs(window)` as Arrow columns, read without a model per line
        (processors/offline/jsonl_columns.py); None when only the line-by-line parse can tell
        (a history it cannot prove valid, or stdin, which can be read only once), and for
        a file under JSONL_COLUMNS_MIN_BYTES, which the parse finishes first."""
        from .jsonl_columns import in_window, read_jsonl_columns
        from .replay import STDIO

        if self.path == STDIO or _size(self.path) < JSONL_COLUMNS_MIN_BYTES:
            return None
        table = read_jsonl_columns(self.path, columns)
        return None if table is None else in_window(table, window.since, window.until)


# --- DuckDB and read models -------------------------------------------------------------


class _ProjectedHistory:
    """The history tables through `faultstream.projections.queries.History` (the query
    module the dashboard and API share): inputs in `seq` order, plus what happened."""

    name: str

    def _open(self) -> History:
        raise NotImplementedError

    def inputs(self, window: Window = ALL_TIME) -> Iterator[InputRecord]:
        history = self._open()
        try:
            yield from history.input_records(window.since, window.until)
        except duckdb.Error as exc:
            raise HistoryError(f"{self.name}: cannot read the inputs ({exc})") from None
        finally:
            history.close()

    def input_columns(
        self, window: Window = ALL_TIME, columns: Sequence[str] = INPUT_COLUMNS
    ) -> pa.Table | None:
        """The inputs of `inputs(window)`, in the same order, as Arrow columns (one row per
        record: `columns`, null where a record has no such field; CONFIG_CHANGED's
        `config` as JSON text), read by DuckDB without building a record per row."""
        history = self._open()
        where, params = window.sql(RECEIVED_AT_SQL)
        try:
            return read_input_columns(history.con, columns, where, params)
        except duckdb.Error as exc:
            raise HistoryError(f"{self.name}: cannot read the inputs ({exc})") from None
        finally:
            history.close()

    def derived(self, window: Window = ALL_TIME) -> Iterator[DerivedRecord] | None:
        history = self._open()
        where, params = window.sql()
        try:
            con = history.con
            transitions = con.execute(
                f"SELECT * FROM circuit_transitions{where} ORDER BY ts, event_id", params
            )
            records: list[DerivedRecord] = [
                CircuitStateChanged.model_validate(_row_dict(transitions, row))
                for row in transitions.fetchall()
            ]
            commands = con.execute(f"SELECT * FROM commands{where} ORDER BY ts, command_id", params)
            for row in commands.fetchall():
                data = _row_dict(commands, row)
                data["parameters"] = data.get("parameters") or {}
                records.append(RecoveryCommand.model_validate(data))
            if "alerts" in _tables(con):  # none in a history older than alerts
                alerts = con.execute(f"SELECT * FROM alerts{where} ORDER BY ts, alert_id", params)
                rows = alerts.fetchall()
                records += [Alert.model_validate(_row_dict(alerts, row)) for row in rows]
        except duckdb.Error as exc:
            raise HistoryError(f"{self.name}: cannot read derived records ({exc})") from None
        finally:
            history.close()
        records.sort(key=lambda r: r.ts)  # stable: each kind keeps its own order on ties
        return iter(records)


class DuckDBSource(_ProjectedHistory):
    """A history DuckDB file that no process is writing (read-only)."""

    def __init__(self, path: str) -> None:
        self.name = f"--db {path}"
        self.path = path
        if not Path(path).is_file():
            raise HistoryError(f"--db {path}: no such DuckDB file")

    def _open(self) -> History:
        return History.from_db(self.path)


class ReadModelsSource(_ProjectedHistory):
    """The Parquet read models a projector publishes (safe while it writes)."""

    def __init__(self, directory: str) -> None:
        self.name = f"--read-models {directory}"
        self.directory = directory
        if not Path(directory).is_dir():
            raise HistoryError(f"--read-models {directory}: no such directory")

    def _open(self) -> History:
        return History.from_read_models(self.directory)


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The tables and views of a history (a view per table over read models)."""
    rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return {name for (name,) in rows}


def _row_dict(cursor: duckdb.DuckDBPyConnection, row: tuple) -> dict[str, Any]:
    names = [d[0] for d in cursor.description]
    return {k: v for k, v in zip(names, row, strict=True) if k not in ("rowid", "seq")}


# --- Kafka ------------------------------------------------------------------------------


class KafkaSource:
    """The processor's `ordered` topic, read from the beginning to its end at start."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.name = f"--from-kafka {kafka.bootstrap_servers} {kafka.topic('ordered')}"

    def input_columns(
        self, window: Window = ALL_TIME, columns: Sequence[str] = INPUT_COLUMNS
    ) -> None:
        return None  # framed Avro: decoded record by record

    def inputs(self, window: Window = ALL_TIME) -> Iterator[InputRecord]:
        from faultstream.events.decode import InputDecoder
        from faultstream.events.frames import unpack_stamped

        decoder = InputDecoder(self.kafka.schema_registry_url, topic_prefix=self.kafka.topic_prefix)
        # Each frames is a frame of inputs: (offset, index in frame) order.
        for frame in self._read_topic("ordered"):
            try:
                times, raws = unpack_stamped(frame)
                records = [decoder.validated(raw) for raw in raws]
            except FaultstreamError as exc:
                # The decider skipped (and dead-lettered) this frame whole: so does replay.
                log.warning("%s: skipped an undecodable frame, as the processor did (%s)",
                            self.name, exc)  # fmt: skip
                continue
            for at, record in zip(times, records, strict=True):
                if at is not None:
                    record = stamped(record, at)
                if window.holds(received_at(record)):
                    yield record

    def derived(self, window: Window = ALL_TIME) -> Iterator[DerivedRecord]:
        from faultstream.events.codec import Codec

        codec = Codec(self.kafka.schema_registry_url, topic_prefix=self.kafka.topic_prefix)
        records: list[Any] = []
        for topic in ("circuits", "commands", "alerts"):
            # A cluster set up before alerts existed has no alerts topic: none happened.
            for value in self._read_topic(topic, missing_ok=topic == "alerts"):
                record = codec.decode(value)
                if window.holds(record.ts):  # type: ignore[attr-defined]
                    records.append(record)
        records.sort(key=lambda r: r.ts)
        return iter(records)

    def _read_topic(self, logical: str, *, missing_ok: bool = False) -> Iterator[bytes]:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        from faultstream.events.kafka_connection import cluster_metadata

        topic = self.kafka.topic(logical)
        # One clear line for an unreachable or misconfigured cluster, before a consumer
        # whose reconnect attempts would each print a line.
        try:
            cluster_metadata(self.kafka)
        except FaultstreamError as exc:
            raise HistoryError(f"{self.name}: {exc}") from None
        consumer = Consumer(
            librdkafka_config(
                self.kafka,
                {
                    "group.id": f"faultstream-replay-{logical}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "logger": log,
                },
            )
        )
        try:
            try:
                metadata = consumer.list_topics(topic, timeout=10)
            except KafkaException as exc:
                raise HistoryError(f"{self.name}: broker unreachable ({exc})") from None
            info = metadata.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                if missing_ok:
                    return
                raise HistoryError(f"--from-kafka: topic {topic} does not exist")
            # The end offsets at start: a history that keeps growing still ends.
            watermarks = end_offsets(consumer, topic, list(info.partitions))
            ends = {p: high for p, (low, high) in watermarks.items() if high > low}
            if not ends:
                return
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            # Partitions beginning after 0 (retention) start at their low watermark.
            done: set[int] = set()
            idle = 0
            while len(done) < len(ends):
                messages = consumer.consume(1000, _KAFKA_POLL_S)
                if not messages:
                    idle += 1
                    if idle >= _KAFKA_IDLE_POLLS:
                        raise HistoryError(f"{self.name}: {topic} stopped before its end offset")
                    continue
                idle = 0
                for message in messages:
                    if message.error() is not None:
                        continue  # partition EOF and the like
                    partition, offset = message.partition(), message.offset()
                    if partition in done or offset >= ends[partition]:
                        done.add(partition)
                        continue
                    yield message.value()
                    if offset + 1 >= ends[partition]:
                        done.add(partition)
        finally:
            consumer.close()


def open_source(
    *,
    input_path: str | None = None,
    db: str | None = None,
    read_models: str | None = None,
    from_kafka: bool = False,
    kafka: KafkaSettings | None = None,
    skip_invalid: bool = False,
) -> HistorySource:
    """The one history source the command line named."""
    if input_path is not None:
        return JsonlSource(input_path, skip_invalid=skip_invalid)
    if db is not None:
        return DuckDBSource(db)
    if read_models is not None:
        return ReadModelsSource(read_models)
    if from_kafka:
        return KafkaSource(kafka or KafkaSettings())
    raise FaultstreamError("one of --input, --db, --read-models, --from-kafka is required")


def strip_config_changes(records: Iterable[InputRecord]) -> Iterator[InputRecord]:
    """The history without its CONFIG_CHANGED records: what-if settings stay in force."""
    for record in records:
        if record.kind != "CONFIG_CHANGED":
            yield record
