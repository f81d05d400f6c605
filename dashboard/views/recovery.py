"""Recovery: the commands sent, by strategy over time, and how well each strategy works
per failure type and per hardware class (from `recovery_outcomes`)."""

from __future__ import annotations

import streamlit as st

from .. import charts, data
from .circuits import _bucket_ms
from .common import Context, context, live


def render() -> None:
    st.title("Recovery")
    ctx = context()
    if ctx is not None:
        live(ctx, _body)


def _body(ctx: Context) -> None:
    h, key, stamp = ctx.history, ctx.key, ctx.stamp
    commands = data.commands_by_strategy(h, key, stamp, _bucket_ms(ctx))
    if commands.empty:
        st.success("No recovery command was needed in this history.")
        return
    totals = commands.groupby("strategy")["commands"].sum().sort_values(ascending=False)
    cols = st.columns(3)
    cols[0].metric("Recovery commands", int(totals.sum()))
    cols[1].metric("Most used strategy", str(totals.index[0]))
    cols[2].metric("Escalations", int(totals.get("ESCALATION", 0)))
    charts.show(charts.commands_by_strategy(commands))
    for by in ("failure_type", "hardware_class"):
        rates = data.strategy_success(h, key, stamp, by)
        st.subheader(f"Success rate per {by.replace('_', ' ')}")
        if rates.empty:
            st.write("No command has an outcome yet.")
            continue
        charts.show(charts.success_rates(rates, by))
        st.dataframe(
            rates,
            hide_index=True,
            column_config={
                "success_rate": st.column_config.NumberColumn("success rate", format="percent")
            },
        )
