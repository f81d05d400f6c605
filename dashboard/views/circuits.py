"""Circuits (`/circuit-breakers`): every circuit, filtered and searched; one circuit's
state timeline, outcomes, transitions with their causes, and current backoff."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import charts, data
from ..charts import STATE_ORDER
from .common import Context, clock, context, duration, live

KINDS = ["worker", "hardware_class", "task_type"]


def render() -> None:
    st.title("Circuit breakers")
    ctx = context()
    if ctx is not None:
        live(ctx, _body)


def _body(ctx: Context) -> None:
    table = data.circuits(ctx.history, ctx.key, ctx.stamp)
    left, middle, right = st.columns([1, 1, 2])
    kinds = left.multiselect("Kind", KINDS, default=KINDS, key="circuit_kinds")
    states = middle.multiselect("State", STATE_ORDER, default=STATE_ORDER, key="circuit_states")
    search = right.text_input("Search", placeholder="circuit id, e.g. cuda or worker-07",
                              key="circuit_search")  # fmt: skip
    shown = table[table["kind"].isin(kinds) & table["state"].isin(states)]
    if search.strip():
        shown = shown[shown["circuit"].str.contains(search.strip(), case=False, regex=False)]
    st.caption(f"{len(shown)} of {len(table)} circuits, least healthy first")
    st.dataframe(
        shown[
            [
                "kind",
                "circuit",
                "state",
                "health_percentage",
                "total_successes",
                "total_failures",
                "since",
                "reason",
            ]
        ],
        hide_index=True,
        column_config={
            "health_percentage": st.column_config.ProgressColumn(
                "health", min_value=0, max_value=100, format="%.0f%%"
            )
        },
    )
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
        st.dataframe(transitions, hide_index=True)


def _bucket_ms(ctx: Context) -> int:
    """About a hundred buckets over the history, in whole minutes."""
    lo, hi = data.time_span(ctx.history, ctx.key, ctx.stamp)
    return max(1, (hi - lo) // 100 // data.MINUTE_MS) * data.MINUTE_MS
