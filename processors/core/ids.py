"""Deterministic ids and jitter, derived from hashes so a replay yields the same bytes."""

from __future__ import annotations

from collections.abc import Callable
from hashlib import blake2b
from typing import Any

_SEP = "\x1f"  # unit separator: keeps ("a", "bc") and ("ab", "c") apart
JITTER = 0.2


def _digest(*parts: object, size: int = 8) -> bytes:
    return blake2b(_SEP.join(map(str, parts)).encode(), digest_size=size).digest()


def transition_id(
    caused_by: str, circuit_kind: str, circuit_id: str, from_state: str, to_state: str, ts: int
) -> str:
    """The event_id of a circuit_state_changed record. With its `ts`: one input can reveal
    the same move of a circuit twice (half-open, re-opened by a lost worker, due again)."""
    return "cst-" + _digest(caused_by, circuit_kind, circuit_id, from_state, to_state, ts).hex()


def figures_ids(caused_by: str) -> Callable[[str, str], str]:
    """The event_ids of one TICK's circuit_figures records, by (circuit kind, circuit id):
    `_digest(caused_by, kind, circuit_id)`, from a copy of the hash of its shared prefix
    (a TICK makes thousands of them)."""
    prefixes: dict[str, Any] = {}

    def figures_id(circuit_kind: str, circuit_id: str) -> str:
        prefix = prefixes.get(circuit_kind)
        if prefix is None:
            text = f"{caused_by}{_SEP}{circuit_kind}{_SEP}"
            prefix = prefixes[circuit_kind] = blake2b(text.encode(), digest_size=8)
        digest = prefix.copy()
        digest.update(circuit_id.encode())
        return "fig-" + digest.hexdigest()

    return figures_id


def figures_id(caused_by: str, circuit_kind: str, circuit_id: str) -> str:
    """The event_id of one circuit_figures record: one per circuit and TICK at most."""
    return figures_ids(caused_by)(circuit_kind, circuit_id)


def command_id(failure_event_id: str) -> str:
    """The command_id of the recovery command planned for one failure."""
    return "cmd-" + _digest(failure_event_id).hex()


def migration_command_id(worker_id: str, due_ms: int, task_id: str) -> str:
    """The command_id of a task migrated off a lost worker (once per silence)."""
    return "mig-" + _digest(worker_id, due_ms, task_id).hex()


def jitter(event_id: str) -> float:
    """A fraction in [-0.2, 0.2], fixed for a given event id."""
    unit = int.from_bytes(_digest("jitter", event_id), "big") / float(1 << 64)
    return round((2 * unit - 1) * JITTER, 6)


def alert_id(rule: str, subject_kind: str, subject_id: str, ts: int, caused_by: str) -> str:
    """The alert_id of one firing: its rule, subject and moment (and the input that fired
    it, so two firings within one millisecond stay apart)."""
    return "alr-" + _digest(rule, subject_kind, subject_id, ts, caused_by).hex()
