"""The dashboard in a real browser: `faultstream dashboard` serves a demo history on a
free local port, and headless Chromium, driven over the DevTools protocol (raw CDP over
websockets), opens the Overview (its capacity headline first) and the circuit page."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core_at_ticks import as_of, views_at_ticks
from websockets.sync.client import ClientConnection, connect

from faultstream.cli.dashboard import streamlit_command
from faultstream.cli.demo import run_demo
from faultstream.events.config import load_settings
from faultstream.projections.queries import History

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HANG_GUARD_S = 90  # only stops a broken test from hanging; never a performance bound

# Skipped on a machine without Chromium; under CI (which installs it) a missing one fails.
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="needs Debian's chromium (installed by .ci/run)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def answers(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return None


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "demo.duckdb"
    run_demo(load_settings(), path, workers=20, duration_ms=5 * 60_000)
    return path


def start_dashboard(db: Path, port: int, log: Path | None = None) -> subprocess.Popen:
    """`faultstream dashboard` on the history `db`, serving on 127.0.0.1:`port`; what it
    prints goes to `log` when given."""
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "faultstream"), "dashboard", "--db", str(db),
             "--port", str(port), "--address", "127.0.0.1"],
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        if log is not None:
            out.close()  # the child has its own copy


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server") / "dashboard.log"


@pytest.fixture(scope="module")
def dashboard_url(demo_db: Path, server_log: Path) -> Iterator[str]:
    port = free_port()
    server = start_dashboard(demo_db, port, server_log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{url}/_stcore/health"), "the dashboard to serve")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=HANG_GUARD_S)


class Browser:
    """Just enough of the DevTools protocol: navigate, evaluate, screenshot."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=HANG_GUARD_S))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body.innerText")
        return result.get("result", {}).get("value", "") or ""

    def open(self, url: str, *until: str) -> str:
        """Navigate and wait until every one of `until` is on the page (Streamlit renders
        a page's sections one after another, so the first one is no sign of the rest)."""
        self.call("Page.navigate", url=url)
        return wait_for(
            lambda: (t := self.text()) and all(u in t for u in until) and t, f"{until!r} at {url}"
        )

    def count(self, selector: str) -> int:
        expression = f"document.querySelectorAll({json.dumps(selector)}).length"
        return int(self.call("Runtime.evaluate", expression=expression)["result"]["value"])

    def drawn(self) -> None:
        """Wait until the Plotly charts and the tables are drawn (the text comes first), so
        that a screenshot shows them."""
        wait_for(lambda: self.count(".js-plotly-plot") > 0, "the charts")
        # Tables draw on a canvas; their accessible grid cells appear once they have data.
        wait_for(lambda: self.count('[data-testid="stDataFrame"]') > 0, "the tables")
        wait_for(
            lambda: self.count('[data-testid="stDataFrame"] [role="gridcell"]') > 0,
            "the table cells",
        )

    def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def capacity_box(self) -> dict[str, float] | None:
        """The page area of the capacity headline: its heading down to its last card (None
        until the cards are drawn)."""
        return self.evaluate(
            """(() => {
              const heading = [...document.querySelectorAll('h3')]
                .find(h => h.innerText.startsWith('Capacity now'));
              const bordered = (el) => {  // a card: the bordered box around its metric
                for (let box = el; box; box = box.parentElement) {
                  if (getComputedStyle(box).borderTopWidth !== '0px') return box;
                }
                return el;
              };
              const cards = [...document.querySelectorAll('[data-testid="stMetric"]')]
                .filter(m => m.innerText.includes('workers available'))
                .map(m => bordered(m).getBoundingClientRect());
              if (!heading || cards.length === 0) return null;
              const top = heading.getBoundingClientRect();
              const left = Math.min(top.left, ...cards.map(c => c.left));
              const right = Math.max(...cards.map(c => c.right));
              const bottom = Math.max(...cards.map(c => c.bottom));
              return {x: left, y: top.top + window.scrollY, width: right - left,
                      height: bottom - top.top + 8};
            })()"""
        )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    port = free_port()
    chromium = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--remote-debugging-port={port}",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1800",
         "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        targets = wait_for(
            lambda: answers(f"http://127.0.0.1:{port}/json/list"), "Chromium's DevTools"
        )
        page = next(t for t in json.loads(targets) if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            yield Browser(ws)
    finally:
        chromium.terminate()
        chromium.wait(timeout=HANG_GUARD_S)


def capacity_replayed(db: Path) -> dict[str, dict]:
    """Capacity per hardware class rebuilt independently: every input through a fresh core,
    as of its last TICK (the figures the page shows are those the core published last)."""
    with History.from_db(db) as history:
        return as_of(views_at_ticks(history.input_records(), load_settings().core))["capacity"]


def test_overview_renders_the_fleet_health_in_chromium(
    dashboard_url: str, browser: Browser, demo_db: Path, tmp_path: Path
) -> None:
    with History.from_db(demo_db) as history:
        aggregate = history.circuit_breakers()["aggregate"]
    health = f"{aggregate['overall_health']:.1f}%"
    capacity = capacity_replayed(demo_db)
    text = browser.open(f"{dashboard_url}/", health, "Broken now", "Capacity now")
    words = " ".join(text.split())  # the cards' label and value sit on lines of their own
    for cid, row in capacity.items():
        assert f"{cid} workers available {row['available']} / {row['live']}" in words
    assert any(row["available"] < row["live"] for row in capacity.values())  # not all fine
    assert "Fleet overview" in text
    assert "Overall health" in text
    assert "Broken now" in text
    # The headline a person acts on comes before the health figures.
    assert text.index("Capacity now") < text.index("Overall health")
    browser.drawn()
    shot = browser.screenshot(tmp_path / "overview.png")
    assert shot.read_bytes().startswith(b"\x89PNG")
    # A picture of the capacity headline itself, heading and every card.
    box = wait_for(browser.capacity_box, "the capacity cards")
    assert box["width"] > 0 and box["height"] > 0
    headline = browser.screenshot(tmp_path / "capacity.png", clip=box)
    assert headline.read_bytes().startswith(b"\x89PNG")
    # Streamlit follows the system theme: the same page in dark mode must read as well.
    browser.call(
        "Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}]
    )
    browser.open(f"{dashboard_url}/", health, "Broken now")
    browser.drawn()
    browser.screenshot(tmp_path / "overview-dark.png")


def test_circuit_page_is_served_at_circuit_breakers(
    dashboard_url: str, browser: Browser, tmp_path: Path
) -> None:
    text = browser.open(f"{dashboard_url}/circuit-breakers", "Circuit detail")
    assert "Circuit breakers" in text
    browser.drawn()  # a picture of the page, not of its placeholders
    browser.screenshot(tmp_path / "circuits.png")


def test_serving_the_pages_logs_no_warnings(
    dashboard_url: str, browser: Browser, server_log: Path
) -> None:
    browser.open(f"{dashboard_url}/", "Capacity now")
    browser.open(f"{dashboard_url}/workers", "All workers")
    log = server_log.read_text()
    assert "No runtime found" not in log
    assert "Did not auto detect external IP" not in log
    assert "WARNING" not in log


def test_the_launcher_prints_the_url_itself_without_streamlits_external_ip_lookup() -> None:
    # Streamlit's banner looks the external IP up on the internet when listening on
    # 0.0.0.0, and warns when offline; `faultstream dashboard` prints its own URL line.
    command = streamlit_command(8080, "0.0.0.0")
    assert command[command.index("--logger.hideWelcomeMessage") + 1] == "true"


def test_terminating_the_dashboard_command_stops_its_server(demo_db: Path) -> None:
    port = free_port()
    command = start_dashboard(demo_db, port)
    health = f"http://127.0.0.1:{port}/_stcore/health"
    try:
        wait_for(lambda: answers(health), "the dashboard to serve")
    finally:
        command.terminate()
        command.wait(timeout=HANG_GUARD_S)
    # Nothing left behind: no orphaned Streamlit still serving the port.
    wait_for(lambda: answers(health) is None, "the server to stop")
    assert answers(health) is None
