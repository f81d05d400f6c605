"""Time travel: the fleet as it was at a past moment, opening at the history's worst one:
the figures the core had published by then (each circuit's newest `circuit_figures`), its
capacity per hardware class, the recorded transitions and the health snapshots."""

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

    then = data.fleet_at(h, key, stamp, at)
    view = then["circuits"]
    states = data.states_as_of(h, key, stamp, at)
    broken = _broken(view, states)
    cols = st.columns(4)
    cols[0].metric("Overall health then", f"{view['aggregate']['overall_health']:.1f}%")
    cols[1].metric("Open circuits then", view["aggregate"]["open_circuits"])
    cols[2].metric("Circuits not closed then", len(broken))
    cols[3].metric("Circuits that had tripped by then", len(states))
    st.caption("As the core counted them at its last TICK by then: each circuit's newest figures.")
    capacity_headline(then["capacity"], title="Capacity then")
    st.subheader("Open and half-open circuits then")
    if broken.empty:
        st.write("Every circuit was closed.")
    else:
        show_table(broken, times=["since"], config={"health": health_column()})
    snapshots = data.health_as_of(h, key, stamp, int(last.timestamp() * 1000))
    if not snapshots.empty:  # the whole history, so the moment shows against the rest
        charts.show(charts.health_over_time(snapshots, pd.Timestamp(at, unit="ms")))
    with st.expander("States of every circuit that had tripped by then"):
        show_table(states, times=["since"], config={"health": health_column()})


def _broken(view: dict, states: pd.DataFrame) -> pd.DataFrame:
    """The circuits not CLOSED in `view`, with when they entered that state and why (their
    newest transition by then)."""
    rows = [
        {"kind": kind, "circuit": cid, "state": fields["state"],
         "health": fields["health_percentage"]}
        for section, kind in SECTIONS.items()
        for cid, fields in view[section].items()
        if fields["state"] in BROKEN
    ]  # fmt: skip
    broken = pd.DataFrame(rows, columns=["kind", "circuit", "state", "health"])
    since = states[["kind", "circuit", "since", "reason"]]
    return broken.merge(since, on=["kind", "circuit"], how="left")
