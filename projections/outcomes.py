"""Which circuit each recorded outcome counts on, in SQL, and the running per-circuit totals.

The rules are not restated here: a small table maps every FailureType to its circuit kind
through `AttributionSettings.circuit_for`, and the messages of FAILUREs without a type are
classified by `classify_message`, both the core's own functions. Only the distinct
untyped messages of a batch go through Python, so this stays cheap on large batches.
(Like the core's circuits view, an outcome counts by its type; the fleet guard's moving of
a worker failure to the hardware_class circuit is not reflected in the totals.)
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from faultstream.events.classify import classify_message
from faultstream.events.config import AttributionSettings
from faultstream.events.models import FailureType

CIRCUIT_COLUMNS = {"worker": "worker_id", "hardware_class": "hardware_class",
                   "task_type": "task_type"}  # fmt: skip


def register_attribution(
    con: duckdb.DuckDBPyConnection, source: str, attribution: AttributionSettings
) -> None:
    """Register `failure_circuits(failure_type, circuit_kind)` and
    `classified_messages(message, failure_type)` for the untyped FAILUREs of `source`."""
    types = list(FailureType)
    con.register(
        "failure_circuits",
        pa.table(
            {
                "failure_type": [str(t) for t in types],
                "circuit_kind": [str(attribution.circuit_for(t)) for t in types],
            }
        ),
    )
    messages = [
        row[0]
        for row in con.execute(
            f"SELECT DISTINCT message FROM {source} "
            "WHERE kind = 'FAILURE' AND failure_type IS NULL AND message IS NOT NULL"
        ).fetchall()
    ]
    con.register(
        "classified_messages",
        pa.table(
            {
                "message": pa.array(messages, pa.string()),
                "failure_type": pa.array([str(classify_message(m)) for m in messages], pa.string()),
            }
        ),
    )


def counted_sql(source: str) -> str:
    """(ck, cid, seq, ok) for every outcome in `source` and each circuit it counts on;
    needs `register_attribution` first."""
    unclassified = str(classify_message(None))
    outcomes = f"""
        SELECT e.seq, e.worker_id, e.hardware_class, e.task_type, e.kind = 'SUCCESS' AS ok,
               fc.circuit_kind AS failed_on
        FROM {source} e
        LEFT JOIN classified_messages m ON e.failure_type IS NULL AND m.message = e.message
        LEFT JOIN failure_circuits fc
          ON e.kind = 'FAILURE'
         AND fc.failure_type = coalesce(e.failure_type, m.failure_type, '{unclassified}')
        WHERE e.kind IN ('SUCCESS', 'FAILURE')"""
    return " UNION ALL ".join(
        f"SELECT '{kind}' AS ck, {column} AS cid, seq, ok FROM ({outcomes}) "
        f"WHERE {column} IS NOT NULL AND (ok OR failed_on = '{kind}')"
        for kind, column in CIRCUIT_COLUMNS.items()
    )


def update_circuit_totals(
    con: duckdb.DuckDBPyConnection,
    source: str,
    attribution: AttributionSettings,
    table: str = "circuit_totals",
) -> None:
    """Add the events of `source` (new rows only, in seq order after every stored row) to
    `table` (circuit_totals' layout); every circuit an event names gets a row, even without
    outcomes."""
    register_attribution(con, source, attribution)
    known = " UNION ".join(
        f"SELECT DISTINCT '{kind}' AS ck, {column} AS cid FROM {source} WHERE {column} IS NOT NULL"
        for kind, column in CIRCUIT_COLUMNS.items()
    )
    con.execute(
        f"""
        INSERT INTO {table}
        WITH counted AS ({counted_sql(source)}),
        last AS (SELECT ck, cid, max(seq) FILTER (WHERE ok) AS ls FROM counted GROUP BY ALL),
        tallies AS (
            SELECT c.ck, c.cid,
                   count(*) FILTER (WHERE ok) AS s,
                   count(*) FILTER (WHERE NOT ok) AS f,
                   coalesce(any_value(l.ls), -1) AS ls,
                   count(*) FILTER (WHERE NOT ok AND seq > coalesce(l.ls, -1)) AS fss
            FROM counted c JOIN last l USING (ck, cid) GROUP BY ALL)
        SELECT k.ck, k.cid, coalesce(t.s, 0), coalesce(t.f, 0), coalesce(t.ls, -1),
               coalesce(t.fss, 0)
        FROM ({known}) k LEFT JOIN tallies t USING (ck, cid)
        ON CONFLICT (circuit_kind, circuit_id) DO UPDATE SET
            total_successes = {table}.total_successes + excluded.total_successes,
            total_failures = {table}.total_failures + excluded.total_failures,
            failures_since_success = CASE WHEN excluded.last_success_seq >= 0
                THEN excluded.failures_since_success
                ELSE {table}.failures_since_success + excluded.failures_since_success
                END,
            last_success_seq = greatest({table}.last_success_seq,
                                        excluded.last_success_seq)
        """
    )
    for name in ("failure_circuits", "classified_messages"):
        con.unregister(name)
