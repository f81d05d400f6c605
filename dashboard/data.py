"""Where the dashboard's figures come from: the history it was started on, and small SQL
queries over `History`'s connection, cached for one refresh period.

The history location travels from `faultstream dashboard` to the Streamlit script in two
environment variables (a DuckDB file nobody writes, or the projector's read models).
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from faultstream.events.classify import classify_message
from faultstream.events.config import CoreSettings, Settings, load_settings
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import FailureType
from faultstream.projections.alerts import FIRING_SQL, has_alerts_table
from faultstream.projections.queries import History

from . import DB_ENV, READ_MODELS_ENV

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
_CIRCUIT_COLUMNS = {"worker": "worker_id", "hardware_class": "hardware_class",
                    "task_type": "task_type"}  # fmt: skip
_CACHE_TTL_S = 600  # an upper bound; `stamp` arguments expire entries on each refresh


@dataclass(frozen=True)
class Source:
    """The history the dashboard shows: read models win over a DuckDB file."""

    db: str | None = None
    read_models: str | None = None

    @classmethod
    def from_env(cls) -> Source:
        return cls(os.environ.get(DB_ENV) or None, os.environ.get(READ_MODELS_ENV) or None)

    @property
    def live(self) -> bool:
        return self.read_models is not None

    def describe(self) -> str:
        if self.read_models:
            return f"read models in {self.read_models}"
        return f"DuckDB file {self.db}" if self.db else "no history configured"


def settings() -> Settings:
    """Read on every run, so a token or broker set in the environment takes effect."""
    return load_settings()


@st.cache_resource(show_spinner=False)
def _open(source: Source, core: CoreSettings) -> History:
    # An exception is not cached: a history that appears later is picked up.
    if source.read_models:
        return History.from_read_models(source.read_models, core)
    if source.db:
        return History.from_db(source.db, core)
    raise FaultstreamError("no history configured")


def open_history(source: Source, core: CoreSettings) -> History | None:
    """The history, or None when there is none (yet): the pages then explain how to get
    data in instead of failing."""
    try:
        history = _open(source, core)
    except FaultstreamError:
        return None
    try:
        empty = history.now() == 0
    except FaultstreamError:
        return None
    return None if empty else history


def stamp(source: Source, refresh_s: float) -> int:
    """Cache key part that changes every refresh period on live read models; a DuckDB file
    nobody writes never changes, so its figures are computed once."""
    return int(time.monotonic() // refresh_s) if source.live else 0


def query(history: History, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
    history.refresh()
    cursor = history.con.cursor()  # its own cursor: pages may query from several threads
    try:
        return cursor.execute(sql, params or []).df()
    finally:
        cursor.close()


def _cached(fn: Any) -> Any:
    """`st.cache_data`, applied at the first call rather than at import: decorating outside
    a Streamlit runtime (the command line or a test importing this module) logs "No
    runtime found" once per function."""
    cached = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal cached
        if cached is None:  # two sessions racing here share one cache (keyed by the code)
            cached = st.cache_data(ttl=_CACHE_TTL_S, max_entries=64, show_spinner=False)(fn)
        return cached(*args, **kwargs)

    return call


# --- overview and circuits ---------------------------------------------------------------


@_cached
def circuit_breakers(_history: History, key: str, stamp: int) -> dict[str, Any]:
    return _history.circuit_breakers()


@_cached
def circuits(_history: History, key: str, stamp: int) -> pd.DataFrame:
    """Every circuit: state, health and tallies (as the API), since when it is in that
    state, why, and its current backoff."""
    doc = circuit_breakers(_history, key, stamp)
    rows = [
        {"kind": kind, "circuit": cid, **fields}
        for kind, section in (
            ("worker", doc["workers"]),
            ("hardware_class", doc["hardware_classes"]),
            ("task_type", doc["task_types"]),
        )
        for cid, fields in section.items()
    ]
    table = pd.DataFrame(
        rows,
        columns=["kind", "circuit", "state", "health_percentage", "total_successes",
                 "total_failures"],
    )  # fmt: skip
    states = query(
        _history,
        "SELECT circuit_kind AS kind, circuit_id AS circuit, ts AS since_ms, reason, trips, "
        "reset_timeout_s FROM circuit_states",
    )
    # `trips` restarts at 0 when a circuit closes; `openings` is its whole history's count.
    openings = query(
        _history,
        "SELECT circuit_kind AS kind, circuit_id AS circuit, count(*) AS openings "
        "FROM circuit_transitions WHERE to_state = 'OPEN' GROUP BY ALL",
    )
    table = table.merge(states, on=["kind", "circuit"], how="left")
    table = table.merge(openings, on=["kind", "circuit"], how="left")
    table["openings"] = table["openings"].fillna(0).astype("int64")
    now = doc["timestamp"]
    table["for_s"] = (now - table["since_ms"]) / 1000
    table["since"] = pd.to_datetime(table["since_ms"], unit="ms", utc=True)
    # least healthy first, then the most recently changed
    table = table.sort_values(
        ["health_percentage", "since_ms"], ascending=[True, False], na_position="last"
    )
    return table.reset_index(drop=True)


