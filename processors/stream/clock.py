"""The clock: TICK records into `<prefix>.control`, so time-driven transitions (half-open,
lost workers) happen on time while the fleet is quiet.

TICKs go through Kafka like any other input, so they are part of the recorded history and
replay sees exactly what the processor saw. Only the group leader ticks, so two
instances do not double the rate.
"""

from __future__ import annotations

import time
import uuid

import faust

from faultstream.events.codec import Codec
from faultstream.events.models import Tick


def make_tick(now_ms: int | None = None) -> Tick:
    """A TICK at wall-clock `now_ms` with a unique id."""
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    return Tick(event_id=f"tick-{ts}-{uuid.uuid4().hex[:12]}", ts=ts)


def install_clock(app: faust.App, control_topic: str, codec: Codec, interval_s: float) -> None:
    """Register the leader-only timer that sends a TICK every `interval_s` seconds."""

    @app.timer(interval=interval_s, on_leader=True, name="faultstream.clock")
    async def tick() -> None:
        await app.producer.send(control_topic, None, codec.encode(make_tick()), None, None, None)
