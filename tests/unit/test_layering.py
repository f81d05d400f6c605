"""The layering of the code (docs/architecture.md): which part may import which.

Every import counts, a lazy one inside a function too. A part may import itself, the ones
listed for it, and any library not forbidden to it; nothing else of faultstream. The
allowed imports form no cycle (checked below), so neither can the code.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Directories of the repository and the packages they install as.
PACKAGE_DIRS = {
    "events": "faultstream.events",
    "processors": "faultstream.processors",
    "projections": "faultstream.projections",
    "dashboard": "faultstream.dashboard",
    "faultstream": "faultstream",
}
EVENTS = "faultstream.events"
CORE = "faultstream.processors.core"
COMPILED = "faultstream.processors.compiled"
COORDINATOR = "faultstream.processors.coordinator"
STREAM = "faultstream.processors.stream"
OFFLINE = "faultstream.processors.offline"
SIMULATOR = "faultstream.processors.simulator"
PROJECTIONS = "faultstream.projections"
DASHBOARD = "faultstream.dashboard"
SHARED = "faultstream.shared"  # faultstream/*.py outside cli/: logs, metrics, extras, broker
CLI = "faultstream.cli"

# part -> the parts it may import (besides itself)
ALLOWED = {
    EVENTS: set(),
    CORE: {EVENTS},
    COMPILED: {EVENTS, CORE},
    COORDINATOR: {EVENTS, CORE},
    PROJECTIONS: {EVENTS, CORE, SHARED},
    OFFLINE: {EVENTS, CORE, COMPILED, PROJECTIONS},
    STREAM: {EVENTS, CORE, SHARED},
    SIMULATOR: {EVENTS, CORE, COORDINATOR},
    DASHBOARD: {EVENTS, PROJECTIONS, OFFLINE, SHARED},  # figures come from the history
    SHARED: {EVENTS},
    CLI: {EVENTS, CORE, COMPILED, COORDINATOR, STREAM, OFFLINE, SIMULATOR, PROJECTIONS,
          DASHBOARD, SHARED},
}  # fmt: skip
# Libraries a part must never import: the core is pure; the SDK stays slim.
FORBIDDEN_LIBRARIES = {
    CORE: {"faust", "aiokafka", "confluent_kafka", "duckdb", "numba", "pyarrow", "streamlit"},
    EVENTS: {"faust", "duckdb", "numba", "streamlit"},
    COMPILED: {"faust", "aiokafka", "confluent_kafka", "streamlit"},
}


def part_of(module: str) -> str | None:
    """The part a faultstream module belongs to (None: not faultstream)."""
    if module != "faultstream" and not module.startswith("faultstream."):
        return None
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    if module.startswith(("faultstream.pytest_", "faultstream.demo_kafka")):
        return CLI  # doors like the command line: the pytest plugin, the Kafka demo
    return SHARED


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGE_DIRS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def sources() -> dict[str, Path]:
    return {
        module_name(path): path
        for directory in PACKAGE_DIRS
        for path in sorted((ROOT / directory).rglob("*.py"))
    }


def imports_of(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from package import module` imports the module
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def violations() -> list[str]:
    known = set(sources())
    found = []
    for module, path in sources().items():
        part = part_of(module)
        for target in sorted(imports_of(module, path)):
            target_part = part_of(target)
            if target_part is None:
                library = target.partition(".")[0]
                if library in FORBIDDEN_LIBRARIES.get(part, ()):
                    found.append(f"{module} imports {library}")
                continue
            if target not in known and target.rpartition(".")[0] in known:
                continue  # a name imported from a module, not a module
            if target_part != part and target_part not in ALLOWED[part]:
                found.append(f"{module} imports {target} ({part} may not import {target_part})")
    return found


def test_every_import_follows_the_layering():
    assert violations() == []


def test_the_allowed_imports_form_no_cycle():
    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(part: str, path: list[str]) -> None:
        if seen.get(part) == 2:
            return
        if seen.get(part) == 1:
            pytest.fail("cycle: " + " -> ".join([*path, part]))
        seen[part] = 1
        for below in sorted(ALLOWED[part]):
            visit(below, [*path, part])
        seen[part] = 2

    for part in ALLOWED:
        visit(part, [])


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The check is not vacuous: the core importing projections is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from faultstream.projections.queries import History\nimport duckdb\n")
    monkeypatch.setitem(sources(), f"{CORE}.bad", bad)
    assert violations() == [
        f"{CORE}.bad imports duckdb",
        f"{CORE}.bad imports faultstream.projections.queries ({CORE} may not import {PROJECTIONS})",
    ]
