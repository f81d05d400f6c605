"""Overview: the alerts firing now, who can take work, what is broken and since when, and
what is being done."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import charts, data
from .common import (
    Context,
    capacity_headline,
    circuit_link,
    clock,
    context,
    duration,
    health_column,
    live,
    show_table,
    time_column,
)

BROKEN = ("OPEN", "FORCED_OPEN", "HALF_OPEN")
OVERALL_HELP = (
    "100 - (open + 0.4 * half-open) / all circuits * 100 (forced-open counts as open). "
    "Every circuit weighs the same, so a whole hardware class out among dozens of worker "
    "circuits moves it little: read the capacity above for what can run."
)


def render() -> None:
    st.title("Fleet overview")
    ctx = context()
    if ctx is not None:
        live(ctx, _body)


def _body(ctx: Context) -> None:
    h, key, stamp = ctx.history, ctx.key, ctx.stamp
    doc = data.circuit_breakers(h, key, stamp)
    aggregate = doc["aggregate"]
    circuits = data.circuits(h, key, stamp)
    escalations = data.active_escalations(h, key, stamp)
    st.caption(f"History: {ctx.source.describe()} · as of {clock(doc['timestamp'])}")

    _firing_alerts(data.firing_alerts(h, key, stamp), doc["timestamp"])
    capacity_headline(data.capacity(h, key, stamp))

    st.subheader("Circuit health")
    cols = st.columns(5)
    cols[0].metric("Overall health", f"{aggregate['overall_health']:.1f}%", help=OVERALL_HELP)
    cols[1].metric("Average health", f"{aggregate['average_health']:.1f}%",
                   help="The mean of every circuit's health (0-100).")  # fmt: skip
    cols[2].metric("Open circuits", aggregate["open_circuits"])
    cols[3].metric("Half-open circuits", aggregate["half_open_circuits"])
    cols[4].metric("Active escalations", len(escalations))

    left, middle, right = st.columns([1, 1, 2])
    charts.show(charts.health_gauge(aggregate["overall_health"], "Overall health"), left)
    charts.show(charts.health_gauge(aggregate["average_health"], "Average health"), middle)
    if len(circuits):
        charts.show(charts.circuits_by_state(circuits), right)

    st.subheader("Broken now")
    broken = circuits[circuits["state"].isin(BROKEN)].copy()
    if broken.empty:
        st.success(f"All {aggregate['total_circuits']} circuits are closed.")
    else:
        broken["for"] = broken["for_s"].map(duration)
        broken["link"] = [
            circuit_link(k, c) for k, c in zip(broken["kind"], broken["circuit"], strict=True)
        ]
        # The long `reason` goes last, so the columns that matter are never scrolled away.
        columns = ["kind", "circuit", "state", "health_percentage", "for", "since",
                   "reset_timeout_s", "link", "reason"]  # fmt: skip
        show_table(
            broken[columns],
            times=["since"],
            key="broken_circuits",
            config={
                "health_percentage": health_column(),
                "reset_timeout_s": st.column_config.NumberColumn("backoff (s)"),
                "link": st.column_config.LinkColumn("detail", display_text="open"),
            },
        )

    st.subheader("Active escalations")
    if escalations.empty:
        st.write("No task is waiting for a person.")
    else:
        show_table(escalations, times=["escalated_at"], key="escalations")

    st.subheader("Circuits that tripped")
    tripped = circuits[circuits["since_ms"].notna()]
    if tripped.empty:
        st.write("No circuit has changed state.")
    else:
        show_table(
            tripped[["kind", "circuit", "state", "openings", "trips", "since", "reason"]],
            times=["since"],
            key="tripped",
            config={
                "openings": st.column_config.NumberColumn(help="times it opened, ever"),
                "trips": st.column_config.NumberColumn(
                    "trips now", help="consecutive openings since it last closed"
                ),
                "since": time_column("since", help="when it entered its current state"),
            },
        )
    st.subheader("Recent transitions")
    show_table(data.recent_transitions(h, key, stamp), times=["time"], key="transitions")

    st.subheader("What was done: recovery by task type")
    recovery = data.recovery_by_task_type(h, key, stamp)
    if recovery.empty:
        st.write("No recovery command has been needed.")
    else:
        columns = ["task_type", "commands", "tasks", "first", "latest", "strategies"]
        show_table(recovery[columns], times=["first", "latest"])

    per_minute = data.events_per_minute(h, key, stamp, doc["timestamp"])
    charts.show(charts.events_per_minute(per_minute))


def _firing_alerts(alerts: pd.DataFrame, now_ms: int) -> None:
    """First on the page, and only when there are any: what someone should look at now."""
    if alerts.empty:
        return
    st.subheader("Firing alerts")
    alerts = alerts.copy()
    alerts["for"] = [duration((now_ms - since) / 1000) for since in alerts["since_ms"]]
    show_table(
        alerts[["severity", "rule", "subject", "message", "since", "for"]],
        times=["since"],
        key="firing_alerts",
        config={"severity": st.column_config.TextColumn(help="critical or warning")},
    )
