"""Failures: rates over time by circuit kind, the top failure types, and where they hit
(hardware class x task type)."""

from __future__ import annotations

import streamlit as st

from .. import charts, data
from .circuits import _bucket_ms
from .common import Context, context, live, show_table


def render() -> None:
    st.title("Failures")
    ctx = context()
    if ctx is not None:
        live(ctx, _body)


def _body(ctx: Context) -> None:
    h, key, stamp = ctx.history, ctx.key, ctx.stamp
    rates = data.failure_rates_by_kind(h, key, stamp, _bucket_ms(ctx), ctx.settings.core)
    top = data.top_failure_types(h, key, stamp)
    if top.empty:
        st.success("No failure recorded in this history.")
        return
    cols = st.columns([1, 2, 1])  # the middle one holds a failure type's long name
    cols[0].metric("Failures", int(top["failures"].sum()))
    cols[1].metric("Most frequent", str(top["failure_type"].iloc[0]))
    cols[2].metric("Failure types", len(top))
    charts.show(charts.failure_rates(rates))
    left, right = st.columns([1, 2])
    with left:
        charts.show(charts.top_failure_types(top))
    with right:
        heat = data.failure_heatmap(h, key, stamp)
        charts.show(charts.heatmap(heat))
    with st.expander("Failure rate per hardware class and task type (table)"):
        show_table(heat, config={"failure_rate": st.column_config.NumberColumn(format="percent")})
    show_table(top)