@_cached
def recent_transitions(_history: History, key: str, stamp: int, limit: int = 15) -> pd.DataFrame:
    return query(
        _history,
        "SELECT epoch_ms(ts) AS time, circuit_kind AS kind, circuit_id AS circuit, "
        "from_state, to_state, reason FROM circuit_transitions ORDER BY ts DESC LIMIT ?",
        [limit],
    )


@_cached
def events_per_minute(_history: History, key: str, stamp: int, now: int) -> pd.DataFrame:
    """The newest hour of worker events, per minute and kind."""
    return query(
        _history,
        f"SELECT epoch_ms(ts // {MINUTE_MS} * {MINUTE_MS}) AS minute, kind, count(*) AS events "
        "FROM events WHERE ts >= ? GROUP BY ALL ORDER BY ALL",
        [now - HOUR_MS],
    )


_FIRING_COLUMNS = ["since", "since_ms", "severity", "rule", "subject", "message", "alert_id"]


@_cached
def firing_alerts(_history: History, key: str, stamp: int) -> pd.DataFrame:
    """The alerts firing now, newest first; none in a history older than alerts."""
    if not has_alerts_table(_history):
        return pd.DataFrame(columns=_FIRING_COLUMNS)
    return query(
        _history,
        "SELECT epoch_ms(ts) AS since, ts AS since_ms, severity, rule, "
        "subject_kind || ':' || subject_id AS subject, message, alert_id "
        f"FROM ({FIRING_SQL}) ORDER BY ts DESC, alert_id",
    )


@_cached
def active_escalations(_history: History, key: str, stamp: int) -> pd.DataFrame:
    """Tasks handed to a person (ESCALATION) that have not succeeded since."""
    return query(
        _history,
        """
        WITH esc AS (SELECT * FROM commands WHERE strategy = 'ESCALATION')
        SELECT epoch_ms(c.ts) AS escalated_at, c.task_id, c.task_type, c.worker_id, c.reason
        FROM esc c
        WHERE NOT EXISTS (
            SELECT 1 FROM events e
            WHERE e.kind = 'SUCCESS' AND e.task_id = c.task_id AND e.ts > c.ts
              AND e.ts >= (SELECT min(ts) FROM esc))
        ORDER BY c.ts DESC
        """,
    )


@_cached
def recovery_by_task_type(_history: History, key: str, stamp: int) -> pd.DataFrame:
    """What was done, per task type: how many commands, which strategies, when."""
    return query(
        _history,
        """
        SELECT task_type, count(*) AS commands,
               string_agg(DISTINCT strategy, ', ' ORDER BY strategy) AS strategies,
               count(DISTINCT task_id) AS tasks, epoch_ms(min(ts)) AS first,
               epoch_ms(max(ts)) AS latest
        FROM commands GROUP BY task_type ORDER BY latest DESC
        """,
    )


@_cached
def circuit_transitions(_history: History, key: str, stamp: int, kind: str, cid: str):
    """One circuit's transitions with the input that caused each."""
    return query(
        _history,
        """
        WITH t AS (SELECT * FROM circuit_transitions
                   WHERE circuit_kind = ? AND circuit_id = ?),
        -- a cause is never older than its transition: skip the rest of a long history
        causes AS (SELECT * FROM events
                   WHERE ts >= (SELECT min(ts) FROM t) AND event_id IN (SELECT caused_by FROM t))
        SELECT epoch_ms(t.ts) AS time, t.from_state, t.to_state, t.reason,
               t.consecutive_failures, t.trips, t.reset_timeout_s, t.health,
               coalesce(e.kind, c.kind) AS cause_kind, coalesce(e.worker_id, c.actor) AS by,
               e.task_id, e.failure_type, e.message, t.caused_by
        FROM t
        LEFT JOIN causes e ON e.event_id = t.caused_by
        LEFT JOIN control c ON c.event_id = t.caused_by
        ORDER BY t.ts
        """,
        [kind, cid],
    )


