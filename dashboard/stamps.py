"""The one way the dashboard (and the demo's report) writes a moment: UTC to the second,
ISO-like, `2026-01-01 00:12:00Z`. No Streamlit here, so the command line can use it."""

from __future__ import annotations

from datetime import UTC, datetime

STRFTIME = "%Y-%m-%d %H:%M:%SZ"  # Python, and Plotly's hover labels (same directives)
MOMENT = "YYYY-MM-DD HH:mm:ss[Z]"  # the same, for Streamlit's tables and sliders (momentJS)


def utc(ms: float) -> str:
    """`ms` since the epoch as `2026-01-01 00:12:00Z` (rounded down to the second)."""
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime(STRFTIME)
