"""A circuit's sliding window of outcomes: the failure-rate and slow-call rules
(CIRCUITS.md "Beyond consecutive failures", after resilience4j).

An outcome enters at its decision time (monotonic, so a time window ages from the left).
The rules are judged each time one enters; ageing alone never opens a circuit.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .circuit import CircuitParams

SUCCESS, FAILURE, SLOW = 0, 1, 2  # what an entry is; SLOW is a slow success


class OutcomeWindow:
    """The last N outcomes (a count window) or those of the last N seconds (a time window)."""

    # Outcomes and their decision times side by side, not as (ms, outcome) pairs: entering
    # then allocates nothing. (A count window keeps the times too: the settings may turn
    # it into a time window.)
    __slots__ = ("failures", "outcomes", "slow", "times")

    def __init__(self) -> None:
        self.outcomes: deque[int] = deque()  # SUCCESS | FAILURE | SLOW, oldest first
        self.times: deque[int] = deque()  # the decision ms of each
        self.failures = 0
        self.slow = 0

    def clear(self) -> None:
        self.outcomes.clear()
        self.times.clear()
        self.failures = self.slow = 0

    def enter(self, params: CircuitParams, ts: int, outcome: int) -> str:
        """Add one outcome and judge: the rules it meets, as a reason ('' for none)."""
        outcomes, times = self.outcomes, self.times
        outcomes.append(outcome)
        times.append(ts)
        if outcome == FAILURE:
            self.failures += 1
        elif outcome == SLOW:
            self.slow += 1
        count = params.window_count
        if count:  # (more than one over only after a setting shrank it)
            while len(outcomes) > count:
                times.popleft()
                self._forget(outcomes.popleft())
        else:
            horizon = ts - params.window_ms
            while times[0] <= horizon:
                times.popleft()
                self._forget(outcomes.popleft())
        n = len(outcomes)
        if n < params.minimum_calls:  # the common case while it fills
            return ""
        # Judged inline (every outcome of a full window comes here); named when met.
        rate, slow_rate = params.failure_rate_threshold, params.slow_rate_threshold
        if (rate > 0 and self.failures * 100.0 >= rate * n) or (
            params.slow_ms > 0 and self.slow * 100.0 >= slow_rate * n
        ):
            return self.judge(params, n, self.failures, self.slow)
        return ""

    def failure_would_meet(self, params: CircuitParams, ts: int) -> bool:
        """Whether one more failure at `ts` would meet a rule (nothing changes): the fleet
        guard asks before the failure is counted anywhere."""
        outcomes = self.outcomes
        if params.window_count:
            dropped = max(len(outcomes) + 1 - params.window_count, 0)
        else:
            horizon = ts - params.window_ms
            dropped = 0
            for at in self.times:
                if at > horizon:
                    break
                dropped += 1
        n, failures, slow = len(outcomes) + 1 - dropped, self.failures + 1, self.slow
        for outcome in islice(outcomes, dropped):
            failures -= outcome == FAILURE
            slow -= outcome == SLOW
        return bool(self.judge(params, n, failures, slow))

    @staticmethod
    def judge(params: CircuitParams, n: int, failures: int, slow: int) -> str:
        """'failure_rate …; slow_call_rate …' for the rules met by these counts."""
        if n < params.minimum_calls:
            return ""
        met = []
        rate = params.failure_rate_threshold
        if rate > 0 and failures * 100.0 >= rate * n:
            met.append(f"failure_rate {failures}/{n} ≥ {rate:g}%")
        if params.slow_ms > 0 and slow * 100.0 >= params.slow_rate_threshold * n:
            met.append(f"slow_call_rate {slow}/{n} ≥ {params.slow_rate_threshold:g}%")
        return "; ".join(met)

    def _forget(self, outcome: int) -> None:
        """The oldest outcome, just dropped, leaves the counts."""
        if outcome == FAILURE:
            self.failures -= 1
        elif outcome == SLOW:
            self.slow -= 1
