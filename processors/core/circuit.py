"""One circuit breaker: its state machine and its backoff (CIRCUITS.md, "States")."""

from __future__ import annotations

import math
from dataclasses import dataclass

from faultstream.events.config import CircuitSettings
from faultstream.events.health import circuit_health
from faultstream.events.models import CircuitKind, CircuitState, CircuitStateChanged, trusted

from .ids import transition_id
from .window import FAILURE, SLOW, SUCCESS, OutcomeWindow

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
OPENISH = frozenset({OPEN, FORCED_OPEN})

# The order of circuit kinds: the index is the kind's rank when due moments tie.
KINDS = (CircuitKind.WORKER, CircuitKind.HARDWARE_CLASS, CircuitKind.TASK_TYPE)
WORKER, HARDWARE_CLASS, TASK_TYPE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class CircuitParams:
    """One kind's settings, read as plain attributes in the hot path."""

    failure_threshold: int
    recovery_timeout_s: float
    reset_timeout_factor: float
    max_reset_timeout_s: float
    success_threshold: int
    half_open_max_calls: int
    # The sliding window (window.py): on when either rule is.
    window_on: bool = False
    window_count: int = 0  # a count window's size; 0 for a time window
    window_ms: float = 0.0  # a time window's span
    minimum_calls: int = 20
    failure_rate_threshold: float = 0.0  # percent; 0 = off
    slow_ms: float = 0.0  # a success at least this long is slow; 0 = off
    slow_rate_threshold: float = 100.0  # percent

    @classmethod
    def of(cls, settings: CircuitSettings) -> CircuitParams:
        count = settings.sliding_window_type == "count"
        return cls(
            settings.failure_threshold,
            float(settings.recovery_timeout_s),
            float(settings.reset_timeout_factor),
            float(settings.max_reset_timeout_s),
            settings.success_threshold,
            settings.half_open_max_calls,
            settings.window_on,
            int(settings.sliding_window_size) if count else 0,
            0.0 if count else float(settings.sliding_window_size) * 1000.0,
            settings.minimum_number_of_calls,
            float(settings.failure_rate_threshold),
            float(settings.slow_call_duration_s) * 1000.0,
            float(settings.slow_call_rate_threshold),
        )

    def backoff_s(self, trips: int) -> float:
        """The wait before half-opening after the `trips`-th consecutive opening.

        The first wait is the configured one (the seed doubled it already on trip 1).
        """
        return min(
            self.recovery_timeout_s * self.reset_timeout_factor ** (trips - 1),
            self.max_reset_timeout_s,
        )


