"""What one process must own alone refuses a second one with one clear line: a read-models
folder (one projector's, whatever DuckDB file it writes), a DuckDB history file, and a
processor instance id (its data dir and web port). No broker needed: each is refused
before anything connects."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from faultstream.cli import main
from faultstream.events.config import Settings, load_settings
from faultstream.events.locks import FileLock, LockedError
from faultstream.processors.stream.app import instance_datadir
from faultstream.projections.projector import Projector
from faultstream.projections.read_models import ReadModelPublisher, ReadModelsLockedError

FAULTSTREAM = str(Path(sys.executable).parent / "faultstream")
HANG_GUARD_S = 120  # only stops a broken test from hanging; never a performance bound


def projector_settings(tmp_path: Path, db: str, read_models: str = "read-models") -> Settings:
    return load_settings(
        storage={
            "duckdb_path": str(tmp_path / db),
            "read_models_dir": str(tmp_path / read_models),
        }
    )


def test_a_second_publisher_on_the_same_read_models_folder_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "read-models"
    first = ReadModelPublisher(duckdb.connect(), directory)
    with pytest.raises(ReadModelsLockedError, match="in use by another writer"):
        ReadModelPublisher(duckdb.connect(), directory)
    first.close()
    # Released: the next writer may take the folder.
    ReadModelPublisher(duckdb.connect(), directory).close()


def test_a_second_projector_on_the_same_read_models_folder_is_refused(tmp_path: Path) -> None:
    first = Projector(projector_settings(tmp_path, "one.duckdb"))
    try:
        with pytest.raises(ReadModelsLockedError, match=r"read models .*read-models: in use"):
            Projector(projector_settings(tmp_path, "two.duckdb"))
    finally:
        first.close()
    # The refused one let go of its DuckDB file, and the first one of the folder.
    Projector(projector_settings(tmp_path, "two.duckdb")).close()


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from faultstream.events.locks import FileLock; "
         f"lock = FileLock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockedError) as refused:
            FileLock(path).acquire()
        assert refused.value.holder.startswith(f"pid {holder.pid} on ")
    finally:
        holder.kill()
        holder.wait()
    FileLock(path).acquire().release()  # a killed holder leaves no stale lock


def test_a_second_projector_on_the_same_duckdb_file_gets_one_clear_line(tmp_path: Path) -> None:
    db = tmp_path / "history.duckdb"
    held = duckdb.connect(str(db))  # this process writes the file
    try:
        result = subprocess.run(
            [FAULTSTREAM, "projector", "--db", str(db), "--read-models", str(tmp_path / "rm"),
             "--no-api"],
            capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=tmp_path,
        )  # fmt: skip
    finally:
        held.close()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(db) in lines[0] and "in use by another process" in lines[0]


# --- the processor ------------------------------------------------------------------------


def processor_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FAULTSTREAM_PROCESSOR__DATA_DIR", str(tmp_path / "processor"))
    # Nothing listens here: a run that got past the checks would fail on Kafka, not use it.
    monkeypatch.setenv("FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.chdir(tmp_path)
    return load_settings()


def test_the_same_instance_id_twice_is_refused_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = processor_env(tmp_path, monkeypatch)
    # What the first `faultstream processor --instance-id gpu-a` holds while it runs.
    with FileLock(instance_datadir(settings, "gpu-a") / "instance.lock"):
        code = main(["processor", "--instance-id", "gpu-a"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert "--instance-id gpu-a: another instance with that id runs" in err


def test_a_web_port_in_use_is_refused_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    processor_env(tmp_path, monkeypatch)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = main(["processor", "--instance-id", "gpu-b", "--web-port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert f"web port {port} on 127.0.0.1 is in use" in err