@_cached
def circuit_outcomes(
    _history: History, key: str, stamp: int, kind: str, cid: str, bucket_ms: int
) -> pd.DataFrame:
    column = _CIRCUIT_COLUMNS[kind]
    return query(
        _history,
        f"SELECT epoch_ms(ts // {bucket_ms} * {bucket_ms}) AS time, kind AS outcome, "
        f"count(*) AS events FROM events WHERE {column} = ? "
        "AND kind IN ('SUCCESS', 'FAILURE') GROUP BY ALL ORDER BY ALL",
        [cid],
    )


# --- failures and recovery ---------------------------------------------------------------


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill in the failure type of untyped FAILUREs from their message, with the core's
    own classifier (only the distinct messages go through Python)."""
    untyped = frame["failure_type"].isna()
    if untyped.any():
        messages = frame.loc[untyped, "message"]
        types = {m: str(classify_message(m)) for m in messages.dropna().unique()}
        frame.loc[untyped, "failure_type"] = [
            types.get(m, str(classify_message(None))) if isinstance(m, str) else
            str(classify_message(None)) for m in messages
        ]  # fmt: skip
    return frame.drop(columns="message")


# Untyped FAILUREs are grouped by message, so classifying stays cheap on big histories.
_FAILURES_BY_TYPE = """
    SELECT {group} failure_type, CASE WHEN failure_type IS NULL THEN message END AS message,
           count(*) AS failures
    FROM events WHERE kind = 'FAILURE' GROUP BY ALL