class Circuit:
    """`(kind, id)`: counters, state and the moment it is due to half-open."""

    __slots__ = (
        "consecutive_failures",
        "due_exact",
        "due_ms",
        "gen",
        "half_open_successes",
        "id",
        "kind",
        "outage_since",
        "rank",
        "reset_timeout_s",
        "state",
        "total_failures",
        "total_successes",
        "total_trips",
        "trips",
        "window",
    )

    def __init__(self, rank: int, circuit_id: str, params: CircuitParams) -> None:
        self.rank = rank
        self.kind = KINDS[rank]
        self.id = circuit_id
        self.state = CLOSED
        self.consecutive_failures = 0
        self.half_open_successes = 0
        self.trips = 0  # consecutive openings since last CLOSED
        self.total_trips = 0  # every opening in the circuit's life
        self.total_successes = 0
        self.total_failures = 0
        self.reset_timeout_s = params.recovery_timeout_s
        self.due_exact = 0.0  # ms, unrounded: orders due moments
        self.due_ms = 0  # ms, rounded up: the half-open transition's ts
        self.gen = 0  # bumped on every transition; stale heap entries compare unequal
        self.outage_since = -1  # ms it left CLOSED (open_longer_than_s); -1 while CLOSED
        self.window: OutcomeWindow | None = None  # made when a window rule first needs it

    @property
    def health(self) -> float:
        return circuit_health(
            self.state, self.consecutive_failures, self.half_open_successes, self.total_trips
        )

    def would_open_on_failure(self, params: CircuitParams, ts: int) -> bool:
        state = self.state
        if state is CLOSED:
            if self.consecutive_failures + 1 >= params.failure_threshold:
                return True
            return params.window_on and self._window().failure_would_meet(params, ts)
        return state is HALF_OPEN

    # --- outcomes ------------------------------------------------------------------

    def on_success(
        self, params: CircuitParams, ts: int, caused_by: str, duration: int
    ) -> CircuitStateChanged | str | None:
        """The counters; a half-open circuit may close; a CLOSED one enters the success (slow
        when its `duration`, -1 if unknown, reaches slow_call_duration_s) in its window and
        returns the rules that meets, as a reason: the caller opens it (`open_by`) unless
        the fleet guard holds."""
        self.total_successes += 1
        state = self.state
        if state is CLOSED:
            self.consecutive_failures = 0
            if params.window_on:
                slow = params.slow_ms > 0 and duration >= params.slow_ms
                return self._window().enter(params, ts, SLOW if slow else SUCCESS) or None
        elif state is HALF_OPEN:
            self.half_open_successes += 1
            if self.half_open_successes >= params.success_threshold:
                return self._close(params, ts, caused_by, "success_threshold reached")
        return None  # OPEN / FORCED_OPEN: counted in the totals only

    def on_failure(
        self, params: CircuitParams, ts: int, caused_by: str, reason: str
    ) -> CircuitStateChanged | None:
        self.total_failures += 1
        state = self.state
        if state is CLOSED:
            self.consecutive_failures += 1
            met = []
            if self.consecutive_failures >= params.failure_threshold:
                met.append("failure_threshold reached")
            if params.window_on:
                rates = self._window().enter(params, ts, FAILURE)
                if rates:
                    met.append(rates)
            if met:
                return self._open(params, ts, caused_by, "; ".join([reason, *met]))
        elif state is HALF_OPEN:
            return self._open(params, ts, caused_by, f"{reason}; failed while half-open")
        return None

    def open_by(
        self, params: CircuitParams, ts: int, caused_by: str, reason: str
    ) -> CircuitStateChanged:
        """Opened by a rule the fleet judged: a window met on a success, an outlier."""
        return self._open(params, ts, caused_by, reason)

    def _window(self) -> OutcomeWindow:
        window = self.window
        if window is None:
            window = self.window = OutcomeWindow()
        return window

    # --- transitions ---------------------------------------------------------------

    def half_open(self, params: CircuitParams, ts: int, caused_by: str) -> CircuitStateChanged:
        self.half_open_successes = 0
        reason = f"reset_timeout elapsed; {params.half_open_max_calls} probe calls allowed"
        return self._become(HALF_OPEN, ts, caused_by, reason)

    def force_open(self, ts: int, caused_by: str, actor: str) -> CircuitStateChanged | None:
        if self.window is not None:
            self.window.clear()
        if self.state is FORCED_OPEN:
            return None
        return self._become(FORCED_OPEN, ts, caused_by, f"operator FORCE_OPEN by {actor}")

    def reset(
        self, params: CircuitParams, ts: int, caused_by: str, actor: str
    ) -> CircuitStateChanged | None:
        """Every counter but the totals back to 0; a record only if the state changes."""
        if self.window is not None:
            self.window.clear()
        if self.state is CLOSED:
            self.consecutive_failures = self.half_open_successes = self.trips = 0
            self.reset_timeout_s = params.recovery_timeout_s
            return None
        return self._close(params, ts, caused_by, f"operator RESET by {actor}")

    def _open(
        self, params: CircuitParams, now: int, caused_by: str, reason: str
    ) -> CircuitStateChanged:
        self.trips += 1
        self.total_trips += 1
        self.half_open_successes = 0
        self.reset_timeout_s = params.backoff_s(self.trips)
        # Rounded to the nanosecond first so 1.2 s x 1000 is 1200 ms, not 1200.0000000002.
        self.due_exact = round(now + self.reset_timeout_s * 1000.0, 6)
        self.due_ms = math.ceil(self.due_exact)
        return self._become(OPEN, now, caused_by, reason)

    def _close(
        self, params: CircuitParams, ts: int, caused_by: str, reason: str
    ) -> CircuitStateChanged:
        self.consecutive_failures = self.half_open_successes = self.trips = 0
        self.reset_timeout_s = params.recovery_timeout_s
        return self._become(CLOSED, ts, caused_by, reason)

    def _become(
        self, to_state: CircuitState, ts: int, caused_by: str, reason: str
    ) -> CircuitStateChanged:
        from_state = self.state
        self.state = to_state
        self.gen += 1
        if from_state is CLOSED or to_state is CLOSED:
            # The window holds the outcomes of one closed spell; an outage starts or ends.
            if self.window is not None:
                self.window.clear()
            self.outage_since = ts if from_state is CLOSED else -1
        kind = self.kind
        return trusted(
            CircuitStateChanged,
            {
                "event_id": transition_id(caused_by, kind.value, self.id, from_state, to_state, ts),
                "ts": ts,
                "circuit_kind": kind,
                "circuit_id": self.id,
                "from_state": from_state,
                "to_state": to_state,
                "reason": reason,
                "consecutive_failures": self.consecutive_failures,
                "trips": self.trips,
                "reset_timeout_s": self.reset_timeout_s,
                "health": self.health,
                "caused_by": caused_by,
            },
        )
