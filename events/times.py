"""Moments as users write them on the command line: epoch milliseconds or ISO-8601."""

from __future__ import annotations

from datetime import UTC, datetime

from .exceptions import FaultstreamError


def parse_time(text: str, flag: str = "--since") -> int:
    """Epoch milliseconds from `1764355200000` or ISO-8601 (`2025-11-28T18:40:00Z`; naive
    means UTC)."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FaultstreamError(
            f"{flag} {text!r}: expected epoch milliseconds or ISO-8601 (2025-11-28T18:40:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
