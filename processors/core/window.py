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

    __slots__ = ("entries", "failures", "slow")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, int]] = deque()  # (decision ms, SUCCESS|FAILURE|SLOW)
        self.failures = 0
        self.slow = 0

    def clear(self) -> None:
        self.entries.clear()
        self.failures = self.slow = 0

    def enter(self, params: CircuitParams, ts: int, outcome: int) -> str:
        """Add one outcome and judge: the rules it meets, as a reason ('' for none)."""
        entries = self.entries
        entries.append((ts, outcome))
        if outcome == FAILURE:
            self.failures += 1
        elif outcome == SLOW:
            self.slow += 1
        count = params.window_count
        if count:
            while len(entries) > count:
                _, gone = entries.popleft()
                if gone == FAILURE:
                    self.failures -= 1
                elif gone == SLOW:
                    self.slow -= 1
        else:
            horizon = ts - params.window_ms
            while entries[0][0] <= horizon:
                self._drop_oldest()
        n = len(entries)
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
        entries = self.entries
        if params.window_count:
            dropped = max(len(entries) + 1 - params.window_count, 0)
        else:
            horizon = ts - params.window_ms
            dropped = 0
            for at, _ in entries:
                if at > horizon:
                    break
                dropped += 1
        n, failures, slow = len(entries) + 1 - dropped, self.failures + 1, self.slow
        for _, outcome in islice(entries, dropped):
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

    def _drop_oldest(self) -> None:
        _, outcome = self.entries.popleft()
        if outcome == FAILURE:
            self.failures -= 1
        elif outcome == SLOW:
            self.slow -= 1
