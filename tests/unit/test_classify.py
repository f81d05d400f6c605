from __future__ import annotations

import pytest

from faultstream.events.classify import classify_exception, classify_message
from faultstream.events.models import FailureType as F


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("CUDA out of memory. Tried to allocate 2 GiB", F.RESOURCE_EXHAUSTION),
        ("OOM killed", F.RESOURCE_EXHAUSTION),
        ("process oom", F.RESOURCE_EXHAUSTION),
        ("CUDA error: an illegal memory access", F.HARDWARE_ERROR),
        ("cuda failure 700", F.HARDWARE_ERROR),
        ("Device-side assert triggered", F.HARDWARE_ERROR),
        ("Browser crash in tab", F.BROWSER_FAILURE),
        ("browser disconnected", F.BROWSER_FAILURE),
        ("WebGPU context lost", F.BROWSER_FAILURE),
        ("Timeout after 30s", F.TIMEOUT),
        ("request timed out", F.TIMEOUT),
        ("Connection refused", F.COMMUNICATION_ERROR),
        ("worker crash", F.WORKER_CRASH),
        ("Worker disconnected", F.WORKER_CRASH),
        ("assertion failed: x == y", F.SOFTWARE_ERROR),
        ("", F.SOFTWARE_ERROR),
        (None, F.SOFTWARE_ERROR),
    ],
)
def test_message_is_classified_per_circuits_md(message: str | None, expected: F) -> None:
    assert classify_message(message) is expected


def test_oom_inside_a_word_is_not_out_of_memory() -> None:
    assert classify_message("bloom filter rejected the key") is F.SOFTWARE_ERROR
    assert classify_message("zoom level invalid") is F.SOFTWARE_ERROR


def test_first_matching_rule_wins() -> None:
    # Both "out of memory" and "cuda error" and "timeout": memory comes first.
    assert classify_message("CUDA error: out of memory (timeout)") is F.RESOURCE_EXHAUSTION
    assert classify_message("connection timed out") is F.TIMEOUT
    assert classify_message("browser crash: connection reset") is F.BROWSER_FAILURE


def test_exceptions_classify_by_type_then_by_message() -> None:
    assert classify_exception(MemoryError()) is F.RESOURCE_EXHAUSTION
    assert classify_exception(TimeoutError("slow")) is F.TIMEOUT
    assert classify_exception(ConnectionResetError("peer")) is F.COMMUNICATION_ERROR
    assert classify_exception(RuntimeError("CUDA error: device lost")) is F.HARDWARE_ERROR
    assert classify_exception(ValueError("bad shape")) is F.SOFTWARE_ERROR