"""


@_cached
def failure_rates_by_kind(
    _history: History, key: str, stamp: int, bucket_ms: int, core: CoreSettings
) -> pd.DataFrame:
    """Per bucket: the failures counted on each circuit kind (the core's attribution by
    failure type) over all outcomes."""
    group = f"epoch_ms(ts // {bucket_ms} * {bucket_ms}) AS time,"
    failures = _typed(query(_history, _FAILURES_BY_TYPE.format(group=group)))
    attribution = core.circuits.attribution
    failures["circuit_kind"] = [
        str(attribution.circuit_for(FailureType(t))) for t in failures["failure_type"]
    ]
    failures = failures.groupby(["time", "circuit_kind"], as_index=False)["failures"].sum()
    outcomes = query(
        _history,
        f"SELECT epoch_ms(ts // {bucket_ms} * {bucket_ms}) AS time, count(*) AS outcomes "
        "FROM events WHERE kind IN ('SUCCESS', 'FAILURE') GROUP BY ALL",
    )
    rates = failures.merge(outcomes, on="time")
    rates["failure_rate"] = rates["failures"] / rates["outcomes"]
    return rates.sort_values(["time", "circuit_kind"]).reset_index(drop=True)


@_cached
def top_failure_types(_history: History, key: str, stamp: int, limit: int = 10):
    failures = _typed(query(_history, _FAILURES_BY_TYPE.format(group="")))
    top = failures.groupby("failure_type", as_index=False)["failures"].sum()
    top = top.sort_values(["failures", "failure_type"], ascending=[False, True])
    return top.head(limit).reset_index(drop=True)


@_cached
def failure_heatmap(_history: History, key: str, stamp: int) -> pd.DataFrame:
    """Failure rate per hardware class x task type (over all outcomes)."""
    return query(
        _history,
        "SELECT hardware_class, task_type, count(*) FILTER (WHERE kind = 'FAILURE') AS failures, "
        "count(*) AS outcomes, failures / outcomes AS failure_rate FROM events "
        "WHERE kind IN ('SUCCESS', 'FAILURE') GROUP BY ALL ORDER BY ALL",
    )


@_cached
def commands_by_strategy(_history: History, key: str, stamp: int, bucket_ms: int):
    return query(
        _history,
        f"SELECT epoch_ms(ts // {bucket_ms} * {bucket_ms}) AS time, strategy, "
        "count(*) AS commands FROM commands GROUP BY ALL ORDER BY ALL",
    )


@_cached
def strategy_success(_history: History, key: str, stamp: int, by: str) -> pd.DataFrame:
    """Each strategy's measured success rate (the attempt's outcome, `recovery_outcomes`)
    per failure type of the failure it answered, or per hardware class it ran on."""
    rows = query(
        _history,
        """
        SELECT r.strategy, e.failure_type,
               CASE WHEN e.failure_type IS NULL THEN e.message END AS message,
               coalesce(r.outcome_hardware_class, e.hardware_class) AS hardware_class,
               count(*) AS commands,
               count(*) FILTER (WHERE r.outcome_kind = 'SUCCESS') AS succeeded,
               count(*) FILTER (WHERE r.outcome_kind IS NOT NULL) AS finished
        FROM recovery_outcomes r JOIN commands c USING (command_id)
        LEFT JOIN events e ON e.event_id = c.caused_by
        GROUP BY ALL
        """,
    )
    rows = _typed(rows)
    rates = rows.groupby(["strategy", by], as_index=False, dropna=False)[
        ["commands", "succeeded", "finished"]
    ].sum()
    finished = rates["finished"].where(rates["finished"] > 0)
    rates["success_rate"] = rates["succeeded"] / finished
    return rates.sort_values(["strategy", by]).reset_index(drop=True)


@_cached
def recent_commands(_history: History, key: str, stamp: int, limit: int = 500):
    """The newest recovery commands, one row each, with the outcome of the attempt each
    one asked for (`recovery_outcomes`; none yet while that attempt runs)."""
    return query(
        _history,
        """
        SELECT epoch_ms(c.ts) AS time, c.task_id, c.task_type, c.worker_id, c.strategy,
               c.attempt, coalesce(r.outcome_kind, 'no outcome yet') AS outcome,
               epoch_ms(r.outcome_ts) AS outcome_time, r.outcome_worker_id AS ran_on,
               r.outcome_failure_type AS failed_with, c.target_worker_id AS target_worker,
               c.target_hardware_class AS target_class, c.delay_s, c.reason, c.command_id
        FROM commands c LEFT JOIN recovery_outcomes r USING (command_id)
        ORDER BY c.ts DESC, c.command_id LIMIT ?
        """,
        [limit],
    )


# --- the fleet as the core counts it ------------------------------------------------------
# Workers, capacity and circuits at a moment are the figures the core published (the
# history's `circuit_figures`, through `History`), never re-derived here.


@_cached
def workers(_history: History, key: str, stamp: int) -> dict[str, dict[str, Any]]:
    """Each known worker now, as the core's workers_view gives it (History.workers)."""
    return _history.workers()


@_cached
def capacity(_history: History, key: str, stamp: int) -> dict[str, dict[str, Any]]:
    """Available workers per hardware class now, as the core's capacity_view gives it."""
    return _history.capacity()


@_cached
def fleet_at(_history: History, key: str, stamp: int, at: int) -> dict[str, Any]:
    """The fleet at `at`: {"circuits" (the API document), "capacity"}, from the newest
    figures the core had published by then."""
    return {"circuits": _history.circuits_at(at), "capacity": _history.capacity(at)}


