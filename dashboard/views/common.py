"""What every page needs: the history it shows, its settings, and the empty-history note."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from faultstream.events.config import Settings
from faultstream.projections.queries import History

from .. import data, stamps


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


def clock(ms: int) -> str:
    """A moment in the dashboard's one format (stamps.py): `2026-01-01 00:12:00Z`."""
    return stamps.utc(ms)


MISSING = "—"  # what a table shows for a missing value (Streamlit's default is "None")


def time_column(label: str | None = None, help: str | None = None, width: int | None = None) -> Any:
    return st.column_config.DatetimeColumn(label, format=stamps.MOMENT, help=help, width=width)


def health_column(label: str = "health", help: str | None = None, width: int | None = None) -> Any:
    """0-100 as a bar: green above half, red below (not the theme's red for every bar)."""
    return st.column_config.ProgressColumn(
        label, min_value=0, max_value=100, format="%.0f%%", color="auto", help=help, width=width
    )


def show_table(
    frame: pd.DataFrame,
    *,
    times: Iterable[str] = (),
    config: dict[str, Any] | None = None,
    key: str | None = None,
    **kwargs: Any,
) -> None:
    """`st.dataframe` the dashboard's way: no index, `times` in the one time format, and
    a dash for missing values."""
    column_config = {name: time_column() for name in times if name in frame.columns}
    column_config.update(config or {})
    st.dataframe(
        frame,
        hide_index=True,
        column_config=column_config,
        key=key,
        placeholder=MISSING,
        **kwargs,
    )


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def circuit_link(kind: str, circuit_id: str) -> str:
    return f"/circuit-breakers?circuit={kind}:{circuit_id}"


# --- capacity per hardware class (the core's figures, as its capacity_view) --------------

CAPACITY_RULE = (
    "A worker counts as available when it is live (an event within "
    "`recovery.heartbeat_timeout_s`), its worker circuit is CLOSED and its hardware class "
    "circuit is not OPEN or FORCED_OPEN."
)
CAPACITY_GOOD = 0.8  # green at or above this share of live workers available
CAPACITY_LOW = 0.5  # amber at or above this, red below
_PER_ROW = 4
_CAPACITY_ICONS = {"green": ":material/check_circle:", "orange": ":material/warning:",
                   "red": ":material/error:", "gray": ":material/remove_circle:"}  # fmt: skip


def capacity_color(available: int, live: int) -> str:
    if live == 0:
        return "gray"
    share = available / live
    return "green" if share >= CAPACITY_GOOD else "orange" if share >= CAPACITY_LOW else "red"


def capacity_headline(capacity: dict[str, dict[str, Any]], title: str = "Capacity now") -> None:
    """Available / live workers per hardware class, coloured by the share available."""
    help_text = (
        f"{CAPACITY_RULE} Each card shows available / live workers of one class: green "
        f"from {CAPACITY_GOOD:.0%} available, amber from {CAPACITY_LOW:.0%}, red below. "
        "Counted by the core (its newest figures of each hardware class circuit)."
    )
    st.subheader(title, help=help_text)
    available = sum(row["available"] for row in capacity.values())
    live = sum(row["live"] for row in capacity.values())
    lost = sum(row["workers"] - row["live"] for row in capacity.values())
    st.caption(
        f"{available} of {live} live workers can take work"
        + (f" ({lost} lost)" if lost else "")
        + f". {CAPACITY_RULE}"
    )
    classes = list(capacity.items())
    for start in range(0, len(classes), _PER_ROW):
        for column, (class_id, row) in zip(
            st.columns(_PER_ROW), classes[start : start + _PER_ROW], strict=False
        ):
            with column.container(border=True):
                _capacity_card(class_id, row)


def _capacity_card(class_id: str, row: dict[str, Any]) -> None:
    available, live = row["available"], row["live"]
    st.metric(f"{class_id} workers available", f"{available} / {live}")
    color = capacity_color(available, live)
    share = f"{available / live:.0%} of live" if live else "no live worker"
    st.badge(share, color=color, icon=_CAPACITY_ICONS[color])  # type: ignore[arg-type]
    notes = [f"class circuit {row['state']}"]
    if row["workers"] > live:
        notes.append(f"{row['workers'] - live} lost")
    st.caption(" · ".join(notes))
