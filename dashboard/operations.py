"""Operations from the dashboard: the operator-token check and the control-topic writes.

Every action is an OPERATOR or CONFIG_CHANGED record on `<prefix>.control` carrying the
actor who asked for it; the processor acts on it, and it stays in the history for replay.
Wrong tokens are limited (`GuessLimiter`): after a few, each further attempt waits longer.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass
class _Guesses:
    wrong: int = 0
    blocked_until: float = 0.0
    seen: float = 0.0


class GuessLimiter:
    """Wrong operator tokens per client key (a browser session, a client address).

    The first `free` wrong tokens cost nothing; from then on every wrong one blocks the key
    for a delay that doubles each time (`base_delay_s`, 2x, 4x, ... up to `max_delay_s`),
    and an attempt while blocked is refused without looking at the token. A right token
    clears the key. Shared by every session of the dashboard process (sessions are threads).
    """

    MAX_KEYS = 10_000  # forget the longest-unseen keys beyond this many

    def __init__(
        self,
        free: int = 5,
        base_delay_s: float = 2.0,
        max_delay_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.clock = clock
        self._keys: dict[str, _Guesses] = {}
        self._lock = threading.Lock()

    def wait_s(self, keys: Sequence[str]) -> float:
        """How long these keys must still wait before another attempt (0: go ahead)."""
        now = self.clock()
        with self._lock:
            until = [self._keys[key].blocked_until for key in keys if key in self._keys]
        return max([until_s - now for until_s in until] + [0.0])

    def failed(self, keys: Sequence[str]) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                guesses = self._keys.setdefault(key, _Guesses())
                guesses.wrong += 1
                guesses.seen = now
                over = guesses.wrong - self.free
                if over > 0:
                    delay = min(self.max_delay_s, self.base_delay_s * 2 ** min(over - 1, 60))
                    guesses.blocked_until = now + delay
            if len(self._keys) > self.MAX_KEYS:
                oldest = sorted(self._keys, key=lambda k: self._keys[k].seen)
                for key in oldest[: len(self._keys) - self.MAX_KEYS]:
                    del self._keys[key]

    def succeeded(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)


def check_operator(
    configured: str | None,
    entered: str | None,
    actor: str | None,
    *,
    limiter: GuessLimiter | None = None,
    client: Sequence[str] = (),
) -> str:
    """The actor recorded on the action (`dashboard:<name>`), once the token matches.

    With a `limiter`, wrong tokens count against the `client` keys, and a client that
    guessed wrong too often is refused until its delay has passed."""
    if not configured:
        raise OperationRefusedError(
            "operations are disabled: no operator token is configured "
            "(set dashboard.operator_token or FAULTSTREAM_DASHBOARD__OPERATOR_TOKEN)"
        )
    if limiter is not None:
        wait = limiter.wait_s(client)
        if wait > 0:
            raise OperationRefusedError(
                f"too many wrong operator tokens: try again in {math.ceil(wait)} s"
            )
    if not entered or not hmac.compare_digest(configured.encode(), entered.encode()):
        if entered and limiter is not None:  # an empty field is no guess
            limiter.failed(client)
        raise OperationRefusedError("operator token: missing or wrong")
    if limiter is not None:
        limiter.succeeded(client)
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