def workers_table(workers: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The core's workers as a table: live ones first, then by id."""
    table = pd.DataFrame(
        [{"worker_id": worker_id, **fields} for worker_id, fields in workers.items()],
        columns=["worker_id", "hardware_class", "status", "state", "health_percentage",
                 "available", "last_seen", "silent_s"],
    )  # fmt: skip
    table["last_seen"] = pd.to_datetime(table["last_seen"], unit="ms")
    table = table.sort_values(["status", "worker_id"], kind="stable")
    return table.reset_index(drop=True)


# --- workers -----------------------------------------------------------------------------


@_cached
def tasks_in_flight(_history: History, key: str, stamp: int, now: int) -> pd.DataFrame:
    """Tasks whose newest event (in the newest hour) is a start or a checkpoint."""
    return query(
        _history,
        """
        SELECT task_id, arg_max(task_type, seq) AS task_type,
               arg_max(worker_id, seq) AS worker_id, arg_max(kind, seq) AS last_event,
               epoch_ms(max(ts)) AS last_seen
        FROM events WHERE ts >= ? AND task_id IS NOT NULL AND kind <> 'HEARTBEAT'
        GROUP BY task_id HAVING last_event IN ('TASK_STARTED', 'CHECKPOINT')
        ORDER BY worker_id, task_id
        """,
        [now - HOUR_MS],
    )


@_cached
def newest_checkpoints(_history: History, key: str, stamp: int, limit: int = 50):
    return query(
        _history,
        "SELECT epoch_ms(ts) AS time, task_id, task_type, worker_id, checkpoint_seq, "
        "octet_length(checkpoint_state) AS state_bytes FROM checkpoints "
        "ORDER BY ts DESC LIMIT ?",
        [limit],
    )


# --- time travel -------------------------------------------------------------------------


@_cached
def time_span(_history: History, key: str, stamp: int) -> tuple[int, int]:
    frame = query(_history, "SELECT min(ts) AS lo, max(ts) AS hi FROM events")
    return int(frame["lo"][0]), int(frame["hi"][0])


@_cached
def states_as_of(_history: History, key: str, stamp: int, at: int) -> pd.DataFrame:
    """Each circuit's newest transition at or before `at`, as the core recorded it."""
    return query(
        _history,
        "SELECT circuit_kind AS kind, circuit_id AS circuit, to_state AS state, health, "
        "epoch_ms(ts) AS since, reason FROM circuit_transitions WHERE ts <= ? "
        "QUALIFY row_number() OVER (PARTITION BY circuit_kind, circuit_id "
        "ORDER BY ts DESC, event_id DESC) = 1 ORDER BY kind, circuit",
        [at],
    )


@_cached
def health_as_of(_history: History, key: str, stamp: int, at: int) -> pd.DataFrame:
    return query(
        _history,
        "SELECT epoch_ms(ts) AS time, overall_health, average_health, open_circuits, "
        "half_open_circuits, total_circuits FROM health_snapshots WHERE ts <= ? "
        "ORDER BY ts",
        [at],
    )


@_cached
def worst_moment(_history: History, key: str, stamp: int) -> dict[str, Any] | None:
    """The health snapshot (the core's figures at a boundary) with the lowest overall
    health; ties: the most open circuits, then the earliest. None without snapshots."""
    frame = query(
        _history,
        "SELECT ts, overall_health, open_circuits, half_open_circuits FROM health_snapshots "
        "ORDER BY overall_health, open_circuits DESC, ts LIMIT 1",
    )
    if frame.empty:
        return None
    row = frame.iloc[0]
    return {
        "ts": int(row["ts"]),
        "overall_health": float(row["overall_health"]),
        "open_circuits": int(row["open_circuits"]),
        "half_open_circuits": int(row["half_open_circuits"]),
    }


_LEARNED = re.compile(r"([A-Z_]+) (\d+)/(\d+)")


@_cached
def adaptive_choices(_history: History, key: str, stamp: int) -> pd.DataFrame:
    """What the adaptive ladders learned, per failure type, hardware class and strategy:
    the trials and successes the core counted, as the newest adaptive command naming that
    strategy carries them in its reason (`adaptive: A 3/20, B 18/20 -> B; ...`); how many
    adaptive commands chose it, and when it was chosen last."""
    rows = query(
        _history,
        """
        SELECT c.ts, c.strategy, c.reason, e.failure_type,
               CASE WHEN e.failure_type IS NULL THEN e.message END AS message, e.hardware_class
        FROM commands c JOIN events e ON e.event_id = c.caused_by
        WHERE c.reason LIKE 'adaptive: %'
        ORDER BY c.ts, c.command_id
        """,
    )
    if rows.empty:
        return pd.DataFrame()
    learned: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in _typed(rows).itertuples(index=False):
        table = row.reason.removeprefix("adaptive: ").split(" -> ")[0]
        for strategy, successes, trials in _LEARNED.findall(table):
            entry = learned.setdefault(
                (row.failure_type, row.hardware_class, strategy),
                {"chosen": 0, "last_chosen": None},
            )
            entry.update(trials=int(trials), successes=int(successes), as_of=row.ts)
            if strategy == row.strategy:
                entry["chosen"] += 1
                entry["last_chosen"] = row.ts
    rows = [
        {"failure_type": f, "hardware_class": c, "strategy": s, **v}
        for (f, c, s), v in learned.items()
    ]
    frame = pd.DataFrame(rows)
    for column in ("as_of", "last_chosen"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    return frame[["failure_type", "hardware_class", "strategy", "trials", "successes",
                  "chosen", "last_chosen", "as_of"]]  # fmt: skip
