"""Workers: who is live and who is lost, each one's circuit and whether it can take work
(the core's state), the tasks in flight and the newest checkpoints."""

from __future__ import annotations

import streamlit as st

from .. import data
from .common import CAPACITY_RULE, Context, context, health_column, live, show_table, time_column

WORKER_COLUMNS = {
    "state": st.column_config.TextColumn("circuit", help="the worker's own circuit"),
    "health_percentage": health_column(help="the worker circuit's health"),
    "available": st.column_config.CheckboxColumn("available", help=CAPACITY_RULE),
    "last_seen": time_column("last seen", help="its newest event, on the broker's clock"),
    "silent_s": st.column_config.NumberColumn("silent (s)", format="%.1f"),
}


def render() -> None:
    st.title("Workers")
    ctx = context()
    if ctx is not None:
        live(ctx, _body)


def _body(ctx: Context) -> None:
    h, key, stamp = ctx.history, ctx.key, ctx.stamp
    now = ctx.now()
    timeout_s = ctx.settings.recovery.heartbeat_timeout_s
    fleet = data.workers_table(data.workers(h, key, stamp))
    in_flight = data.tasks_in_flight(h, key, stamp, now)
    lost = fleet[fleet["status"] == "lost"]
    cols = st.columns(4)
    cols[0].metric("Live workers", int((fleet["status"] == "live").sum()))
    cols[1].metric("Available workers", int(fleet["available"].sum()), help=CAPACITY_RULE)
    cols[2].metric("Lost workers", len(lost))
    cols[3].metric("Tasks in flight", len(in_flight))
    st.caption(
        f"Lost: no event for more than {timeout_s:g} s (recovery.heartbeat_timeout_s), "
        "as the core decided. Circuit and health: each worker's own circuit, as the core "
        "counted them at its last TICK."
    )
    if not lost.empty:
        st.subheader("Lost workers")
        show_table(lost, config=WORKER_COLUMNS, key="lost_workers")
    st.subheader("All workers")
    show_table(fleet, config=WORKER_COLUMNS, key="all_workers")
    st.subheader("Tasks in flight")
    st.caption("Active in the newest hour, last seen starting or checkpointing.")
    show_table(in_flight, times=["last_seen"])
    st.subheader("Newest checkpoints")
    show_table(data.newest_checkpoints(h, key, stamp), times=["time"])
