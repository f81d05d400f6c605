"""Circuits (`/circuit-breakers`): every circuit, filtered and searched; one circuit's
state timeline, outcomes, transitions with their causes, and current backoff."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import charts, data
from ..charts import STATE_ORDER
from .common import (
    MISSING,
    Context,
    clock,
    context,
    duration,
    health_column,
    live,
    show_table,
    time_column,
)

KINDS = ["worker", "hardware_class", "task_type"]


def render() -> None:
    st.title("Circuit breakers")
    ctx = context()
    if ctx is not None:
        live(ctx, _body)


def _body(ctx: Context) -> None:
    table = data.circuits(ctx.history, ctx.key, ctx.stamp)
    left, middle, right = st.columns([3, 4, 2])
    # wrap: every chip whole, on more rows if need be (in a column they would scroll)
    kinds = left.multiselect("Kind", KINDS, default=KINDS, key="circuit_kinds", wrap=True)
    states = middle.multiselect(
        "State", STATE_ORDER, default=STATE_ORDER, key="circuit_states", wrap=True
    )
    search = right.text_input("Search", placeholder="circuit id, e.g. cuda",
                              key="circuit_search")  # fmt: skip
    shown = table[table["kind"].isin(kinds) & table["state"].isin(states)]
    if search.strip():
        shown = shown[shown["circuit"].str.contains(search.strip(), case=False, regex=False)]
    st.caption(f"{len(shown)} of {len(table)} circuits, least healthy first")
    show_table(
        shown[["kind", "circuit", "state", "health_percentage", "total_successes",
               "total_failures", "since", "reason"]],
        times=["since"],
        # Widths that fit every column but the free-text reason (last) on a laptop screen.
        config={
            "kind": st.column_config.TextColumn(width=110),
            "circuit": st.column_config.TextColumn(width=120),
            "state": st.column_config.TextColumn(width=105),
            "health_percentage": health_column(width=130),
            "total_successes": st.column_config.NumberColumn("successes", width=85),
            "total_failures": st.column_config.NumberColumn("failures", width=75),
            "since": time_column(
                "since", help=f"when it entered its current state ({MISSING}: never changed)",
                width=165,
            ),
        },
    )  # fmt: skip
    if shown.empty:
        return
    keys = [f"{k}:{c}" for k, c in zip(shown["kind"], shown["circuit"], strict=True)]
    wanted = st.query_params.get("circuit")
    chosen = st.selectbox(
        "Circuit detail", keys, index=keys.index(wanted) if wanted in keys else 0,
        key="circuit_detail",
    )  # fmt: skip
    if chosen:
        st.query_params["circuit"] = chosen
        _detail(ctx, table, *chosen.split(":", 1))


def _detail(ctx: Context, table: pd.DataFrame, kind: str, cid: str) -> None:
    row = table[(table["kind"] == kind) & (table["circuit"] == cid)].iloc[0]
    now = ctx.now()
    st.subheader(f"{kind} {cid}")
    cols = st.columns(4)
    cols[0].metric("State", row["state"])
    cols[1].metric("Health", f"{row['health_percentage']:.0f}%")
    if pd.notna(row["since_ms"]):
        cols[2].metric("In this state for", duration(row["for_s"]))
        cols[3].metric("Current backoff", f"{row['reset_timeout_s']:g} s")
        if row["state"] == "OPEN":
            half_open_at = int(row["since_ms"] + row["reset_timeout_s"] * 1000)
            st.write(f"Probes are let through again at {clock(half_open_at)}.")
    else:
        cols[2].metric("In this state for", "always")
    transitions = data.circuit_transitions(ctx.history, ctx.key, ctx.stamp, kind, cid)
    if not transitions.empty:
        charts.show(charts.state_timeline(transitions, pd.Timestamp(now, unit="ms")))
    bucket_ms = _bucket_ms(ctx)
    outcomes = data.circuit_outcomes(ctx.history, ctx.key, ctx.stamp, kind, cid, bucket_ms)
    if not outcomes.empty:
        charts.show(charts.outcomes_over_time(outcomes))
    st.markdown("**Transitions and the events that caused them**")
    if transitions.empty:
        st.write("This circuit has never changed state.")
    else:
        # What happened first, the long free text (message, ids) last.
        columns = ["time", "from_state", "to_state", "cause_kind", "by", "reason",
                   "consecutive_failures", "trips", "reset_timeout_s", "health", "task_id",
                   "failure_type", "message", "caused_by"]  # fmt: skip
        show_table(
            transitions[columns],
            times=["time"],
            config={
                "cause_kind": st.column_config.TextColumn("cause"),
                "consecutive_failures": st.column_config.NumberColumn("failures in a row"),
                "reset_timeout_s": st.column_config.NumberColumn("backoff (s)"),
                "health": health_column(),
            },
        )


def _bucket_ms(ctx: Context) -> int:
    """About a hundred buckets over the history, in whole minutes."""
    lo, hi = data.time_span(ctx.history, ctx.key, ctx.stamp)
    return max(1, (hi - lo) // 100 // data.MINUTE_MS) * data.MINUTE_MS
