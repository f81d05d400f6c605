"""Time travel: the fleet as it was at a past moment, opening at the history's worst one.
The recorded transitions and health snapshots show it at once; "Rebuild through the core"
replays the recorded inputs up to that moment through a fresh core, the way the processor
saw them, circuits and capacity per hardware class."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from .. import charts, data, stamps
from .common import Context, capacity_headline, clock, context, health_column, show_table

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
    first, last = _moment(lo), _moment(hi) + timedelta(seconds=1)
    worst = data.worst_moment(h, key, stamp)
    start = last
    if worst is not None:  # open where it was worst, not at the end (usually recovered)
        up_to_second = -(-worst["ts"] // 1000) * 1000  # so the snapshot's moment is included
        start = min(max(_moment(up_to_second), first), last)
    picked = st.slider(
        "Moment",
        min_value=first,
        max_value=last,
        value=start,
        step=timedelta(seconds=1),
        format=stamps.MOMENT,
        key="moment",
    )
    at = int(picked.timestamp() * 1000)
    if worst is not None:
        st.caption(
            f"Opens at the worst moment of the history, {clock(worst['ts'])}: the health "
            f"snapshot with the lowest overall health ({worst['overall_health']:.1f}%, "
            f"{worst['open_circuits']} circuits open; ties go to the most open "
            "circuits, then the earliest). Move the slider for any other moment."
        )
    st.subheader(f"The fleet at {clock(at)}")

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
        show_table(broken, times=["since"], config={"health": health_column()})
    if not snapshots.empty:  # the whole history, so the moment shows against the rest
        whole = data.health_as_of(h, key, stamp, int(last.timestamp() * 1000))
        charts.show(charts.health_over_time(whole, pd.Timestamp(at, unit="ms")))
    with st.expander("States of every circuit that had tripped by then"):
        show_table(states, times=["since"], config={"health": health_column()})

    st.subheader("Rebuilt through the core")
    if st.button("Rebuild through the core", key="rebuild"):
        st.session_state["rebuilt_at"] = at
    if st.session_state.get("rebuilt_at") == at:
        with st.spinner("Replaying the recorded inputs…"):
            views = data.fleet_at(h, key, stamp, at, ctx.settings.core)
        _show_rebuilt(views)
    else:
        st.caption(
            "Replays every recorded input up to this moment through a fresh core: the "
            "circuits and the capacity per hardware class as the core held them."
        )


def _show_rebuilt(views: dict) -> None:
    view = views["circuits"]
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
        show_table(rebuilt, config={"health": health_column()})
    capacity_headline(views["capacity"], title="Capacity then (rebuilt)")
