"""Time travel: the fleet as it was at a past moment. The recorded transitions and health
snapshots show it at once; "Rebuild through the core" replays the recorded inputs up to
that moment through a fresh core, the way the processor saw them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from .. import charts, data
from .common import Context, clock, context

BROKEN = ("OPEN", "FORCED_OPEN", "HALF_OPEN")
SECTIONS = {"workers": "worker", "hardware_classes": "hardware_class", "task_types": "task_type"}


def render() -> None:
    st.title("Time travel")
    ctx = context()
    if ctx is not None:
        _body(ctx)  # a past moment does not change: no live refresh


def _moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).replace(microsecond=0)


def _body(ctx: Context) -> None:
    h, key, stamp = ctx.history, ctx.key, ctx.stamp
    lo, hi = data.time_span(h, key, stamp)
    picked = st.slider(
        "Moment",
        min_value=_moment(lo),
        max_value=_moment(hi) + timedelta(seconds=1),
        value=_moment(hi) + timedelta(seconds=1),
        step=timedelta(seconds=1),
        format="YYYY-MM-DD HH:mm:ss",
        key="moment",
    )
    at = int(picked.timestamp() * 1000)
    st.caption(f"The fleet at {clock(at)}")

    states = data.states_as_of(h, key, stamp, at)
    snapshots = data.health_as_of(h, key, stamp, at)
    broken = states[states["state"].isin(BROKEN)]
    cols = st.columns(3)
    if snapshots.empty:
        cols[0].metric("Overall health then", "100.0%")
    else:
        cols[0].metric("Overall health then", f"{snapshots['overall_health'].iloc[-1]:.1f}%")
    cols[1].metric("Circuits not closed then", len(broken))
    cols[2].metric("Circuits that had tripped by then", len(states))
    st.subheader("Open and half-open circuits then")
    if broken.empty:
        st.write("Every circuit was closed.")
    else:
        st.dataframe(broken, hide_index=True)
    if not snapshots.empty:
        charts.show(charts.health_over_time(snapshots, pd.Timestamp(at, unit="ms")))
    with st.expander("States of every circuit that had tripped by then"):
        st.dataframe(states, hide_index=True)

    st.subheader("Rebuilt through the core")
    if st.button("Rebuild through the core", key="rebuild"):
        st.session_state["rebuilt_at"] = at
    if st.session_state.get("rebuilt_at") == at:
        with st.spinner("Replaying the recorded inputs…"):
            view = data.rebuilt_view(h, key, stamp, at, ctx.settings.core)
        _show_rebuilt(view)
    else:
        st.caption("Replays every recorded input up to this moment through a fresh core.")


def _show_rebuilt(view: dict) -> None:
    aggregate = view["aggregate"]
    cols = st.columns(3)
    cols[0].metric("Overall health (rebuilt)", f"{aggregate['overall_health']:.1f}%")
    cols[1].metric("Average health (rebuilt)", f"{aggregate['average_health']:.1f}%")
    cols[2].metric("Open circuits (rebuilt)", aggregate["open_circuits"])
    rows = [
        {"kind": kind, "circuit": cid, "state": fields["state"],
         "health": fields["health_percentage"]}
        for section, kind in SECTIONS.items()
        for cid, fields in view[section].items()
        if fields["state"] in BROKEN
    ]  # fmt: skip
    rebuilt = pd.DataFrame(rows, columns=["kind", "circuit", "state", "health"])
    if rebuilt.empty:
        st.write("The core finds every circuit closed.")
    else:
        st.dataframe(rebuilt, hide_index=True)
