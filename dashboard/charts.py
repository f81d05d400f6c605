"""Plotly figures. Backgrounds stay transparent and text colours are left to Streamlit's
theme (`st.plotly_chart(theme="streamlit")`), so each reads in light and dark mode; the
state colours are mid-tones that keep their contrast on both."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from .stamps import STRFTIME

STATE_COLORS = {
    "CLOSED": "#2e9e5b",
    "HALF_OPEN": "#e0a526",
    "OPEN": "#d6453d",
    "FORCED_OPEN": "#8e44ad",
}
STATE_ORDER = ["CLOSED", "HALF_OPEN", "OPEN", "FORCED_OPEN"]
OUTCOME_COLORS = {"SUCCESS": "#2e9e5b", "FAILURE": "#d6453d"}
EVENT_COLORS = {
    **OUTCOME_COLORS,
    "TASK_STARTED": "#4c78a8",
    "CHECKPOINT": "#9e7fc9",
    "HEARTBEAT": "#9fb3c8",
}


def show(fig: go.Figure, where: DeltaGenerator | None = None) -> None:
    """Draw `fig` in Streamlit's theme, without the toolbar over the titles."""
    (where or st).plotly_chart(fig, theme="streamlit", config={"displayModeBar": False})


def _tidy(fig: go.Figure, height: int = 320, margin: int = 10) -> go.Figure:
    fig.update_layout(
        height=height,
        margin={"l": 10 + margin, "r": 10 + margin, "t": 40 + margin, "b": 10},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        legend={"orientation": "h", "y": -0.2},
    )
    fig.update_xaxes(title=None)  # the title says what the axis is; it crowded the legend
    return fig


def _over_time(fig: go.Figure, height: int = 320) -> go.Figure:
    """A chart over time: hover labels in the dashboard's one time format."""
    fig.update_xaxes(hoverformat=STRFTIME)
    return _tidy(fig, height)


def health_gauge(value: float, title: str) -> go.Figure:
    fig = go.Figure(
        go.Indicator(
            mode="gauge+number",
            value=value,
            number={"suffix": "%", "valueformat": ".1f"},
            title={"text": title},
            gauge={
                "axis": {"range": [0, 100]},
                "bar": {"color": "#4c78a8"},
                "steps": [
                    {"range": [0, 50], "color": "rgba(214,69,61,0.35)"},
                    {"range": [50, 80], "color": "rgba(224,165,38,0.35)"},
                    {"range": [80, 100], "color": "rgba(46,158,91,0.35)"},
                ],
            },
        )
    )
    return _tidy(fig, 250, margin=25)


def circuits_by_state(table: pd.DataFrame) -> go.Figure:
    counts = table.groupby(["kind", "state"]).size().reset_index(name="circuits")
    fig = px.bar(
        counts,
        x="kind",
        y="circuits",
        color="state",
        color_discrete_map=STATE_COLORS,
        category_orders={"state": STATE_ORDER},
        title="Circuits by state and kind",
    )
    return _tidy(fig)


def events_per_minute(frame: pd.DataFrame) -> go.Figure:
    fig = px.bar(
        frame,
        x="minute",
        y="events",
        color="kind",
        color_discrete_map=EVENT_COLORS,
        category_orders={"kind": list(EVENT_COLORS)},
        title="Events per minute",
    )
    return _over_time(fig)


def state_timeline(transitions: pd.DataFrame, now: pd.Timestamp) -> go.Figure:
    """Each state the circuit was in, as a bar from when it entered to when it left."""
    rows = []
    previous_time, previous_state = None, "CLOSED"
    for time, state in zip(transitions["time"], transitions["to_state"], strict=True):
        if previous_time is not None:
            rows.append({"state": previous_state, "start": previous_time, "end": time})
        previous_time, previous_state = time, state
    if previous_time is not None:
        rows.append({"state": previous_state, "start": previous_time, "end": now})
    frame = pd.DataFrame(rows, columns=["state", "start", "end"])
    frame["circuit"] = "state"
    fig = px.timeline(
        frame,
        x_start="start",
        x_end="end",
        y="circuit",
        color="state",
        color_discrete_map=STATE_COLORS,
        category_orders={"state": STATE_ORDER},
        title="State timeline",
    )
    fig.update_yaxes(visible=False)
    return _over_time(fig, 200)


def outcomes_over_time(frame: pd.DataFrame) -> go.Figure:
    fig = px.bar(
        frame,
        x="time",
        y="events",
        color="outcome",
        color_discrete_map=OUTCOME_COLORS,
        title="Failures and successes",
    )
    return _over_time(fig)


def failure_rates(frame: pd.DataFrame) -> go.Figure:
    fig = px.line(
        frame,
        x="time",
        y="failure_rate",
        color="circuit_kind",
        markers=True,
        title="Failure rate by the circuit kind the failure counts on",
    )
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return _over_time(fig)


def top_failure_types(frame: pd.DataFrame) -> go.Figure:
    fig = px.bar(
        frame.iloc[::-1], x="failures", y="failure_type", orientation="h", title="Top failure types"
    )
    return _tidy(fig)


def heatmap(frame: pd.DataFrame) -> go.Figure:
    grid = frame.pivot(index="hardware_class", columns="task_type", values="failure_rate")
    fig = px.imshow(
        grid,
        color_continuous_scale="OrRd",
        zmin=0,
        aspect="auto",
        text_auto=".0%",
        title="Failure rate: hardware class x task type",
    )
    return _tidy(fig, 360)


def commands_by_strategy(frame: pd.DataFrame) -> go.Figure:
    fig = px.bar(frame, x="time", y="commands", color="strategy", title="Commands by strategy")
    return _over_time(fig)


def success_rates(frame: pd.DataFrame, by: str) -> go.Figure:
    grid = frame.pivot(index="strategy", columns=by, values="success_rate")
    fig = px.imshow(
        grid,
        color_continuous_scale="RdYlGn",
        zmin=0,
        zmax=1,
        aspect="auto",
        text_auto=".0%",
        title=f"Measured success rate: strategy x {by.replace('_', ' ')}",
    )
    return _tidy(fig, 380)


def health_over_time(frame: pd.DataFrame, at: pd.Timestamp) -> go.Figure:
    fig = px.line(
        frame, x="time", y="overall_health", title="Overall health over the history (dotted: then)"
    )
    fig.update_yaxes(range=[0, 100])
    fig.add_vline(x=at, line_dash="dot")
    return _over_time(fig, 260)


def tuning_scores(frame: pd.DataFrame) -> go.Figure:
    fig = px.bar(
        frame,
        x="candidate",
        y="score",
        color="role",
        color_discrete_map={"current": "#4c78a8", "candidate": "#9ecae9", "best": "#2e9e5b"},
        title="Score of the current settings and each candidate (higher is better)",
    )
    return _tidy(fig, 360)
