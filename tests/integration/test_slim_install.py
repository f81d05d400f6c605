"""The worker's install: the wheel without extras, in a fresh venv, against the broker.

Builds the wheel, installs it with no extras into a new venv (from PyPI or pip's cache),
and checks there that the SDK and the command consumer work, that none of the heavy
packages came along, and that a history command says which extra it needs. Prints the
venv's size (BENCHMARKS.md, "Slim install").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from faultstream.events.admin import delete_topics
from faultstream.events.config import load_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What the wheel is built from: pyproject.toml maps these folders into the package.
_SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
SOURCES = sorted({"pyproject.toml", "README.md", *_SETUPTOOLS["package-dir"].values()})
HEAVY = ("numpy", "numba", "llvmlite", "pyarrow", "duckdb", "faust", "aiokafka", "mode",
         "streamlit", "pandas", "plotly", "rocksdict")  # fmt: skip
HANG_GUARD_S = 600  # pip may download; only stops a broken step from hanging


def _run(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=HANG_GUARD_S
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def _size_mib(root: Path) -> float:
    """Disk use of everything under `root`, as `du` counts it."""
    blocks = sum(path.lstat().st_blocks for path in root.rglob("*"))
    return blocks * 512 / 2**20


def _env(**settings: str) -> dict[str, str]:
    """The environment minus anything that could reach the dev venv, the repo or its
    settings, plus `settings`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FAULTSTREAM_", "PYTHON", "VIRTUAL_ENV"))
    }
    return env | settings


@dataclass(frozen=True)
class SlimVenv:
    root: Path
    work: Path  # the cwd of every command: no ./faultstream.toml, no repo sources
    baseline_mib: float  # the fresh venv's own pip and setuptools
    installed_mib: float

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    @property
    def faultstream(self) -> str:
        return str(self.root / "bin" / "faultstream")


@pytest.fixture(scope="module")
def slim_venv(tmp_path_factory: pytest.TempPathFactory) -> SlimVenv:
    tmp = tmp_path_factory.mktemp("slim")
    # Built from a copy: a build writes build/ and *.egg-info beside its sources.
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    wheels = tmp / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(src)]
    )
    (wheel,) = wheels.glob("faultstream-*.whl")

    root = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(root)])
    site_packages = next((root / "lib").glob("python3*/site-packages"))
    baseline = _size_mib(site_packages)
    _run([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], env=_env())
    return SlimVenv(root, tmp, baseline, _size_mib(site_packages))


def test_base_install_has_none_of_the_heavy_packages(slim_venv: SlimVenv) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        f"print(json.dumps([m for m in {HEAVY!r} if importlib.util.find_spec(m) is not None]))"
    )
    result = _run([slim_venv.python, "-c", probe], env=_env(), cwd=slim_venv.work)
    assert json.loads(result.stdout) == []
    print(
        f"\nslim install: site-packages {slim_venv.installed_mib:.1f} MiB "
        f"({slim_venv.baseline_mib:.1f} MiB of it the fresh venv's own pip and setuptools; "
        f"faultstream and its dependencies {slim_venv.installed_mib - slim_venv.baseline_mib:.1f} "
        "MiB)"
    )


def test_cli_runs_and_a_command_of_an_extra_names_it(slim_venv: SlimVenv) -> None:
    env, cwd = _env(), slim_venv.work
    version = _run([slim_venv.faultstream, "--version"], env=env, cwd=cwd)
    assert version.stdout.startswith("faultstream ")
    for args in (["--help"], ["emit", "--help"], ["commands", "--help"], ["replay", "--help"]):
        assert _run([slim_venv.faultstream, *args], env=env, cwd=cwd).stdout

    replay = _run(
        [slim_venv.faultstream, "replay", "--input", "history.jsonl"],
        env=env, cwd=cwd, check=False,
    )  # fmt: skip
    assert replay.returncode != 0
    assert replay.stderr == (
        "faultstream replay: needs the [history] extra: pip install 'faultstream[history]'\n"
    )
    processor = _run([slim_venv.faultstream, "processor"], env=env, cwd=cwd, check=False)
    assert processor.returncode != 0
    assert processor.stderr.strip().endswith("pip install 'faultstream[processor]'")
    assert processor.stderr.count("\n") == 1


