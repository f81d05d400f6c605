"""The processor stages' periodic log line: throughput, busy time and arrival ages."""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("faultstream.processor")

STATS_EVERY_S = 10.0


class BatchStats:
    """Counters logged every STATS_EVERY_S: where a stage's time goes, and how old each
    batch's oldest record was on arrival (its Kafka timestamp to now: the wait upstream of
    this stage, the figure to read when latency grows)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._reset()

    def _reset(self) -> None:
        self.batches = self.records = 0
        self.busy_s = 0.0
        self.ages_ms: list[float] = []
        self.counts: Counter[str] = Counter()  # stage-specific, e.g. frames by path
        self.snapshots: list[tuple[int, float]] = []  # (bytes, pause s) of each taken
        self._since = time.monotonic()

    def snapshot(self, size: int, pause_s: float) -> None:
        """A snapshot of the stage's state was taken: `size` bytes, `pause_s` stopped."""
        self.snapshots.append((size, pause_s))

    def add(self, records: int, busy_s: float, oldest_ts_ms: float) -> None:
        self.batches += 1
        self.records += records
        self.busy_s += busy_s
        self.ages_ms.append(time.time() * 1000 - oldest_ts_ms)
        elapsed = time.monotonic() - self._since
        if elapsed >= STATS_EVERY_S:
            self._log(elapsed)
            self._reset()

    def _log(self, elapsed: float) -> None:
        ages = sorted(self.ages_ms)
        counts = "".join(f", {n} {what}" for what, n in sorted(self.counts.items()))
        p50, p99, oldest = ages[len(ages) // 2], ages[len(ages) * 99 // 100], ages[-1]
        # The same figures as fields, for `--log-format json` (faultstream/logs.py).
        fields = {
            "stage": self.name,
            "records": self.records,
            "batches": self.batches,
            **{what.lower().replace(" ", "_"): n for what, n in self.counts.items()},
            "interval_s": round(elapsed, 3),
            "records_per_s": round(self.records / elapsed, 1),
            "busy_pct": round(100 * self.busy_s / elapsed, 1),
            "age_p50_ms": round(p50, 1),
            "age_p99_ms": round(p99, 1),
            "age_max_ms": round(oldest, 1),
        }
        snapshots = ""
        if self.snapshots:
            largest = max(size for size, _ in self.snapshots)
            longest_ms = max(pause for _, pause in self.snapshots) * 1000
            snapshots = (
                f"; {len(self.snapshots)} snapshots, largest {largest / 1e6:.1f} MB, "
                f"longest pause {longest_ms:.0f} ms"
            )
            fields |= {"snapshots": len(self.snapshots), "snapshot_bytes_max": largest,
                       "snapshot_pause_max_ms": round(longest_ms, 1)}  # fmt: skip
        log.info(
            "%s: %d records (%d batches%s) in %.1f s = %.0f/s, busy %.0f%%; "
            "oldest record's age on arrival p50 %.0f ms, p99 %.0f ms, max %.0f ms%s",
            self.name,
            self.records,
            self.batches,
            counts,
            elapsed,
            self.records / elapsed,
            100 * self.busy_s / elapsed,
            p50,
            p99,
            oldest,
            snapshots,
            extra={"fields": fields},
        )
