"""Every door of the command line: each command given a bad flag, a bad file, a bad
environment or a bad setting says so in one line on stderr, naming it, and exits non-zero;
never a traceback. In-process through `faultstream.cli.main`, except where the real
entry point matters (argv bytes that are not UTF-8, the environment of a fresh process).
"""

from __future__ import annotations

import io
import json
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from histories import History

from faultstream.cli import main
from faultstream.events.jsonl import write_records

FAULTSTREAM = Path(sys.executable).with_name("faultstream")


def _closed_port() -> int:
    """A local port nothing listens on: a broker that is not there, refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Door:
    """`argv` (split as a shell would, then {good}, {dir}, {tmp}, {closed}, … filled in)
    under `env` must fail with one line on stderr holding every string of `names`."""

    argv: str
    names: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


DOORS: dict[str, Door] = {
    # --- the command line itself
    "unknown command": Door("fly", ("invalid choice: 'fly'",)),
    "no command": Door("", ("COMMAND",)),
    "unknown flag": Door("replay --input {good} --bogus", ("faultstream replay", "--bogus")),
    # --- configuration files, before or after the command
    "missing config before": Door(
        "--config {tmp}/nope.toml replay --input {good}",
        ("nope.toml", "no such configuration file"),
    ),
    "missing config after": Door(
        "replay --input {good} --config {tmp}/nope.toml",
        ("nope.toml", "no such configuration file"),
    ),
    "config is a directory": Door("--config {dir} simulate --output -", ("outdir", "a directory")),
    "bad TOML": Door(
        "replay --config {tmp}/broken.toml --input {good}", ("broken.toml", "not valid TOML")
    ),
    "binary TOML": Door(
        "tune --config {tmp}/binary.toml --input {good} --grid worker.failure_threshold=2",
        ("binary.toml", "not UTF-8"),
    ),
    "inf in TOML": Door(
        "--config {tmp}/inf.toml replay --input {good}",
        ("inf.toml", "recovery.heartbeat_timeout_s", "finite"),
    ),
    "unknown setting in TOML": Door(
        "replay --config {tmp}/typo.toml --input {good}", ("typo.toml", "failure_treshold")
    ),
    "half-open below success threshold": Door(
        "replay --config {tmp}/halfopen.toml --input {good}",
        ("halfopen.toml", "half_open_max_calls"),
    ),
    "prefix that is no topic name in TOML": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --config {tmp}/prefix.toml",
        ("prefix.toml", "kafka.topic_prefix"),
    ),
    # --- the environment
    "bad JSON section": Door(
        "replay --input {good}",
        ("FAULTSTREAM_KAFKA", "not valid JSON"),
        {"FAULTSTREAM_KAFKA": "{bad"},
    ),
    "bad JSON list": Door(
        "replay --input {good}",
        ("FAULTSTREAM_CIRCUITS__ATTRIBUTION__WORKER", "not valid JSON"),
        {"FAULTSTREAM_CIRCUITS__ATTRIBUTION__WORKER": "[WORKER_CRASH"},
    ),
    "nan setting": Door(
        "replay --input {good}",
        ("FAULTSTREAM_RECOVERY__HEARTBEAT_TIMEOUT_S", "finite"),
        {"FAULTSTREAM_RECOVERY__HEARTBEAT_TIMEOUT_S": "nan"},
    ),
    "inf setting": Door(
        "simulate --output -",
        ("FAULTSTREAM_CIRCUITS__WORKER__RECOVERY_TIMEOUT_S", "finite"),
        {"FAULTSTREAM_CIRCUITS__WORKER__RECOVERY_TIMEOUT_S": "inf"},
    ),
    "zero threshold": Door(
        "replay --input {good}",
        ("FAULTSTREAM_CIRCUITS__TASK_TYPE__FAILURE_THRESHOLD", "failure_threshold"),
        {"FAULTSTREAM_CIRCUITS__TASK_TYPE__FAILURE_THRESHOLD": "0"},
    ),
    "prefix with a slash": Door(
        "topics list",
        ("FAULTSTREAM_KAFKA__TOPIC_PREFIX", "not a valid topic prefix"),
        {"FAULTSTREAM_KAFKA__TOPIC_PREFIX": "team/a"},
    ),
    "config file named by the environment is missing": Door(
        "replay --input {good}",
        ("FAULTSTREAM_CONFIG", "gone.toml"),
        {"FAULTSTREAM_CONFIG": "{tmp}/gone.toml"},
    ),
    # --- replay
    "no history source": Door("replay", ("--input",)),
    "missing input": Door("replay --input {tmp}/nope.jsonl", ("nope.jsonl",)),
    "binary input": Door("replay --input {tmp}/binary.jsonl", ("line 1", "not UTF-8")),
    "input is a directory": Door("replay --input {dir}", ("--input", "outdir")),
    "output is a directory": Door(
        "replay --input {good} --output {dir}", ("--output", "a directory")
    ),
    "output in a missing directory": Door(
        "replay --input {good} --output {tmp}/no/out.jsonl", ("--output",)
    ),
    "bad --since": Door("replay --input {good} --since yesterday", ("--since",)),
    "bad --engine": Door("replay --input {good} --engine warp", ("--engine",)),
    "missing --db": Door("replay --db {tmp}/nope.duckdb", ("--db", "nope.duckdb")),
    "missing --read-models": Door("replay --read-models {tmp}/nope", ("--read-models",)),
    # --- tune
    "grid without values": Door("tune --input {good} --grid worker.failure_threshold", ("--grid",)),
    "grid of an unknown setting": Door(
        "tune --input {good} --grid worker.speed=1,2", ("--grid", "worker.speed")
    ),
    "inf in the grid": Door(
        "tune --input {good} --grid worker.recovery_timeout_s=5,inf",
        ("--grid worker.recovery_timeout_s", "finite"),
    ),
    "nan in the grid": Door(
        "tune --input {good} --grid worker.recovery_timeout_s=nan",
        ("--grid worker.recovery_timeout_s", "finite"),
    ),
    "grid too large": Door(
        "tune --input {good} --grid worker.failure_threshold={axis} "
        "--grid task_type.failure_threshold={axis}",
        ("40,000 configurations", "--max-configs"),
    ),
    "zero --max-configs": Door(
        "tune --input {good} --grid worker.failure_threshold=2 --max-configs 0", ("--max-configs",)
    ),
    "nan weight": Door(
        "tune --input {good} --grid worker.failure_threshold=2 --weights protection=nan",
        ("--weights", "finite"),
    ),
    "nan bound": Door(
        "tune --input {good} --grid worker.failure_threshold=2 "
        "--bound worker.failure_threshold=nan..3",
        ("--bound",),
    ),
    "inf --min-improvement": Door(
        "tune --input {good} --grid worker.failure_threshold=2 --min-improvement inf",
        ("--min-improvement", "finite"),
    ),
    "negative --min-events": Door(
        "tune --input {good} --grid worker.failure_threshold=2 --min-events -1", ("--min-events",)
    ),
    "bad --every": Door(
        "tune --input {good} --grid worker.failure_threshold=2 --every soon", ("--every",)
    ),
    "binary tune input": Door(
        "tune --input {tmp}/binary.jsonl --grid worker.failure_threshold=2", ("line 1", "not UTF-8")
    ),
    # --- emit (all refused before any broker is asked)
    "unknown kind": Door("emit EXPLODED --worker-id w --hardware-class cpu", ("kind", "EXPLODED")),
    "missing --worker-id": Door("emit HEARTBEAT --hardware-class cpu", ("--worker-id",)),
    "--timeout below the producer's batching": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --timeout 0.005", ("--timeout", "0.006")
    ),
    "inf --timeout": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --timeout inf", ("--timeout", "finite")
    ),
    "nan --timeout": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --timeout nan", ("--timeout", "finite")
    ),
    "--timeout past librdkafka's range": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --timeout 1e10",
        ("--timeout", "too long"),
    ),
    "--worker-id not UTF-8": Door(
        "emit HEARTBEAT --worker-id w\udcff --hardware-class cpu", ("--worker-id", "UTF-8")
    ),
    "--ts past year 9999": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --ts 100000000000000000000000",
        ("ts", "253402300799999"),
    ),
    "--message= not UTF-8": Door(
        "emit FAILURE --worker-id w --hardware-class cpu --message=\udcc3", ("--message", "UTF-8")
    ),
    "--prefix with a space": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --prefix 'a b'",
        ("--prefix", "not a valid topic prefix"),
    ),
    "--prefix too long": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --prefix {long}",
        ("--prefix", "too long"),
    ),
    "attribute without =": Door(
        "emit HEARTBEAT --worker-id w --hardware-class cpu --attribute batch",
        ("attributes", "KEY=VALUE"),
    ),
    # --- commands and topics against a broker that is not there
    "commands, unreachable broker": Door(
        "commands --bootstrap-servers 127.0.0.1:{closed}",
        ("no Kafka broker answers at 127.0.0.1:",),
    ),
    "commands --follow, unreachable broker": Door(
        "commands --follow --bootstrap-servers 127.0.0.1:{closed}", ("no Kafka broker answers",)
    ),
    "nan --idle-timeout": Door("commands --idle-timeout nan", ("--idle-timeout", "finite")),
    "negative --idle-timeout": Door("commands --idle-timeout -1", ("--idle-timeout",)),
    "commands --prefix with a slash": Door("commands --prefix a/b", ("--prefix",)),
    "topics, unreachable broker": Door(
        "topics list --bootstrap-servers 127.0.0.1:{closed}", ("no Kafka broker answers",)
    ),
    "topics --prefix with a colon": Door("topics create --prefix a:b", ("--prefix",)),
    "topics, unknown action": Door("topics delete", ("delete",)),
    # --- simulate, demo, broker, processor
    "simulate output is a directory": Door("simulate --output {dir}", ("--output", "outdir")),
    "simulate zero workers": Door("simulate --output - --workers 0", ("--workers",)),
    "simulate bad --duration": Door("simulate --output - --duration forever", ("--duration",)),
    "simulate --duration past any float": Door(
        "simulate --output - --duration {huge}h", ("--duration", "not a finite duration")
    ),
    "simulate missing scenario": Door(
        "simulate --output - --scenario {tmp}/nope.toml", ("nope.toml",)
    ),
    "demo --db is a directory": Door("demo --db {dir}", ("--db", "a directory")),
    "demo --prefix without a broker": Door("demo --prefix p", ("--prefix", "--bootstrap-servers")),
    "demo --prefix with a space": Door(
        "demo --prefix 'a b' --bootstrap-servers 127.0.0.1:{closed}", ("--prefix",)
    ),
    "broker port out of range": Door("broker status --port 70000", ("--port",)),
    "processor web port not a number": Door("processor --web-port http", ("--web-port",)),
}


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The files the doors name, in a directory of their own (also the working one, so
    no ./faultstream.toml of the repository is read)."""
    monkeypatch.chdir(tmp_path)
    history = History()
    history.heartbeat("w1", ts=500)
    history.failure("w1", ts=1_000, failure_type="WORKER_CRASH")
    good = io.StringIO()
    write_records(history.records, good)
    (tmp_path / "good.jsonl").write_text(good.getvalue())
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x01binary\n")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "broken.toml").write_text("[circuits.worker\n")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[kafka]\n")
    (tmp_path / "inf.toml").write_text("[recovery]\nheartbeat_timeout_s = inf\n")
    (tmp_path / "typo.toml").write_text("[circuits.worker]\nfailure_treshold = 3\n")
    (tmp_path / "halfopen.toml").write_text("[circuits.worker]\nhalf_open_max_calls = 1\n")
    (tmp_path / "prefix.toml").write_text('[kafka]\ntopic_prefix = "fleet #1"\n')
    return {
        "good": str(tmp_path / "good.jsonl"),
        "dir": str(tmp_path / "outdir"),
        "tmp": str(tmp_path),
        "closed": str(_closed_port()),
        "axis": ",".join(str(v) for v in range(1, 201)),  # two axes: 40,000 combinations
        "long": "p" * 216,  # with "-processor-decider-state-changelog": 250 > 249
        "huge": "9" * 400,  # a float of it is inf
    }


