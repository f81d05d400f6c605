"""Workers: who is live and who is lost, when each was last seen, the tasks in flight and
the newest checkpoints."""

from __future__ import annotations

import streamlit as st

from .. import data
from .common import Context, context, live


def render() -> None:
    st.title("Workers")
    ctx = context()
    if ctx is not None:
        live(ctx, _body)


def _body(ctx: Context) -> None:
    h, key, stamp = ctx.history, ctx.key, ctx.stamp
    now = ctx.now()
    timeout_s = ctx.settings.recovery.heartbeat_timeout_s
    fleet = data.workers(h, key, stamp, now, timeout_s)
    in_flight = data.tasks_in_flight(h, key, stamp, now)
    lost = fleet[fleet["status"] == "lost"]
    cols = st.columns(3)
    cols[0].metric("Live workers", int((fleet["status"] == "live").sum()))
    cols[1].metric("Lost workers", len(lost))
    cols[2].metric("Tasks in flight", len(in_flight))
    st.caption(f"Lost: no event for more than {timeout_s:g} s (recovery.heartbeat_timeout_s).")
    if not lost.empty:
        st.subheader("Lost workers")
        st.dataframe(lost, hide_index=True)
    st.subheader("All workers")
    st.dataframe(fleet, hide_index=True)
    left, right = st.columns(2)
    with left:
        st.subheader("Tasks in flight")
        st.caption("Active in the newest hour, last seen starting or checkpointing.")
        st.dataframe(in_flight, hide_index=True)
    with right:
        st.subheader("Newest checkpoints")
        st.dataframe(data.newest_checkpoints(h, key, stamp), hide_index=True)
