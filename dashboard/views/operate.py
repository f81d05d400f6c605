"""Operations: reset or force open a circuit. Each action is an OPERATOR record on the
control topic, refused unless an operator token is configured and entered, and carries
who asked for it."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from faultstream.events.exceptions import FaultstreamError

from .. import data, operations
from .common import Context, context, show_table

KINDS = ["worker", "hardware_class", "task_type"]
ACTIONS = {"RESET": "Reset (close the circuit)", "FORCE_OPEN": "Force open"}


def render() -> None:
    st.title("Operations")
    ctx = context()
    if ctx is not None:
        _body(ctx)


def operator_fields(ctx: Context) -> tuple[str, str]:
    """The actor and token inputs (disabled while no token is configured)."""
    disabled = not ctx.settings.dashboard.operator_token
    actor = st.text_input("Your name (recorded as the actor)", key=None, disabled=disabled)
    token = st.text_input("Operator token", type="password", disabled=disabled)
    return actor, token


@st.cache_resource(show_spinner=False)
def guess_limiter() -> operations.GuessLimiter:
    """One limiter for every session of this dashboard process."""
    return operations.GuessLimiter()


def client_keys() -> tuple[str, ...]:
    """What wrong tokens count against: this browser session, and the client's address
    (a new session from the same address does not start from zero; Streamlit reports
    none for a local client, and all local clients share one)."""
    run = get_script_run_ctx()
    session = run.session_id if run is not None else "unknown"
    return (f"session:{session}", f"address:{st.context.ip_address or 'local'}")


def checked_actor(ctx: Context, token: str, actor: str) -> str:
    """The actor to record, once the operator token matches (wrong guesses limited)."""
    return operations.check_operator(
        ctx.settings.dashboard.operator_token,
        token,
        actor,
        limiter=guess_limiter(),
        client=client_keys(),
    )


def _body(ctx: Context) -> None:
    if not ctx.settings.dashboard.operator_token:
        st.warning(
            "Operations are disabled: no operator token is configured. Set "
            "`dashboard.operator_token` in faultstream.toml or "
            "`FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN`, then restart the dashboard."
        )
    table = data.circuits(ctx.history, ctx.key, ctx.stamp)
    st.write(f"Actions go to `{ctx.settings.kafka.topic('control')}`; the processor applies "
             "them and they stay in the history.")  # fmt: skip
    with st.form("operator_action"):
        kind = st.selectbox("Circuit kind", KINDS)
        circuit_id = st.text_input("Circuit id", placeholder="e.g. cpu-03, cuda, unit-tests")
        action = st.radio("Action", list(ACTIONS), format_func=ACTIONS.get, horizontal=True)
        actor, token = operator_fields(ctx)
        submitted = st.form_submit_button("Send")
    with st.expander("Known circuits"):
        show_table(table[["kind", "circuit", "state"]])
    if not submitted:
        return
    try:
        who = checked_actor(ctx, token, actor)
        record = operations.operator_record(action, kind, circuit_id, who)
        operations.publish(record, ctx.settings.kafka)
    except FaultstreamError as exc:
        st.error(f"Refused: {exc}")
        return
    st.success(f"Sent {record.action} of {kind} {record.circuit_id} by {who} ({record.event_id})")
