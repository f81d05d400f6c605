"""The guard: run a call only while its circuits admit it, and tell them how it went.

```python
view = CircuitView.from_kafka(settings)          # or pipeline.circuit_view()
guard = Guard(view, emitter)

@guard(task_type="bert-inference")               # worker and class: the emitter's
def run_benchmark(batch): ...

with guard(task_type="bert-inference", task_id="task-42") as task:
    ...                                          # task: the SDK's RunningTask
```

Each call first asks the local view (`CircuitView.acquire`: dict lookups, no I/O): while
the worker's, hardware class's or task type's circuit is OPEN or FORCED_OPEN — or HALF_OPEN
with all of its `half_open_max_calls` probes running in this process — the call is refused
with `CircuitOpenError` (kind, id, state, `due_at`) and reports nothing. An admitted call
runs inside the SDK's `emitter.task(...)`: TASK_STARTED, then SUCCESS on return or a
classified FAILURE on an exception, which is what the processor's circuits learn from.
Sync and async functions alike; without an emitter the guard only checks (a coordinator
deciding where to send work).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .circuit_view import CircuitOpenError, CircuitView, Permit
from .emitter import new_event_id

if TYPE_CHECKING:
    from .emitter import Emitter
    from .task import RunningTask

__all__ = ["CircuitOpenError", "Guard", "Guarded"]

F = TypeVar("F", bound=Callable[..., Any])
_Entered = tuple[Permit, "AbstractContextManager[Any] | None"]


class Guard:
    """Guards calls with `view`; reports their outcomes through `emitter` (if any)."""

    def __init__(self, view: CircuitView, emitter: Emitter | None = None) -> None:
        self.view = view
        self.emitter = emitter

    def __call__(
        self,
        task_type: str,
        *,
        worker_id: str | None = None,
        hardware_class: str | None = None,
        task_id: str | None = None,
        attempt: int = 0,
        recovery_command_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> Guarded:
        """A decorator and (async) context manager for calls of `task_type` on this worker
        (default: the emitter's `worker_id` and `hardware_class`). `task_id` names the
        task; by default each call gets a fresh one."""
        emitter = self.emitter
        if emitter is not None:
            for name, given, own in (
                ("worker_id", worker_id, emitter.worker_id),
                ("hardware_class", hardware_class, emitter.hardware_class),
            ):
                if given is not None and given != own:
                    raise ValueError(
                        f"{name}: {given!r} is not the emitter's ({own!r}); outcomes are "
                        "reported as the emitter's worker"
                    )
            worker_id, hardware_class = emitter.worker_id, emitter.hardware_class
        if not worker_id or not hardware_class or not task_type:
            raise ValueError("guard: worker_id, hardware_class and task_type are required")
        return Guarded(
            self,
            worker_id,
            hardware_class,
            task_type,
            task_id=task_id,
            attempt=attempt,
            recovery_command_id=recovery_command_id,
            attributes=attributes,
        )


class Guarded(AbstractContextManager["RunningTask | None"]):
    """One guarded kind of call: decorate a function with it, or enter it (`with` or
    `async with`) around a block. Entering yields the SDK's `RunningTask` (for
    checkpoints), or None without an emitter."""

    def __init__(
        self,
        guard: Guard,
        worker_id: str,
        hardware_class: str,
        task_type: str,
        *,
        task_id: str | None,
        attempt: int,
        recovery_command_id: str | None,
        attributes: Mapping[str, str] | None,
    ) -> None:
        self.guard = guard
        self.worker_id = worker_id
        self.hardware_class = hardware_class
        self.task_type = task_type
        self.task_id = task_id
        self.attempt = attempt
        self.recovery_command_id = recovery_command_id
        self.attributes = attributes
        # What each `with` entered, innermost last, per thread and per asyncio task: one
        # Guarded may be entered by several at once (a module-level `with` target).
        self._active: ContextVar[tuple[_Entered, ...]] = ContextVar(
            f"faultstream-guard-{id(self)}", default=()
        )

    # --- the check -------------------------------------------------------------------

    def check(self) -> None:
        """Raise CircuitOpenError if a call would be refused now (takes no probe)."""
        refused = self.guard.view.refusal(self.worker_id, self.hardware_class, self.task_type)
        if refused is not None:
            raise refused

    def _begin(self) -> tuple[Permit, AbstractContextManager[Any] | None, Any]:
        permit = self.guard.view.acquire(self.worker_id, self.hardware_class, self.task_type)
        emitter = self.guard.emitter
        if emitter is None:
            return permit, None, None
        try:
            task = emitter.task(
                self.task_id or new_event_id(),
                self.task_type,
                attempt=self.attempt,
                recovery_command_id=self.recovery_command_id,
                attributes=self.attributes,
            )
            running = task.__enter__()
        except BaseException:
            permit.release()
            raise
        return permit, task, running

    @staticmethod
    def _end(
        permit: Permit,
        task: AbstractContextManager[Any] | None,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if task is not None:
                task.__exit__(exc_type, exc, tb)
        finally:
            permit.release()

    # --- context manager -------------------------------------------------------------

    def __enter__(self) -> RunningTask | None:
        permit, task, running = self._begin()
        self._active.set((*self._active.get(), (permit, task)))
        return running

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entered = self._active.get()
        self._active.set(entered[:-1])
        permit, task = entered[-1]
        # The with statement re-raises the body's exception itself: only a new one (the
        # report failing) travels from here, never the body's a second time.
        try:
            self._end(permit, task, exc_type, exc, tb)
        except BaseException as raised:
            if raised is not exc:
                raise
        return None

    async def __aenter__(self) -> RunningTask | None:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # --- decorator -------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                permit, task, _ = self._begin()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    self._end(permit, task, type(exc), exc, exc.__traceback__)
                    raise
                self._end(permit, task, None, None, None)
                return result

            return guarded_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            permit, task, _ = self._begin()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._end(permit, task, type(exc), exc, exc.__traceback__)
                raise
            self._end(permit, task, None, None, None)
            return result

        return guarded  # type: ignore[return-value]
