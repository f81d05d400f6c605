"""Pausing the garbage collector around bulk work on acyclic objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No collections inside: building or holding many acyclic objects (records, rows,
    Arrow columns) sets off full collections that walk every live object again and
    again, for nothing. Nests: only the outermost pause turns the collector back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
