"""Operations from the dashboard: the operator-token check and the control-topic writes.

Every action is an OPERATOR or CONFIG_CHANGED record on `<prefix>.control` carrying the
actor who asked for it; the processor acts on it, and it stays in the history for replay.
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

from faultstream.events.control import publish_control
from faultstream.events.exceptions import FaultstreamError
from faultstream.events.models import (
    CircuitKind,
    ConfigChanged,
    Operator,
    OperatorAction,
)

ACTOR_PREFIX = "dashboard:"


class OperationRefusedError(FaultstreamError):
    """An operation without a configured and matching operator token, or without an actor."""


def check_operator(configured: str | None, entered: str | None, actor: str | None) -> str:
    """The actor recorded on the action (`dashboard:<name>`), once the token matches."""
    if not configured:
        raise OperationRefusedError(
            "operations are disabled: no operator token is configured "
            "(set dashboard.operator_token or FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN)"
        )
    if not entered or not hmac.compare_digest(configured.encode(), entered.encode()):
        raise OperationRefusedError("operator token: missing or wrong")
    name = (actor or "").strip()
    if not name:
        raise OperationRefusedError("actor: say who you are; every action carries its actor")
    return f"{ACTOR_PREFIX}{name}"[:128]


def _event_id() -> str:
    return f"dash-{uuid.uuid4().hex}"


def _now_ms() -> int:
    # The dashboard is an adapter, not the core: it may read the clock.
    return int(time.time() * 1000)


def operator_record(action: str, circuit_kind: str, circuit_id: str, actor: str) -> Operator:
    circuit_id = circuit_id.strip()
    if not circuit_id:
        raise OperationRefusedError("circuit_id: name the circuit")
    return Operator(
        event_id=_event_id(),
        ts=_now_ms(),
        action=OperatorAction(action),
        circuit_kind=CircuitKind(circuit_kind),
        circuit_id=circuit_id,
        actor=actor,
    )


def config_record(config: dict[str, Any], actor: str) -> ConfigChanged:
    return ConfigChanged(event_id=_event_id(), ts=_now_ms(), config=config, actor=actor)


publish = publish_control  # the one way any adapter writes to the control topic