def _fill(text: str, files: dict[str, str]) -> str:
    for key, value in files.items():
        text = text.replace(f"{{{key}}}", value)
    return text


def _assert_one_clear_line(code: int, out: str, err: str, names: tuple[str, ...]) -> None:
    assert code != 0
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("door", DOORS.values(), ids=DOORS.keys())
def test_each_door_refuses_bad_input_in_one_line_naming_it(
    door: Door, files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    for name, value in door.env.items():
        monkeypatch.setenv(name, _fill(value, files))
    code = main([_fill(arg, files) for arg in shlex.split(door.argv)])
    captured = capsys.readouterr()
    _assert_one_clear_line(code, captured.out, captured.err, door.names)


# --- the real entry point -----------------------------------------------------------------


def _run(argv: list[bytes | str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FAULTSTREAM), *argv], env=env, cwd=cwd, capture_output=True, timeout=120
    )


def test_argv_bytes_that_are_not_utf8_are_one_clear_line(files, tmp_path: Path) -> None:
    argv = [b"emit", b"HEARTBEAT", b"--worker-id", b"w\xff", b"--hardware-class", b"cpu"]
    done = _run(argv, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, tmp_path)
    out, err = done.stdout.decode(), done.stderr.decode(errors="replace")
    _assert_one_clear_line(done.returncode, out, err, ("faultstream emit: --worker-id",))


