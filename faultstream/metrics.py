"""What the processor and the HTTP API share for Prometheus (`/metrics`): the circuit and
fleet-health gauges, read from a circuits document when scraped, and the exposition.

The document is the GET /api/circuit-breakers shape: the processor reads it from its live
core, the API from the history. Each server keeps its own small registry for these (its
own source), exposed after the process-wide one (processors/stream/metrics.py,
projections/metrics.py). Needs prometheus_client: imported by the processor and the
history side only, never by the worker SDK.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SECTIONS = {"workers": "worker", "hardware_classes": "hardware_class", "task_types": "task_type"}
CONTENT_TYPE = CONTENT_TYPE_LATEST
CircuitsSource = Callable[[], dict[str, Any] | None]


class CircuitsCollector(Collector):
    """`faultstream_circuits{kind,state}` and `faultstream_fleet_health_percent{figure}`
    from `source()` (None: nothing to say yet, e.g. before the decider restored)."""

    def __init__(self, source: CircuitsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            document = self.source()
        except Exception as exc:  # a scrape must not fail for a history being published
            log.debug("circuits for /metrics: %r", exc)
            document = None
        if not document:
            return
        circuits = GaugeMetricFamily(
            "faultstream_circuits", "Circuits by kind and state", labels=["kind", "state"]
        )
        for section, kind in SECTIONS.items():
            states = Counter(entry["state"] for entry in document.get(section, {}).values())
            for state, count in sorted(states.items()):
                circuits.add_metric([kind, str(state)], count)
        yield circuits
        aggregate = document.get("aggregate", {})
        health = GaugeMetricFamily(
            "faultstream_fleet_health_percent",
            "Fleet health (CIRCUITS.md): overall and the average over circuits",
            labels=["figure"],
        )
        for figure in ("overall_health", "average_health"):
            value = aggregate.get(figure)
            if value is not None:
                health.add_metric([figure.removesuffix("_health")], float(value))
        yield health


def circuits_registry(source: CircuitsSource) -> CollectorRegistry:
    """A registry of its own for one server's circuits source."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CircuitsCollector(source))
    return registry


def exposition(*registries: CollectorRegistry) -> bytes:
    """The process-wide metrics, then those of `registries`, in the text format."""
    return b"".join(generate_latest(r) for r in (REGISTRY, *registries))
