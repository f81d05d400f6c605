"""Failure classification from an error message (CIRCUITS.md), shared by the core and SDK.

Dependency-free and cheap: the core calls it for every FAILURE without a failure_type.
"""

from __future__ import annotations

import re

from .models import FailureType

# Case-insensitive; the first rule that matches wins, in this order.
_RULES: tuple[tuple[re.Pattern[str], FailureType], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), failure_type)
    for pattern, failure_type in (
        # "oom" only as a whole word, so "bloom" or "zoom" is not out-of-memory.
        (r"out of memory|\boom\b", FailureType.RESOURCE_EXHAUSTION),
        (r"cuda error|cuda failure|device-side assert", FailureType.HARDWARE_ERROR),
        (
            r"browser crash|browser disconnected|webgpu context lost",
            FailureType.BROWSER_FAILURE,
        ),
        (r"timeout|timed out", FailureType.TIMEOUT),
        (r"connection", FailureType.COMMUNICATION_ERROR),
        (r"worker crash|worker disconnected", FailureType.WORKER_CRASH),
    )
)


def classify_message(message: str | None) -> FailureType:
    """The failure type an error message implies; SOFTWARE_ERROR when nothing matches."""
    if message:
        for pattern, failure_type in _RULES:
            if pattern.search(message):
                return failure_type
    return FailureType.SOFTWARE_ERROR


def classify_exception(exc: BaseException) -> FailureType:
    """The failure type of an exception a task raised (the SDK's `task()` context)."""
    if isinstance(exc, MemoryError):
        return FailureType.RESOURCE_EXHAUSTION
    # Before ConnectionError: on Python ≥ 3.10 socket.timeout is TimeoutError, an OSError.
    if isinstance(exc, TimeoutError):
        return FailureType.TIMEOUT
    if isinstance(exc, ConnectionError):
        return FailureType.COMMUNICATION_ERROR
    return classify_message(f"{type(exc).__name__}: {exc}")