# Runs in the slim venv: a worker's events out through the SDK and back through the codec,
# and a recovery command in through the command consumer.
ROUND_TRIP = """
import json, time, uuid

from confluent_kafka import Consumer, Producer

import faultstream
from faultstream.events.codec import Codec
from faultstream.events.config import load_settings
from faultstream.events.emitter import Emitter
from faultstream.events.models import RecoveryCommand

settings = load_settings()
with Emitter(settings, worker_id="gpu-07", hardware_class="cuda") as emitter:
    sent = [
        emitter.heartbeat(),
        emitter.failure("task-42", "bert-inference", message="CUDA out of memory"),
    ]
    assert emitter.flush(60) == 0

codec = Codec()
command = RecoveryCommand(
    command_id="cmd-1", ts=1, task_id="task-42", task_type="bert-inference",
    worker_id="gpu-07", strategy="DIFFERENT_WORKER", attempt=1, delay_s=0.0,
    reason="ladder", caused_by=sent[1],
)
producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
producer.produce(settings.kafka.topic("commands"), codec.encode(command), b"gpu-07")
assert producer.flush(60) == 0

consumer = Consumer({
    "bootstrap.servers": settings.kafka.bootstrap_servers,
    "group.id": f"slim-{uuid.uuid4().hex[:8]}",
    "auto.offset.reset": "earliest",
})
consumer.subscribe([settings.kafka.topic("events")])
received = []
deadline = time.monotonic() + 120  # hang guard only
while len(received) < len(sent) and time.monotonic() < deadline:
    msg = consumer.poll(0.5)
    if msg is not None and msg.error() is None:
        event = codec.decode(msg.value())
        received.append({"event_id": event.event_id, "kind": event.kind.value,
                         "worker_id": event.worker_id, "message": event.message})
consumer.close()
print(json.dumps({"sent": sent, "received": received, "package": faultstream.__file__}))
"""


@pytest.mark.kafka
def test_sdk_round_trip_on_the_broker_from_the_base_install(
    slim_venv: SlimVenv, kafka_bootstrap: str, topic_prefix: str
) -> None:
    env = _env(
        FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap,
        FAULTSTREAM_KAFKA__TOPIC_PREFIX=topic_prefix,
        FAULTSTREAM_EMITTER__SPOOL_PATH=str(slim_venv.work / f"{topic_prefix}.spool.jsonl"),
    )
    faultstream, cwd = slim_venv.faultstream, slim_venv.work
    try:
        _run([faultstream, "topics", "create"], env=env, cwd=cwd)
        script = slim_venv.work / "round_trip.py"
        script.write_text(ROUND_TRIP)
        result = _run([slim_venv.python, str(script)], env=env, cwd=cwd)
        out = json.loads(result.stdout.strip().splitlines()[-1])
        # The installed wheel ran, not the repository's sources.
        assert Path(out["package"]).is_relative_to(slim_venv.root)
        assert sorted(e["event_id"] for e in out["received"]) == sorted(out["sent"])
        failure = next(e for e in out["received"] if e["kind"] == "FAILURE")
        assert failure["worker_id"] == "gpu-07"
        assert failure["message"] == "CUDA out of memory"

        commands = _run(
            [faultstream, "commands", "--worker-id", "gpu-07", "--from-beginning"],
            env=env, cwd=cwd,
        )  # fmt: skip
        (line,) = commands.stdout.splitlines()
        assert json.loads(line)["command_id"] == "cmd-1"
        assert json.loads(line)["caused_by"] == out["sent"][1]
    finally:
        delete_topics(
            load_settings(
                kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": topic_prefix}
            ).kafka
        )
