"""The processor's Prometheus metrics, served at `/metrics` on Faust's web server (the
instance's web port, `processor.web_port` + instance number; 127.0.0.1 unless --host).

Updated once per batch or frame by ingest, the decider and the snapshot code, never per
record on the hot path; the circuit and fleet-health gauges are read from the live core when
scraped (on the event loop, so between two frames: never a half-applied one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust
from prometheus_client import Counter, Gauge, Histogram

from faultstream.events.models import DERIVED_TYPES
from faultstream.metrics import CONTENT_TYPE, circuits_registry, exposition

RECORDS_IN = Counter(
    "faultstream_processor_records_in", "Input records read by ingest, per topic", ["topic"]
)
RECORDS_OUT = Counter(
    "faultstream_processor_records_out",
    "Derived records sent, per type (circuit_state_changed, recovery_command, circuit_figures, "
    "alert)",
    ["type"],
)
DEAD_LETTERS = Counter(
    "faultstream_processor_dead_letters", "Records and frames sent to the dead-letter topic"
)
ORDERING_LAG_RECORDS = Gauge(
    "faultstream_processor_ordering_lag_records",
    "Input records held back by the merge across partitions, waiting for their place in order",
)
ORDERING_LAG_SECONDS = Gauge(
    "faultstream_processor_ordering_lag_seconds",
    "How long the merge has waited for a partition that is behind (0 when none is)",
)
DECISION_LATENCY = Histogram(
    "faultstream_processor_decision_latency_seconds",
    "Per frame: from the broker's append time of its oldest input to its outputs sent",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SNAPSHOT_SECONDS = Histogram(
    "faultstream_processor_snapshot_duration_seconds",
    "How long each snapshot of the decider's state paused it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SNAPSHOT_BYTES = Gauge(
    "faultstream_processor_snapshot_bytes", "Size of the decider's newest snapshot"
)


def count_outputs(outputs: Sequence[Any]) -> None:
    """Count one frame's derived records by type (a frame has few outputs; a TICK's
    figures may be many, still one pass)."""
    if not outputs:
        return
    counts: dict[type, int] = {}
    for output in outputs:
        kind = type(output)
        counts[kind] = counts.get(kind, 0) + 1
    for kind, count in counts.items():
        RECORDS_OUT.labels(DERIVED_TYPES[kind]).inc(count)


def install_metrics_page(app: faust.App, decider: Any) -> None:
    """`GET /metrics` on the app's web server: the process's metrics, then the circuits and
    fleet health of the decider's live core (none while another instance decides)."""

    def circuits() -> dict[str, Any] | None:
        core = decider.core
        return None if core is None else core.circuits_view()

    registry = circuits_registry(circuits)

    @app.page("/metrics", name="faultstream-metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside `content_type`: the whole header instead.
        return web.bytes(exposition(registry), headers={"Content-Type": CONTENT_TYPE})
