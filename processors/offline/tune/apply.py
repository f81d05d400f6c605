"""`tune --apply`: the winner becomes a CONFIG_CHANGED record on `<prefix>.control`.

The processor adopts it from that record on, and because the record sits in the history,
replay reproduces the change too.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from faultstream.events.control import publish_control
from faultstream.events.models import ConfigChanged

ACTOR = "tune"
__all__ = ["ACTOR", "config_changed", "publish_control"]


def config_changed(config: dict[str, Any], ts: int | None = None) -> ConfigChanged:
    """A CONFIG_CHANGED by `tune`; `ts` defaults to now (the tuner is an adapter, not the
    core, so it may read the clock)."""
    return ConfigChanged(
        event_id=f"tune-{uuid.uuid4().hex}",
        ts=ts if ts is not None else int(time.time() * 1000),
        config=config,
        actor=ACTOR,
    )
