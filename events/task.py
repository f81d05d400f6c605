"""The SDK's task context manager and heartbeat loop (used through `Emitter`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .classify import classify_exception
from .models import MAX_CHECKPOINT_BYTES

if TYPE_CHECKING:
    from .emitter import Emitter

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4096


@dataclass
class RunningTask:
    """What the body of `with emitter.task(...)` gets: the task, and checkpoints for it."""

    emitter: Emitter
    task_id: str
    task_type: str
    attempt: int

    def checkpoint(self, seq: int, state: bytes | None = None) -> str:
        if state is not None and len(state) > MAX_CHECKPOINT_BYTES:
            log.warning("checkpoint state of %d bytes is over 1 MiB", len(state))
        return self.emitter.checkpoint(
            self.task_id, seq, state, task_type=self.task_type, attempt=self.attempt
        )


@contextmanager
def task_context(
    emitter: Emitter,
    task_id: str,
    task_type: str,
    *,
    attempt: int = 0,
    recovery_command_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> Iterator[RunningTask]:
    common = {
        "attempt": attempt,
        "recovery_command_id": recovery_command_id,
        "attributes": attributes,
    }
    emitter.task_started(task_id, task_type, **common)
    try:
        yield RunningTask(emitter, task_id, task_type, attempt)
    except BaseException as exc:
        # KeyboardInterrupt and SystemExit too: the task did not finish, and saying so now
        # beats waiting for the heartbeat timeout to notice.
        message = (str(exc) or type(exc).__name__)[:MAX_MESSAGE_CHARS]
        emitter.failure(
            task_id, task_type, failure_type=classify_exception(exc), message=message, **common
        )
        raise
    emitter.success(task_id, task_type, **common)


def heartbeat_loop(emitter: Emitter, interval_s: float, stop: threading.Event) -> None:
    while True:
        try:
            emitter.heartbeat()
        except Exception:  # a heartbeat must never take the worker down
            log.exception("heartbeat failed")
        if stop.wait(interval_s):
            return
