"""The pytest plugin (entry point `pytest11`): every test a task of the fleet (docs/ci.md).

Enabled by `--faultstream` or `faultstream = true` in the ini file; otherwise it adds its
options and nothing else (no hook runs per test, nothing beyond the standard library is
imported). Enabled, each attempt of a test is a task: TASK_STARTED, then SUCCESS or a
FAILURE classified from the exception by the SDK's classifier, with task_type = the node
id (or the `faultstream(task_type=...)` marker's group), task_id = run id + node id,
attempt = the retry number, worker_id = the host (plus the xdist worker id).

Before a test runs, its task_type circuit is asked: OPEN (not yet due) or FORCED_OPEN
quarantines it (`--faultstream-quarantine skip|xfail|off`). After a failure the plugin
follows the core's recovery command: IMMEDIATE_RETRY and DELAYED_RETRY rerun the test in
the session (the delay honoured up to `--faultstream-max-delay`); a test that failed and
then passed is reported flaky; any other command is reported with the failure.

The fleet's side — validation, the core, the DuckDB history or Kafka — runs in an agent
process (faultstream/pytest_agent.py), one per session at most, which every xdist worker
talks to (faultstream/pytest_link.py). In the embedded mode with default settings none
runs while tests pass: the session spools its messages, and an agent started at the first
failure (whose recovery command is needed) or once the session is over decides and
records them. The pytest exit status is never changed.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

RETRY_STRATEGIES = frozenset({"IMMEDIATE_RETRY", "DELAYED_RETRY"})
QUARANTINE_MODES = ("skip", "xfail", "off")
HARDWARE_CLASS_ENV = "FAULTSTREAM_HARDWARE_CLASS"
WORKER_ID_ENV = "FAULTSTREAM_WORKER_ID"
PROPERTY = "faultstream"  # the user property (junitxml too) that says what became of a test
_LOCK_WAIT_S = 120.0  # for the last session's agent to finish writing the history
_READY_TIMEOUT_S = 300.0  # a first session on a large history replays it before answering
_DONE_TIMEOUT_S = 300.0
_MAX_MESSAGE_CHARS = 4096
_POLL_EVERY_S = 0.1  # how stale the quarantine's view of the circuits may be


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faultstream", "faultstream: each test a task of the fleet")
    group.addoption(
        "--faultstream",
        action="store_true",
        default=False,
        help="report each test as a task, quarantine tests whose circuit is open, retry as "
        "the recovery command says (also: `faultstream = true` in the ini file)",
    )
    group.addoption(
        "--faultstream-hardware-class",
        metavar="CLASS",
        help=f"the runner's hardware class (default: ${HARDWARE_CLASS_ENV}, else cpu)",
    )
    group.addoption(
        "--faultstream-worker-id",
        metavar="ID",
        help=f"the runner's worker id (default: ${WORKER_ID_ENV}, else the host name); "
        "pytest-xdist workers add /gw0, /gw1, ...",
    )
    group.addoption(
        "--faultstream-quarantine",
        choices=QUARANTINE_MODES,
        help="a test whose task_type circuit is open is skipped, run as xfail, or run as "
        "usual (default: the ini's faultstream_quarantine, else skip)",
    )
    group.addoption(
        "--faultstream-max-delay",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="the longest wait before a DELAYED_RETRY rerun (default 5)",
    )
    group.addoption(
        "--faultstream-mode",
        choices=("auto", "embedded", "kafka"),
        default="auto",
        help="kafka when a broker is configured ([kafka] bootstrap_servers in the settings "
        "file or FAULTSTREAM_KAFKA__BOOTSTRAP_SERVERS), else the embedded pipeline on a "
        "DuckDB file (default auto)",
    )
    group.addoption(
        "--faultstream-config",
        metavar="FILE.toml",
        help="settings file (default: $FAULTSTREAM_CONFIG or ./faultstream.toml if present)",
    )
    group.addoption(
        "--faultstream-db",
        metavar="PATH",
        help="the embedded history (default: <cache dir>/d/faultstream/history.duckdb)",
    )
    group.addoption(
        "--faultstream-run-id", metavar="ID", help="this run's id (default: time + random)"
    )
    group.addoption(
        "--faultstream-command-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="kafka: how long a failure waits for the processor's command (default 10)",
    )
    parser.addini("faultstream", type="bool", default=False, help="enable faultstream")
    parser.addini("faultstream_quarantine", default="skip", help="skip | xfail | off")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faultstream(task_type=NAME): report the test under task type NAME (one circuit "
        "for the group) instead of its node id",
    )
    if not (config.getoption("faultstream") or config.getini("faultstream")):
        return
    option = config.option
    if option.collectonly or getattr(option, "showfixtures", False):
        return
    if getattr(option, "show_fixtures_per_test", False) or getattr(option, "setupplan", False):
        return
    if os.name != "posix":  # file locks (fcntl), sockets handed to the agent
        raise pytest.UsageError("faultstream: the pytest plugin needs a POSIX system")
    config.pluginmanager.register(FaultstreamSession(config), "faultstream-session")


def _identity(config: pytest.Config) -> tuple[str, str]:
    from faultstream.pytest_link import MAX_HARDWARE_CLASS_CHARS, MAX_ID_CHARS

    hardware = config.getoption("faultstream_hardware_class") or os.environ.get(
        HARDWARE_CLASS_ENV, "cpu"
    )
    worker = config.getoption("faultstream_worker_id") or os.environ.get(WORKER_ID_ENV, "")
    worker = worker or _hostname()
    for flag, value, limit in (
        ("--faultstream-hardware-class", hardware, MAX_HARDWARE_CLASS_CHARS),
        ("--faultstream-worker-id", worker, MAX_ID_CHARS - 8),  # room for /gwNN
    ):
        if not value.strip() or len(value) > limit:
            raise pytest.UsageError(f"{flag}: {value!r} must have 1 to {limit} characters")
    return worker, hardware


def _quarantine_mode(config: pytest.Config) -> str:
    mode = config.getoption("faultstream_quarantine") or config.getini("faultstream_quarantine")
    if mode not in QUARANTINE_MODES:
        raise pytest.UsageError(f"faultstream_quarantine: {mode!r} is not one of skip, xfail, off")
    return str(mode)


def _default_db(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("faultstream")) / "history.duckdb"
    # -p no:cacheprovider: the same place, made by hand.
    return Path(config.rootpath) / ".pytest_cache" / "d" / "faultstream" / "history.duckdb"


class FaultstreamSession:
    """The enabled plugin for one pytest process: the single process, the xdist controller
    (which starts the agent and reports) or an xdist worker (which runs tests)."""

    def __init__(self, config: pytest.Config) -> None:
        from faultstream.pytest_link import fit, iso  # the standard library only

        self._fit, self._iso = fit, iso
        self.config = config
        self.worker_id, self.hardware_class = _identity(config)
        self.quarantine = _quarantine_mode(config)
        self.max_delay = float(config.getoption("faultstream_max_delay"))
        self.command_timeout = float(config.getoption("faultstream_command_timeout"))
        self.role = "single"  # or worker, controller: known at session start
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None:
            self.worker_id = f"{self.worker_id}/{workerinput.get('workerid', 'gw')}"
        self.run_id = str(config.getoption("faultstream_run_id") or "")
        self.link: Any = None  # faultstream.pytest_link.Link once started
        self.lock: Any = None  # the history's HistoryLock (single, controller)
        self.address = ""
        self.token = ""
        self.db: Path | None = None
        self.log_path: Path | None = None
        self.ready: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.open: dict[str, dict[str, Any]] = {}  # task_type -> circuit (not CLOSED)
        self.key = 0
        self.done: dict[str, Any] | None = None
        self.tally = _Tally()
        self._rerun_status: _RerunStatus | None = None
        self._excinfos: dict[str, BaseException] = {}  # the current attempt's, by phase
        self._polled = 0.0
        # Never retry into a debugger.
        self.may_retry = not config.getoption("usepdb", False)

    # --- starting ---------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)  # before xdist's, which configures the nodes
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        from faultstream.pytest_link import Link, new_run_id

        config = self.config
        if hasattr(config, "workerinput"):
            self.role = "worker"
        elif config.pluginmanager.getplugin("dsession") is not None:
            self.role = "controller"  # xdist: workers run the tests, this process reports
        if self.role == "controller":  # the reports come from the workers
            self._show_reruns()
            config.pluginmanager.register(self.tally, "faultstream-tally")
        if self.role == "worker":
            info = config.workerinput.get("faultstream")  # type: ignore[attr-defined]
            if not info:
                return  # the controller has no agent: it says why
            self.run_id = info["run"]
            hello = self._hello()
            try:
                self.link = Link(hello, address=info["address"], token=info["token"])
            except OSError:
                return
        else:
            self.run_id = self.run_id or new_run_id()
            try:
                self._open_history()
            except OSError as exc:  # a cache directory it cannot write, say
                raise pytest.UsageError(f"faultstream: {self.db}: {exc.strerror or exc}") from None
        self.link.on_circuit = self._circuit_changed

    def _hello(self) -> dict[str, Any]:
        return {
            "t": "hello",
            "role": self.role,
            "run": self.run_id,
            "worker_id": self.worker_id,
            "hardware_class": self.hardware_class,
            "ts": _now_ms(),
        }

    def _open_history(self) -> None:
        """Take the history (its lock), and either read the circuits the last session left
        and spool (no agent until one is needed), or start the agent now: to check the
        settings, to use Kafka, to replay the history or land a dead session's spool, or
        to serve xdist's workers."""
        from faultstream.pytest_link import (
            HistoryLock,
            Link,
            leftover_spools,
            read_circuits,
            settings_given,
            sibling,
        )

        config = self.config
        db = config.getoption("faultstream_db")
        self.db = Path(db).absolute() if db else _default_db(config)
        self.log_path = sibling(self.db, ".agent.log")
        mode = str(config.getoption("faultstream_mode"))
        circuits = None
        if mode != "kafka":
            self.lock = HistoryLock(sibling(self.db, ".lock"))
            holder = self.lock.acquire(_LOCK_WAIT_S)  # the last session's agent, writing
            if holder is not None:
                self.lock = None
                self.warnings.append(f"{self.db} is locked by {holder}: not recorded")
            else:
                circuits = read_circuits(self.db)
        eager = (
            self.role == "controller"
            or circuits is None
            or mode == "kafka"
            or settings_given(config.getoption("faultstream_config"))
        )
        if eager:
            leftovers = leftover_spools(self.db) if self.lock is not None else []
            address, self.token = self._start_agent(listen=True, leftovers=leftovers)
            self.link = Link(self._hello(), address=address, token=self.token)
            return
        self.ready = {"mode": "embedded", "where": str(self.db), "circuits": circuits}
        for circuit in circuits:
            self._circuit_changed(circuit)
        spool = sibling(self.db, ".spool") / f"{self.run_id}.jsonl"
        self.link = Link(self._hello(), spool=spool, start=self._start_on_spool)

    def _start_on_spool(self, spool: Path | None) -> tuple[str, str]:
        """The agent, now that an answer is needed, given what the session spooled."""
        return self._start_agent(listen=True, spool=spool)

    def _start_agent(
        self, *, listen: bool, spool: Path | None = None, leftovers: list[Path] | None = None
    ) -> tuple[str, str]:
        from faultstream.pytest_link import TOKEN_ENV, start_agent

        config = self.config
        assert self.db is not None and self.log_path is not None
        arguments = [
            "--mode",
            str(config.getoption("faultstream_mode")),
            "--db",
            str(self.db),
            "--command-timeout",
            str(self.command_timeout),
        ]
        settings_file = config.getoption("faultstream_config")
        if settings_file:
            arguments += ["--config", str(Path(settings_file).absolute())]
        if spool is not None:
            arguments += ["--spool", str(spool)]
        for path in leftovers or []:
            arguments += ["--leftover", str(path)]
        keep: tuple[int, ...] = ()
        if self.lock is not None:  # the agent holds the history until it has written it
            arguments += ["--lock-fd", str(self.lock.fileno())]
            keep = (self.lock.fileno(),)
        import secrets

        token = secrets.token_hex(16)
        os.environ[TOKEN_ENV] = token  # inherited by the agent, not on its command line
        try:
            address, process = start_agent(arguments, self.log_path, listen=listen, keep_fds=keep)
        finally:
            os.environ.pop(TOKEN_ENV, None)
        # Its first process is gone as soon as it has forked the agent: reaped aside.
        import threading

        threading.Thread(target=process.wait, name="faultstream-reap", daemon=True).start()
        self.address = address
        return address, token

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist (controller): tell each worker where the agent is."""
        if self.link is not None and self.address:
            node.workerinput["faultstream"] = {
                "address": self.address,
                "token": self.token,
                "run": self.run_id,
            }

    def _wait_ready(self) -> bool:
        """The agent's first answer, before the first test: the circuits, or why not."""
        from faultstream.pytest_link import AgentError, last_line

        if self.link is None:
            return False
        if self.ready:
            return True
        try:
            self.ready = self.link.wait_ready(_READY_TIMEOUT_S)
        except AgentError as exc:
            self.link = None
            if self.role == "worker":
                return False
            said = last_line(self.log_path) if self.log_path is not None else ""
            why = said if str(exc) == "the agent died" and said else str(exc)
            raise pytest.UsageError(f"faultstream: {why}") from None
        for circuit in self.ready.get("circuits", []):
            self._circuit_changed(circuit)
        if self.ready.get("warning"):
            self.warnings.append(str(self.ready["warning"]))
        return True

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.role != "controller":
            self._wait_ready()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        if self.role == "controller":
            self._wait_ready()  # the workers collect meanwhile
        return (yield)

    def _circuit_changed(self, circuit: dict[str, Any]) -> None:
        if circuit.get("kind") != "task_type":
            return
        if circuit.get("state") == "CLOSED":
            self.open.pop(str(circuit["id"]), None)
        else:
            self.open[str(circuit["id"])] = circuit

    # --- each test --------------------------------------------------------------------

    def _refusal(self, task_type: str) -> tuple[str, dict[str, Any]] | None:
        """Why the task type's circuit refuses the test now, or None: OPEN until its due
        moment (then the core half-opens it on its next input and the test is a probe),
        FORCED_OPEN until an operator resets it; HALF_OPEN admits."""
        circuit = self.open.get(task_type)
        if circuit is None:
            return None
        state, due = circuit.get("state"), circuit.get("due_at")
        if state == "OPEN" and due is not None and _now_ms() >= int(due):
            return None
        if state not in ("OPEN", "FORCED_OPEN"):
            return None
        iso = self._iso
        why = f"faultstream quarantine: task_type circuit is {state} since {iso(circuit['since'])}"
        if due is not None:
            why += f", due to half-open at {iso(int(due))}"
        if circuit.get("reason"):
            why += f" ({circuit['reason']})"
        return why, circuit

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        link = self.link
        if link is None or self.role == "controller" or not (self.ready or self._wait_ready()):
            return None
        nodeid = item.nodeid
        self.tally.tests.add(nodeid)
        group = _group(item)
        fit = self._fit
        task_type = fit(group or nodeid)
        task_id = fit(f"{self.run_id}:{nodeid}")
        quarantined = False
        if self.quarantine != "off":
            now = time.monotonic()
            if now - self._polled >= _POLL_EVERY_S:  # circuit changes pushed meanwhile
                self._polled = now
                link.poll()
            refusal = self._refusal(task_type)
            if refusal is not None:
                why, circuit = refusal
                link.send(
                    {
                        "t": "q",
                        "ts": _now_ms(),
                        "test": nodeid,
                        "task_type": task_type,
                        "state": circuit["state"],
                        "why": why,
                        "mode": self.quarantine,
                    }
                )
                item.user_properties.append((PROPERTY, f"quarantined: {why}"))
                self.tally.outcomes[nodeid] = ("quarantined", why)
                if self.quarantine == "skip":
                    item.add_marker(pytest.mark.skip(reason=why))
                    return None  # pytest's own protocol skips it: it did not run, no task
                item.add_marker(pytest.mark.xfail(reason=why, strict=False))
                quarantined = True
        self._run(item, nextitem, task_id, task_type, quarantined)
        return True

    def _run(
        self,
        item: pytest.Item,
        nextitem: pytest.Item | None,
        task_id: str,
        task_type: str,
        quarantined: bool,
    ) -> None:
        link = self.link
        ihook = item.ihook
        attempt, command_id = 0, None
        failures: list[str] = []
        may_retry = not quarantined and self.may_retry
        while True:
            ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            self.key += 1
            key = self.key
            begin = {
                "t": "b",
                "k": key,
                "ts": _now_ms(),
                "task_id": task_id,
                "task_type": task_type,
                "attempt": attempt,
                "cmd": command_id,
                "test": item.nodeid,
            }
            link.begin(begin)  # sent with the end, unless the test runs long
            excinfos = self._excinfos = {}
            reports = runtestprotocol(item, nextitem=nextitem, log=False)
            verdict, failing = _verdict(reports, quarantined)
            if verdict == "skip":
                link.forget(key)
                break
            if verdict == "ok":
                link.end(key, _now_ms())
                if failures:
                    detail = f"{'; '.join(failures)}; passed on attempt {attempt}"
                    self._tell(reports, "flaky", detail)
                break
            assert failing is not None
            failure_type, message, exc_name = _describe(excinfos.get(failing.when), failing)
            ask = may_retry
            failure = {"ft": failure_type, "msg": message, "exc": exc_name, "ask": ask}
            if ask:
                link.connect()  # the agent answers: started now if it was not running
            link.end(key, _now_ms(), failure)
            reply = link.ask(key, self.command_timeout + 30) if ask else None
            command = reply.get("command") if reply else None
            failures.append(f"attempt {attempt} failed ({failure_type})")
            session = item.session
            retry = (
                command is not None
                and command["strategy"] in RETRY_STRATEGIES
                and not (session.shouldstop or session.shouldfail)
            )
            if retry:
                link.poll()  # the failure may just have opened the circuit
                retry = self._refusal(task_type) is None
            if retry:
                self._show_reruns()
                self.tally.reruns += 1
                self._log(ihook, reports, rerun=failing)
                ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
                time.sleep(min(float(command["delay_s"]), self.max_delay))
                attempt, command_id = int(command["attempt"]), command["command_id"]
                continue
            if quarantined:  # reported as quarantined already, with why
                failing.sections.append(("faultstream", f"{failure_type} while quarantined"))
                break
            if command is not None:
                detail = f"{failure_type}; recovery command {command['strategy']}"
                if command["strategy"] in RETRY_STRATEGIES:
                    detail += " (not followed: the circuit opened or the session is stopping)"
                detail += f": {command['reason']}"
            else:
                why = reply.get("why") if reply else "no answer from the agent"
                detail = f"{failure_type}; {why}"
            self._tell(reports, "failed", detail)
            failing.sections.append(("faultstream", detail))
            break
        self._log(ihook, reports)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    @staticmethod
    def _log(ihook: Any, reports: list[Any], rerun: Any = None) -> None:
        """Log an attempt's reports. A retried attempt logs its failing report as a rerun
        (not a failure: the exit status is the last attempt's) and not a passing call
        before it, which the next attempt reports again."""
        for report in reports:
            if rerun is not None:
                if report is rerun:
                    report.outcome = "rerun"
                    ihook.pytest_runtest_logreport(report=report)
                    return
                if report.when == "call":
                    continue
            ihook.pytest_runtest_logreport(report=report)

    def pytest_exception_interact(self, node: Any, call: Any, report: Any) -> None:
        # Called for a failing phase only (a passing test pays nothing): the exception,
        # which the classifier reads.
        if call.excinfo is not None:
            self._excinfos[report.when] = call.excinfo.value

    def _tell(self, reports: list[Any], status: str, detail: str) -> None:
        """Mark what became of the test on its reports (xdist's controller and junitxml
        read it there) and in this process's tally."""
        for report in reports:
            report.user_properties.append((PROPERTY, f"{status}: {detail}"))
        self.tally.outcomes[reports[0].nodeid] = (status, detail)

    def _show_reruns(self) -> None:
        if self._rerun_status is None:  # only once needed: a hook less per report until then
            self._rerun_status = _RerunStatus()
            self.config.pluginmanager.register(self._rerun_status, "faultstream-reruns")

    # --- reporting --------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        link = self.link
        if link is None:
            if self.lock is not None:
                self.lock.release()
            return
        if self.role == "worker":
            link.close()
            return
        link.send({"t": "bye", "exitstatus": int(exitstatus), "tests": len(self.tally.tests)})
        if link.connected:
            link.wait(lambda: link.done is not None, _DONE_TIMEOUT_S)
            self.done = link.done.get("summary", {}) if link.done else None
            link.close()
            if self.lock is not None:
                self.lock.release()  # the agent holds it on until the history is written
        else:
            # Nothing to ask: the session ends now, and an agent lands its spool once
            # pytest is done with its own summary (pytest_unconfigure).
            link.close()
            self.done = {
                "mode": "embedded",
                "where": str(self.db),
                "recorded": True,
                "later": True,
            }

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        link = self.link
        if link is None or link.connected or self.role == "worker" or self.done is None:
            return
        try:
            self._start_agent(listen=False, spool=link.spool_path)
        finally:
            if self.lock is not None:
                self.lock.release()  # the agent holds it on until the history is written

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.role == "worker" or not self.run_id:
            return
        write = terminalreporter.write_line
        terminalreporter.section("faultstream")
        counts: dict[str, int] = {}
        tally = self.tally
        for status, _ in tally.outcomes.values():
            counts[status] = counts.get(status, 0) + 1
        line = (
            f"run {self.run_id}: {len(tally.tests)} tests, {tally.reruns} reruns, "
            f"{counts.get('flaky', 0)} flaky, {counts.get('quarantined', 0)} quarantined "
            f"({self.quarantine})"
        )
        write(line)
        done = self.done
        if done is None:
            log = f" (see {self.log_path})" if self.log_path else ""
            write(f"WARNING the agent did not finish writing the history{log}", yellow=True)
        else:
            where = done.get("where", "")
            if not done.get("recorded", True):
                what = "not recorded"
            elif done.get("later"):
                what = "recorded by the agent after the session"
            else:
                what = f"{done.get('events', 0)} events"
            write(f"{done.get('mode')}: {where} ({what})")
            if done.get("error"):
                write(f"WARNING {done['error']}", yellow=True)
        for warning in self.warnings:
            write(f"WARNING {warning}", yellow=True)
        for nodeid, (status, detail) in sorted(tally.outcomes.items()):
            write(f"{status.upper()} {nodeid} - {detail}")


