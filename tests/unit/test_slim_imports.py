"""The worker SDK and the CLI's parser import nothing beyond the base install.

`pip install faultstream` (no extras) has no numpy, numba, pyarrow, DuckDB, Faust,
Streamlit or pandas: a module of the base install that imported one at its top would fail
there. Checked in a fresh interpreter, where nothing else has loaded them first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import ModuleType

import pytest

from faultstream.extras import MissingExtraError, extra_for_import_error

# The top-level modules of the base install's distributions (pyproject.toml's
# `dependencies` and theirs); cramjam is fastavro's optional codec, used when present.
BASE = frozenset({"faultstream", "confluent_kafka", "pydantic", "pydantic_core",
                  "pydantic_settings", "annotated_types", "typing_extensions",
                  "typing_inspection", "dotenv", "fastavro", "cramjam"})  # fmt: skip


def _outside_base_after(code: str) -> list[str]:
    """Top-level modules loaded by `code`, in a fresh interpreter, that are neither the
    standard library's nor the base install's (interpreter internals start with `_`)."""
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} "
        "- set(sys.stdlib_module_names))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(result.stdout)
    outside = [m for m in loaded if m not in BASE and not m.startswith("_")]
    return [m for m in outside if m != "cython_runtime"]  # fastavro's compiled modules


def test_the_probe_sees_an_extra_when_one_is_imported() -> None:
    assert _outside_base_after("import duckdb") == ["duckdb"]


def test_worker_sdk_and_command_consumer_load_only_the_base_install() -> None:
    code = "import faultstream.events.emitter, faultstream.events.consumer"
    assert _outside_base_after(code) == []


def test_every_events_module_loads_only_the_base_install() -> None:
    code = (
        "import importlib, pkgutil, faultstream.events as events\n"
        "for m in pkgutil.iter_modules(events.__path__):\n"
        "    importlib.import_module(f'faultstream.events.{m.name}')"
    )
    assert _outside_base_after(code) == []


def test_building_the_cli_parser_loads_only_the_base_install() -> None:
    # `faultstream --help`, `emit` and `commands` import every subcommand's module.
    code = "from faultstream.cli import build_parser\nbuild_parser()"
    assert _outside_base_after(code) == []


@pytest.mark.parametrize(
    ("module", "command", "extra"),
    [
        ("duckdb", "replay", "history"),
        ("numba.core", "tune", "history"),
        ("faust", "processor", "processor"),
        ("pandas", "dashboard", "dashboard"),
        ("prometheus_client", "api", "history"),  # shared by two extras: the command's own
        ("prometheus_client", None, "processor"),
        ("streamlit", None, "dashboard"),
    ],
)
def test_a_missing_module_names_the_extra_that_installs_it(
    module: str, command: str | None, extra: str
) -> None:
    error = ModuleNotFoundError(f"No module named {module!r}", name=module)
    assert extra_for_import_error(error, command) == extra


def test_a_module_of_no_extra_is_not_blamed_on_one() -> None:
    error = ModuleNotFoundError("No module named 'nosuchthing'", name="nosuchthing")
    assert extra_for_import_error(error, "replay") is None


def test_missing_extra_message_is_the_install_line() -> None:
    assert str(MissingExtraError("history")) == (
        "needs the [history] extra: pip install 'faultstream[history]'"
    )


def test_a_command_whose_extra_is_missing_says_so_in_one_line_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from faultstream import cli, extras
    from faultstream.cli import replay

    ran: list[bool] = []
    monkeypatch.setattr(replay, "run", lambda args, settings: ran.append(True) or 0)
    real_find_spec = extras.importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "duckdb" else real_find_spec(name, *a),
    )
    monkeypatch.delitem(sys.modules, "duckdb", raising=False)  # as if never installed
    assert cli.main(["replay", "--input", "history.jsonl"]) == 2
    assert ran == []
    assert capsys.readouterr().err == (
        "faultstream replay: needs the [history] extra: pip install 'faultstream[history]'\n"
    )


def test_an_extra_imported_while_a_command_runs_is_named_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from faultstream import cli
    from faultstream.cli import commands

    def run(args: object, settings: object) -> int:
        raise ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")

    monkeypatch.setattr(commands, "run", run)
    assert cli.main(["commands"]) == 2
    assert capsys.readouterr().err == (
        "faultstream commands: needs the [history] extra: pip install 'faultstream[history]'\n"
    )


def test_a_command_module_that_cannot_import_its_extra_leaves_the_others_working(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from faultstream import cli

    real_import = cli.importlib.import_module

    def import_module(name: str, *args: str) -> ModuleType:
        if name == "faultstream.cli.api":
            raise ModuleNotFoundError("No module named 'starlette'", name="starlette")
        return real_import(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*(c for c in cli.SUBCOMMANDS if c != "api"), "api"])
    assert cli.main(["api", "--port", "8000"]) == 2
    assert capsys.readouterr().err == (
        "faultstream api: needs the [history] extra: pip install 'faultstream[history]'\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["emit", "--help"])
    assert exit_info.value.code == 0
    assert "--worker-id" in capsys.readouterr().out