def test_bad_json_in_the_environment_of_a_fresh_process_is_one_clear_line(
    files, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "FAULTSTREAM_KAFKA": "{bad"}
    done = _run(["replay", "--input", files["good"]], env, tmp_path)
    out, err = done.stdout.decode(), done.stderr.decode()
    _assert_one_clear_line(done.returncode, out, err, ("FAULTSTREAM_KAFKA: not valid JSON",))


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"faultstream {version('faultstream')}"


# --- --config before and after the command ------------------------------------------------


def _first_opening(out: str) -> dict:
    return next(
        r for r in map(json.loads, out.splitlines()) if r["type"] == "circuit_state_changed"
    )


def test_config_before_and_after_the_command_both_take_effect(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = History()
    for i in range(5):
        history.failure("w1", ts=1_000 + i, failure_type="WORKER_CRASH")
    source = tmp_path / "crashes.jsonl"
    with source.open("w") as out:
        write_records(history.records, out)
    config = tmp_path / "two.toml"
    config.write_text("[circuits.worker]\nfailure_threshold = 2\n")

    assert main(["replay", "--input", str(source)]) == 0
    assert _first_opening(capsys.readouterr().out)["consecutive_failures"] == 5  # the default
    assert main(["--config", str(config), "replay", "--input", str(source)]) == 0
    assert _first_opening(capsys.readouterr().out)["consecutive_failures"] == 2
    assert main(["replay", "--input", str(source), "--config", str(config)]) == 0
    assert _first_opening(capsys.readouterr().out)["consecutive_failures"] == 2
