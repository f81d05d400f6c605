"""What the pytest plugin costs a passing suite: 2,000 trivial tests with and without it.

Writes a throwaway project of N trivial tests and runs `python -m pytest -q` on it
alternately without the plugin (`-p no:faultstream`) and with it (`--faultstream`,
embedded mode, its history in the project's cache directory), --runs times each after a
warm-up of each (pyc files, and a history to start from, as in CI from the second build
on). Per run: the wall time of the pytest command, and the CPU time of its process (with
the agent's start, before it leaves pytest's children). After each run with the plugin,
the time until the agent has written the history and released it ("writing after exit":
what the next session or `faultstream report` would wait for); runs never overlap it.
Each figure is the median over the runs (the machine is noisy); `--xdist N` adds `-n N`;
`--env NAME=VALUE` sets a FAULTSTREAM_ setting, which has the agent start with the session
(to check the settings) instead of only when needed.

    .venv/bin/python bench/bench_pytest_plugin.py [--tests 2000] [--runs 9] [--xdist 0]
                                                  [--env FAULTSTREAM_RECOVERY__MAX_RETRIES=3]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_OVERHEAD = 0.05


def write_project(root: Path, tests: int) -> None:
    body = "".join(f"def test_{i}():\n    pass\n\n\n" for i in range(tests))
    (root / "test_trivial.py").write_text(body)
    (root / "pytest.ini").write_text("[pytest]\n")  # rootdir here, not the repository's


def wait_for_writer(lock: Path, timeout_s: float = 120.0) -> float:
    """Seconds until nobody holds the agent's lock on the history (0 if nobody did)."""
    started = time.perf_counter()
    if not lock.exists():
        return 0.0
    with open(lock, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(f"{lock} still held after {timeout_s}s") from None
                time.sleep(0.005)
                continue
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return time.perf_counter() - started


def run(root: Path, flags: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s of the pytest process) of one pytest command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *flags],
        cwd=root,
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("FAULTSTREAM_")}, **env},
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"pytest {' '.join(flags)} exited {result.returncode}:\n{result.stdout}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--xdist", type=int, default=0, help="pytest-xdist workers (-n)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="bench-pytest-plugin-") as tmp:
        root = Path(tmp)
        write_project(root, args.tests)
        lock = root / ".pytest_cache" / "d" / "faultstream" / "history.duckdb.lock"
        common = ["-n", str(args.xdist)] if args.xdist else []
        without, with_plugin = [*common, "-p", "no:faultstream"], [*common, "--faultstream"]
        run(root, without, env)
        run(root, with_plugin, env)
        wait_for_writer(lock)
        samples: dict[str, list[float]] = {k: [] for k in ("bw", "bc", "pw", "pc", "write")}
        load_before = os.getloadavg()[0]
        for _ in range(args.runs):
            wall, cpu = run(root, without, env)
            samples["bw"].append(wall)
            samples["bc"].append(cpu)
            wall, cpu = run(root, with_plugin, env)
            samples["pw"].append(wall)
            samples["pc"].append(cpu)
            samples["write"].append(wait_for_writer(lock))
        load_after = os.getloadavg()[0]
    med = {key: statistics.median(values) for key, values in samples.items()}
    overhead = med["pw"] / med["bw"] - 1
    cpu_overhead = med["pc"] / med["bc"] - 1
    xdist = f", -n {args.xdist}" if args.xdist else ""
    xdist += f", {' '.join(args.env)}" if args.env else ""
    print(
        f"{args.tests} trivial tests{xdist}, median of {args.runs} alternating runs "
        f"(load average {load_before:.1f} -> {load_after:.1f})"
    )
    print("| | wall (s) | CPU of the pytest process (s) |")
    print("| --- | --- | --- |")
    print(f"| without the plugin | {med['bw']:.3f} | {med['bc']:.3f} |")
    print(f"| `--faultstream` (embedded) | {med['pw']:.3f} | {med['pc']:.3f} |")
    print(f"| overhead | **{overhead:+.1%}** | {cpu_overhead:+.1%} |")
    print(f"writing after exit: median {med['write']:.3f} s (max {max(samples['write']):.3f} s)")
    verdict = "met" if overhead <= TARGET_OVERHEAD else "NOT met"
    print(f"target: at most {TARGET_OVERHEAD:.0%} slower ({verdict})")
    spread = [f"{b:.2f}/{p:.2f}" for b, p in zip(samples["bw"], samples["pw"], strict=True)]
    print("runs (without/with, s):", " ".join(spread))


if __name__ == "__main__":
    main()
