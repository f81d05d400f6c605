"""Which optional extra a command needs, and the one line that says so when it is missing.

`pip install faultstream` is the worker's install (the SDK, `emit`, `commands`, `topics`,
`broker`); the processor, the history and the dashboard come with extras. Nothing here
imports an extra: it only looks for them.
"""

from __future__ import annotations

import importlib.util
import sys

from faultstream.events.exceptions import FaultstreamError

# The top-level modules each extra installs and our code imports (pyproject.toml lists the
# distributions, whose own dependencies count too: streamlit cannot run without pandas).
_HISTORY = frozenset(
    {"duckdb", "pyarrow", "numpy", "numba", "llvmlite", "starlette", "uvicorn", "prometheus_client"}
)
MODULES_OF_EXTRA: dict[str, frozenset[str]] = {
    "processor": frozenset({"faust", "mode", "aiokafka", "rocksdict", "prometheus_client"}),
    "history": _HISTORY,
    "dashboard": _HISTORY | {"streamlit", "plotly", "pandas"},
}
# Installed by the extra, but the code runs without it (an in-memory Faust table).
_OPTIONAL = frozenset({"rocksdict"})

# What each command needs beyond the base install; a command not named needs nothing more.
EXTRA_OF_COMMAND: dict[str, str] = {
    "processor": "processor",
    "projector": "history",
    "replay": "history",
    "tune": "history",
    "simulate": "history",
    "demo": "history",
    "api": "history",
    "report": "history",
    "dashboard": "dashboard",
}


class MissingExtraError(FaultstreamError):
    """A command ran without the optional packages it needs; says what to install."""

    def __init__(self, extra: str, what: str | None = None) -> None:
        self.extra = extra
        needs = f"{what} needs" if what else "needs"
        super().__init__(f"{needs} the [{extra}] extra: pip install 'faultstream[{extra}]'")


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them)."""
    wanted = sorted(MODULES_OF_EXTRA[extra] - _OPTIONAL)
    return [name for name in wanted if not _installed(name)]


def _installed(name: str) -> bool:
    # An imported module counts as is: find_spec raises for one without a __spec__, as
    # faust's lazy top-level module is.
    return name in sys.modules or importlib.util.find_spec(name) is not None


def require_extra(extra: str, what: str | None = None) -> None:
    """Raise MissingExtraError unless every module of `extra` is installed."""
    if missing_modules(extra):
        raise MissingExtraError(extra, what)


def extra_for_import_error(exc: ImportError, command: str | None = None) -> str | None:
    """The extra that would have provided the module `exc` could not import, or None when
    that module is not one of an extra's (a real bug, to be reported as one)."""
    top = (exc.name or "").partition(".")[0]
    own = EXTRA_OF_COMMAND.get(command or "")
    if own is not None and top in MODULES_OF_EXTRA[own]:
        return own
    return next((extra for extra, modules in MODULES_OF_EXTRA.items() if top in modules), None)
