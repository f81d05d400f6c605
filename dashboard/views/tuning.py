"""Tuning: a what-if on the recorded history with the tuner (`processors/offline/tune`), the
current settings against each candidate, and applying one (a CONFIG_CHANGED record)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from faultstream.events.exceptions import FaultstreamError
from faultstream.processors.offline.tune import (
    TunePolicy,
    TuneRound,
    nested,
    parse_grid,
    tune_round,
)

from .. import charts, operations
from .common import Context, context, show_table
from .operate import checked_actor, operator_fields

DEFAULT_GRID = "worker.failure_threshold=3,5,8\nworker.recovery_timeout_s=30,60,120"


def render() -> None:
    st.title("Tuning")
    ctx = context()
    if ctx is not None:
        _body(ctx)


def _label(changes: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in changes.items())


def _body(ctx: Context) -> None:
    st.write(
        "Replay the recorded history under other settings and score each: failures kept "
        "off open circuits, successes refused, detection delay, open time, flapping."
    )
    with st.form("what_if"):
        grid_text = st.text_area("Settings to try (one SETTING=V1,V2,… a line)", DEFAULT_GRID)
        run = st.form_submit_button("Run the what-if")
    if run:
        try:
            policy = TunePolicy(grid=parse_grid(grid_text.splitlines()), processes=1)
            with st.spinner("Replaying the history under each candidate…"):
                history = list(ctx.history.input_records())
                st.session_state["tune_round"] = tune_round(history, ctx.settings.core, policy)
        except FaultstreamError as exc:
            st.error(str(exc))
    outcome: TuneRound | None = st.session_state.get("tune_round")
    if outcome is None or outcome.current is None:
        if outcome is not None:
            st.warning(outcome.reason)
        return
    _show(outcome)
    _apply(ctx, outcome)


def _show(outcome: TuneRound) -> None:
    assert outcome.current is not None
    best = outcome.best
    rows = [{"candidate": "current: " + _label(outcome.current.candidate.changes),
             "score": outcome.current.total, "role": "current"}]  # fmt: skip
    rows += [
        {"candidate": _label(r.candidate.changes), "score": r.total,
         "role": "best" if r is best else "candidate"}
        for r in outcome.results
    ]  # fmt: skip
    charts.show(charts.tuning_scores(pd.DataFrame(rows)))
    verdict = "Proposed" if outcome.proposal is not None else "Keep the current settings"
    st.info(f"{verdict}: {outcome.reason} ({outcome.events} events replayed)")
    details = pd.DataFrame(
        [{"candidate": _label(r.candidate.changes), "score": r.total, **vars(r.score)}
         for r in [outcome.current, *outcome.results]]
    )  # fmt: skip
    show_table(details)
    for rejected in outcome.rejected:
        st.caption(f"Not tried: {_label(rejected.changes)}: {rejected.reason}")


def _apply(ctx: Context, outcome: TuneRound) -> None:
    st.subheader("Apply a candidate")
    labels = [_label(r.candidate.changes) for r in outcome.results]
    with st.form("apply_candidate"):
        chosen = st.selectbox("Candidate", labels, index=0)
        actor, token = operator_fields(ctx)
        submitted = st.form_submit_button("Apply (CONFIG_CHANGED)")
    if not submitted:
        return
    result = outcome.results[labels.index(chosen)]
    try:
        who = checked_actor(ctx, token, actor)
        record = operations.config_record(nested(result.candidate.changes), who)
        operations.publish(record, ctx.settings.kafka)
    except FaultstreamError as exc:
        st.error(f"Not applied: {exc}")
        return
    st.success(f"Applied {record.event_id} by {who}: {record.config}")
