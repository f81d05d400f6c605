"""Recovery: the commands sent, by strategy over time, each command with the outcome of the
attempt it asked for, and how well each strategy works per failure type and per hardware
class (from `recovery_outcomes`)."""

from __future__ import annotations

import streamlit as st

from .. import charts, data
from .circuits import _bucket_ms
from .common import Context, context, live, show_table, time_column

COMMANDS_SHOWN = 500
OUTCOME_HELP = (
    "How the attempt this command started ended: the SUCCESS or FAILURE that carries the "
    "command's id. No outcome yet: that attempt has not ended, or never ran (an "
    "ESCALATION hands the task to a person)."
)


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
    cols = st.columns([1, 2, 1])  # the middle one holds a strategy's long name
    cols[0].metric("Recovery commands", int(totals.sum()))
    cols[1].metric("Most used strategy", str(totals.index[0]))
    cols[2].metric("Escalations", int(totals.get("ESCALATION", 0)))
    charts.show(charts.commands_by_strategy(commands))
    _commands(ctx)
    _adaptive(ctx)
    for by in ("failure_type", "hardware_class"):
        rates = data.strategy_success(h, key, stamp, by)
        st.subheader(f"Success rate per {by.replace('_', ' ')}")
        if rates.empty:
            st.write("No command has an outcome yet.")
            continue
        charts.show(charts.success_rates(rates, by))
        show_table(
            rates,
            config={
                "success_rate": st.column_config.NumberColumn("success rate", format="percent")
            },
        )


ADAPTIVE_HELP = (
    "With [recovery] adaptive = true, the core counts each recovery command's outcome (the "
    "next SUCCESS or FAILURE of its task with the command's attempt) per failure type, "
    "hardware class and strategy, and picks the rung with the best (successes + 1) / "
    "(trials + 2) once the usual rung has adaptive_min_samples trials. These are its "
    "counts, as its newest adaptive command there carried them."
)


def _adaptive(ctx: Context) -> None:
    learned = data.adaptive_choices(ctx.history, ctx.key, ctx.stamp)
    st.subheader("Adaptive ladders", help=ADAPTIVE_HELP)
    if learned.empty:
        st.write("No command was chosen by the adaptive ladders (off, or still exploring).")
        return
    show_table(
        learned,
        times=["last_chosen", "as_of"],
        key="adaptive",
        config={
            "chosen": st.column_config.NumberColumn("chosen", help="adaptive commands"),
            "last_chosen": time_column("chosen last"),
            "as_of": time_column("counts as of"),
        },
    )


def _commands(ctx: Context) -> None:
    st.subheader("Commands and their outcomes", help=OUTCOME_HELP)
    shown = data.recent_commands(ctx.history, ctx.key, ctx.stamp, COMMANDS_SHOWN)
    left, right = st.columns(2)
    strategies = sorted(shown["strategy"].unique())
    outcomes = sorted(shown["outcome"].unique())
    strategy = left.selectbox("Strategy", ["all", *strategies], key="command_strategy")
    outcome = right.selectbox("Outcome", ["all", *outcomes], key="command_outcome")
    if strategy != "all":
        shown = shown[shown["strategy"] == strategy]
    if outcome != "all":
        shown = shown[shown["outcome"] == outcome]
    st.caption(f"{len(shown)} commands, newest first (the newest {COMMANDS_SHOWN} of the history).")
    show_table(
        shown,
        times=["time", "outcome_time"],
        key="commands",
        config={
            "time": time_column("sent"),
            "outcome": st.column_config.TextColumn(help=OUTCOME_HELP),
            "outcome_time": time_column("ended"),
            "ran_on": st.column_config.TextColumn("ran on", help="the worker of that attempt"),
            "failed_with": st.column_config.TextColumn("failed with"),
            "target_worker": st.column_config.TextColumn("target worker"),
            "target_class": st.column_config.TextColumn("target class"),
            "delay_s": st.column_config.NumberColumn("delay (s)"),
        },
    )
