"""Every server listens on 127.0.0.1 unless `--host` (or `[http] host`) says otherwise: the
projector's API, the dashboard (the Streamlit command line the CLI builds) and the
processor's Faust web server (the app's configuration). The API keeps a deep listen backlog,
and the dashboard refuses a history that is not there."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from faultstream.cli import dashboard as dashboard_cli
from faultstream.cli import main
from faultstream.events.config import load_settings
from faultstream.processors.stream.app import create_app
from faultstream.projections.api import ApiServer
from faultstream.projections.queries import History


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command lines `faultstream dashboard` would become (instead of becoming them)."""
    commands: list[list[str]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        commands.append(argv)

    monkeypatch.setattr(dashboard_cli.os, "execve", execve)
    return commands


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.fixture
def history_db(tmp_path: Path) -> Path:
    path = tmp_path / "history.duckdb"
    duckdb.connect(str(path)).close()
    return path


# --- the API ------------------------------------------------------------------------------


def test_api_listens_on_127_0_0_1_by_default_with_a_deep_backlog(tmp_path: Path) -> None:
    server = ApiServer(History(duckdb.connect()), port=0)
    try:
        assert server.host == "127.0.0.1"
        assert server.config.backlog >= 1024
    finally:
        server.close()


def test_api_listens_where_told(tmp_path: Path) -> None:
    server = ApiServer(History(duckdb.connect()), "0.0.0.0", 0)
    try:
        assert server.host == "0.0.0.0"
    finally:
        server.close()


# --- the dashboard ------------------------------------------------------------------------


def test_dashboard_listens_on_127_0_0_1_by_default(history_db: Path, launched) -> None:
    assert main(["dashboard", "--db", str(history_db)]) == 0
    (command,) = launched
    assert flag(command, "--server.address") == "127.0.0.1"


def test_dashboard_listens_on_the_host_given(
    history_db: Path, launched, monkeypatch: pytest.MonkeyPatch
) -> None:
    main(["dashboard", "--db", str(history_db), "--host", "0.0.0.0"])
    monkeypatch.setenv("FAULTSTREAM_HTTP__HOST", "10.1.2.3")
    main(["dashboard", "--db", str(history_db)])
    assert [flag(command, "--server.address") for command in launched] == [
        "0.0.0.0",
        "10.1.2.3",
    ]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (["--db", "missing.duckdb"], "--db missing.duckdb: no such DuckDB file"),
        (["--read-models", "missing-dir"], "--read-models missing-dir: no such directory"),
        ([], "storage.duckdb_path faultstream.duckdb: no such DuckDB file"),
    ],
)
def test_dashboard_refuses_a_history_that_does_not_exist(
    where: list[str],
    expected: str,
    tmp_path: Path,
    launched,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FAULTSTREAM_STORAGE__DUCKDB_PATH", raising=False)
    assert main(["dashboard", *where]) == 2
    assert launched == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert expected in err


# --- the processor's Faust web server ----------------------------------------------------


def test_processor_web_server_binds_127_0_0_1_by_default(tmp_path: Path) -> None:
    settings = load_settings(processor={"data_dir": str(tmp_path)})
    app = create_app(settings, instance_id="a", web_port=7001)
    assert app.conf.web_bind == "127.0.0.1"
    assert app.conf.canonical_url.host == "127.0.0.1"


def test_processor_web_server_binds_the_host_given(tmp_path: Path) -> None:
    settings = load_settings(processor={"data_dir": str(tmp_path)}, http={"host": "0.0.0.0"})
    assert create_app(settings, instance_id="a", web_port=7001).conf.web_bind == "0.0.0.0"
    app = create_app(settings, instance_id="b", web_port=7002, web_host="10.1.2.3")
    assert app.conf.web_bind == "10.1.2.3"