def _group(item: pytest.Item) -> str | None:
    """The `faultstream(task_type=...)` marker's group, from the test up (a plain walk:
    get_closest_marker's generators cost more, for every test)."""
    node: Any = item
    while node is not None:
        for mark in node.own_markers:
            if mark.name == "faultstream":
                group = mark.kwargs.get("task_type") or (mark.args or [None])[0]
                return None if group is None else str(group)
        node = node.parent
    return None


def _hostname() -> str:
    import socket  # only once enabled: a disabled plugin imports nothing it can avoid

    return socket.gethostname() or "localhost"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _verdict(reports: list[Any], quarantined: bool) -> tuple[str, Any]:
    """What an attempt was, for the fleet: ("fail", the failing report), ("ok", None), or
    ("skip", None) — a test that did not run (skipped, or an expected failure the test
    declared) is no task."""
    for report in reports:
        if report.failed:
            return "fail", report
    call = reports[1] if len(reports) == 3 else None  # setup, call, teardown
    if call is None or reports[0].skipped:
        return "skip", None
    if call.skipped:
        if hasattr(call, "wasxfail") and quarantined:
            return "fail", call  # our own xfail: the failure underneath is the outcome
        return "skip", None
    return "ok", None


def _describe(exc: BaseException | None, report: Any) -> tuple[str, str, str]:
    """(failure type, message, exception type) of a failed attempt, classified by the
    SDK's classifier (imported here: only a failure pays for it)."""
    from faultstream.events.classify import classify_exception, classify_message

    if exc is not None:
        kind = type(exc)
        builtin = kind.__module__ == "builtins"
        name = kind.__qualname__ if builtin else f"{kind.__module__}.{kind.__qualname__}"
        text = str(exc)
        message = f"{kind.__name__}: {text}" if text else kind.__name__
        return str(classify_exception(exc)), message[:_MAX_MESSAGE_CHARS], name
    # No exception object: under an xfail (the quarantine's), or a strict XPASS. The
    # crash line ("RuntimeError: always broken") is what there is to classify.
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    message = str(getattr(crash, "message", "") or report.longreprtext or "failed").strip()
    head = message.partition(":")[0]
    name = head if head.replace(".", "").replace("_", "").isalnum() else "Failed"
    return str(classify_message(message)), message[:_MAX_MESSAGE_CHARS], name


class _RerunStatus:
    """A retried attempt's report shows as R / RERUN (registered once the first comes)."""

    def pytest_report_teststatus(self, report: pytest.TestReport) -> Any:
        if report.outcome == "rerun":
            return "rerun", "R", ("RERUN", {"yellow": True})
        return None


class _Tally:
    """What the terminal summary tells. The process that runs the tests fills it as it
    goes; an xdist controller registers it to read the workers' reports."""

    def __init__(self) -> None:
        self.tests: set[str] = set()
        self.outcomes: dict[str, tuple[str, str]] = {}  # nodeid -> (status, detail)
        self.reruns = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome == "rerun":
            self.reruns += 1
            return
        if report.when == "setup":
            self.tests.add(report.nodeid)
        for name, value in report.user_properties:
            if name == PROPERTY:
                status, _, detail = str(value).partition(": ")
                self.outcomes[report.nodeid] = (status, detail)
