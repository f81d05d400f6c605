"""`faultstream dashboard`: the Streamlit app on a history (a DuckDB file nobody writes, or
the live projector's read models), served headless on one port."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from faultstream.events.config import CONFIG_ENV, Settings
from faultstream.logs import add_log_format_option, json_line

from . import CliError


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        parents=[common],
        help="serve the Streamlit dashboard on a history",
        description="Fleet health, circuits, failures, recovery, workers, time travel, "
        "tuning and operations, on a DuckDB file nobody writes (after a demo) or on the "
        "projector's read models while it runs. The circuit page is at /circuit-breakers.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help="DuckDB file (default: storage.duckdb_path)")
    where.add_argument(
        "--read-models", metavar="DIR", help="the live projector's Parquet read models"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: http.dashboard_port, 8080)"
    )
    parser.add_argument(
        "--host",
        "--address",
        dest="host",
        help="address to listen on (default: http.host, 127.0.0.1; 0.0.0.0 for every interface)",
    )
    add_log_format_option(parser)
    parser.set_defaults(run=run)


def app_path() -> Path:
    import faultstream.dashboard

    return Path(faultstream.dashboard.__file__).parent / "app.py"


def streamlit_command(port: int, address: str) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", address,
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "viewer",  # no "Deploy" button on an operations screen
        # `run` prints the URL; Streamlit's own banner would look up the machine's external
        # IP on the internet for 0.0.0.0 and warn "Did not auto detect external IP" offline.
        "--logger.hideWelcomeMessage", "true",
    ]  # fmt: skip


def dashboard_env(db: str | None, read_models: str | None, config: str | None) -> dict[str, str]:
    from faultstream.dashboard import DB_ENV, READ_MODELS_ENV

    env = dict(os.environ)
    env.pop(DB_ENV, None)
    env.pop(READ_MODELS_ENV, None)
    if read_models:
        env[READ_MODELS_ENV] = str(Path(read_models).resolve())
    elif db:
        env[DB_ENV] = str(Path(db).resolve())
    if config:
        env[CONFIG_ENV] = str(Path(config).resolve())
    return env


def check_history(db: str | None, read_models: str | None, *, db_flag: str) -> None:
    """Refuse a history that is not there: the app would start and show nothing."""
    if read_models is not None:
        if not Path(read_models).is_dir():
            raise CliError(
                f"--read-models {read_models}: no such directory (where `faultstream "
                "projector` publishes; start it first)"
            )
        return
    assert db is not None
    path = Path(db)
    if path.is_dir():
        raise CliError(f"{db_flag} {db}: a directory, not a DuckDB file")
    if not path.is_file():
        raise CliError(
            f"{db_flag} {db}: no such DuckDB file (make one with `faultstream demo --db "
            f"{db}`, or use --read-models beside a running projector)"
        )


def run(args: argparse.Namespace, settings: Settings) -> int:
    port = args.port if args.port is not None else settings.http.dashboard_port
    if not 0 < port < 65536:
        raise CliError(f"--port: {port} is not a port number")
    host = args.host or settings.http.host
    db = None if args.read_models else (args.db or settings.storage.duckdb_path)
    check_history(db, args.read_models, db_flag="--db" if args.db else "storage.duckdb_path")
    where = f"read models {args.read_models}" if args.read_models else f"DuckDB file {db}"
    url = f"http://{host}:{port}/"
    started = f"Dashboard on {url} ({where}); circuits at {url}circuit-breakers"
    json_logs = getattr(args, "log_format", "text") == "json"
    line = json_line("dashboard", started, logger="faultstream.dashboard", url=url)
    print(line if json_logs else started, flush=True)
    env = dashboard_env(db, args.read_models, args.config)
    command = streamlit_command(port, host)
    if json_logs:
        return run_as_json_lines(command, env)
    # Become Streamlit rather than wait on it: a SIGTERM to `faultstream dashboard` then
    # stops the server itself instead of leaving it running as an orphan.
    os.execve(command[0], command, env)


def run_as_json_lines(command: list[str], env: dict[str, str]) -> int:
    """Run Streamlit as a child and say each line it writes as a JSON object (it has no JSON
    log format of its own); SIGTERM and Ctrl-C are passed on to it."""
    env = {**env, "PYTHONUNBUFFERED": "1"}  # each line as it is written, not at exit
    child = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace",
    )  # fmt: skip

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip():
            print(json_line("dashboard", line.strip(), logger="streamlit"), flush=True)
    return child.wait()
