"""Overview: what is broken, since when, and what is being done about it."""

from __future__ import annotations

import streamlit as st

from .. import charts, data
from .common import Context, circuit_link, clock, context, duration, live

BROKEN = ("OPEN", "FORCED_OPEN", "HALF_OPEN")


def render() -> None:
    st.title("Fleet overview")
    ctx = context()
    if ctx is not None:
        live(ctx, _body)


def _body(ctx: Context) -> None:
    h, key, stamp = ctx.history, ctx.key, ctx.stamp
    doc = data.circuit_breakers(h, key, stamp)
    aggregate = doc["aggregate"]
    table = data.circuits(h, key, stamp)
    escalations = data.active_escalations(h, key, stamp)
    st.caption(f"History: {ctx.source.describe()} · as of {clock(doc['timestamp'])}")

    cols = st.columns(5)
    cols[0].metric("Overall health", f"{aggregate['overall_health']:.1f}%")
    cols[1].metric("Average health", f"{aggregate['average_health']:.1f}%")
    cols[2].metric("Open circuits", aggregate["open_circuits"])
    cols[3].metric("Half-open circuits", aggregate["half_open_circuits"])
    cols[4].metric("Active escalations", len(escalations))

    left, middle, right = st.columns([1, 1, 2])
    charts.show(charts.health_gauge(aggregate["overall_health"], "Overall health"), left)
    charts.show(charts.health_gauge(aggregate["average_health"], "Average health"), middle)
    if len(table):
        charts.show(charts.circuits_by_state(table), right)

    st.subheader("Broken now")
    broken = table[table["state"].isin(BROKEN)].copy()
    if broken.empty:
        st.success(f"All {aggregate['total_circuits']} circuits are closed.")
    else:
        broken["for"] = broken["for_s"].map(duration)
        broken["link"] = [
            circuit_link(k, c) for k, c in zip(broken["kind"], broken["circuit"], strict=True)
        ]
        st.dataframe(
            broken[
                [
                    "kind",
                    "circuit",
                    "state",
                    "health_percentage",
                    "since",
                    "for",
                    "reason",
                    "reset_timeout_s",
                    "link",
                ]
            ],
            hide_index=True,
            key="broken_circuits",
            column_config={
                "health_percentage": st.column_config.ProgressColumn(
                    "health", min_value=0, max_value=100, format="%.0f%%"
                ),
                "reset_timeout_s": st.column_config.NumberColumn("backoff (s)"),
                "link": st.column_config.LinkColumn("detail", display_text="open"),
            },
        )

    st.subheader("Active escalations")
    if escalations.empty:
        st.write("No task is waiting for a person.")
    else:
        st.dataframe(escalations, hide_index=True, key="escalations")

    incidents, activity = st.columns(2)
    with incidents:
        st.subheader("Circuits that tripped")
        tripped = table[table["since_ms"].notna()]
        if tripped.empty:
            st.write("No circuit has changed state.")
        else:
            st.dataframe(
                tripped[["kind", "circuit", "state", "openings", "trips", "since", "reason"]],
                hide_index=True,
                key="tripped",
                column_config={
                    "openings": st.column_config.NumberColumn(help="times it opened, ever"),
                    "trips": st.column_config.NumberColumn(
                        "trips now", help="consecutive openings since it last closed"
                    ),
                },
            )
    with activity:
        st.subheader("Recent transitions")
        st.dataframe(data.recent_transitions(h, key, stamp), hide_index=True, key="transitions")

    st.subheader("What was done: recovery by task type")
    recovery = data.recovery_by_task_type(h, key, stamp)
    if recovery.empty:
        st.write("No recovery command has been needed.")
    else:
        st.dataframe(recovery, hide_index=True)

    per_minute = data.events_per_minute(h, key, stamp, doc["timestamp"])
    charts.show(charts.events_per_minute(per_minute))
