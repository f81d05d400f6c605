"""Numba's on-disk cache. A fast path's first call on a machine compiles it (replay's
compiled core: about 2 minutes here); every later call, in any process, loads it in well
under a second. This says which still has to compile, so a command can say why it is
slow."""

from __future__ import annotations

import os
import sys
from typing import Any

# The entry points of replay's fast paths: (module, function).
REPLAY_FAST_PATHS = (
    ("faultstream.processors.offline.jsonl_kernel", "parse_chunks"),
    ("faultstream.processors.compiled.kernel", "replay"),
)


def compiles_on_first_call(dispatcher: Any) -> bool:
    """True when numba has no machine code of `dispatcher` on disk yet. False when it
    cannot tell (the cache's layout is numba's own, not a public API)."""
    try:
        return not os.path.exists(dispatcher._cache._cache_file._index_path)
    except AttributeError:
        return False


def compiling(paths: tuple[tuple[str, str], ...] = REPLAY_FAST_PATHS) -> bool:
    """Is one of `paths`, already imported, without machine code on disk: compiling now,
    or about to?"""
    return any(
        compiles_on_first_call(getattr(sys.modules[module], name))
        for module, name in paths
        if module in sys.modules
    )
