"""What every page needs: the history it shows, its settings, and the empty-history note."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from faultstream.events.config import Settings
from faultstream.projections.queries import History

from .. import data


@dataclass(frozen=True)
class Context:
    source: data.Source
    settings: Settings
    history: History
    stamp: int

    @property
    def key(self) -> str:
        """Cache key of the history (the History object itself is not hashed)."""
        return repr(self.source)

    def now(self) -> int:
        return int(data.circuit_breakers(self.history, self.key, self.stamp)["timestamp"])


def context() -> Context | None:
    """The page's context, or None after explaining how to get data in."""
    source = data.Source.from_env()
    settings = data.settings()
    history = data.open_history(source, settings.core)
    if history is None:
        empty_history(source)
        return None
    return Context(source, settings, history, data.stamp(source, settings.dashboard.refresh_s))


def empty_history(source: data.Source) -> None:
    st.info(
        f"""**No history to show yet** ({source.describe()}).

The dashboard reads the fleet's recorded history. To get some:

* a simulated fleet in two seconds: `faultstream demo --db faultstream.duckdb`, then
  `faultstream dashboard --db faultstream.duckdb`;
* a real fleet: run `faultstream processor` and `faultstream projector`, then
  `faultstream dashboard --read-models faultstream-read-models`.

This page checks again every time it is opened or refreshed.""",
        icon=":material/info:",
    )


def live(ctx: Context, body: Callable[[Context], None]) -> None:
    """Run `body`, re-running it every refresh period on live read models (a DuckDB file
    that nobody writes never changes)."""
    every = ctx.settings.dashboard.refresh_s if ctx.source.live else None

    def refreshed() -> None:
        fresh = context() if every else ctx
        if fresh is not None:
            body(fresh)

    st.fragment(refreshed, run_every=every)()


def since(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


def clock(ms: int) -> str:
    return since(ms).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def circuit_link(kind: str, circuit_id: str) -> str:
    return f"/circuit-breakers?circuit={kind}:{circuit_id}"
