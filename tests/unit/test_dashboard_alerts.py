"""The Overview page leads with the alerts firing now (a FIRING row and no RESOLVED one),
newest first, through Streamlit's AppTest on a small history written by the writer the
projector and the embedded pipeline use; and says nothing of alerts when none fire or the
history predates them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

import faultstream.dashboard
from faultstream.dashboard.data import DB_ENV, READ_MODELS_ENV
from faultstream.events.models import Alert, WorkerEvent
from faultstream.projections.tables import HistoryWriter

APP = str(Path(faultstream.dashboard.__file__).parent / "app.py")
RUN_TIMEOUT_S = 540  # only stops a hung run (pytest stops at 600 s); never a performance bound
START = 1_764_547_200_000  # 2025-12-01T00:00:00Z


def alert(alert_id: str, at_s: int, state: str = "FIRING", **fields: str) -> Alert:
    base = {"rule": "open_longer_than_s", "subject_kind": "worker", "subject_id": "w1",
            "severity": "warning", "message": "worker w1 open for 15m"}  # fmt: skip
    return Alert(alert_id=alert_id, ts=START + at_s * 1000, state=state,
                 caused_by=f"tick@{at_s}", **(base | fields))  # fmt: skip


def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alerts: list[Alert]) -> Path:
    path = tmp_path / "alerts.duckdb"
    with HistoryWriter(path) as writer:
        writer.append_inputs(
            WorkerEvent(event_id=f"hb{s}", kind="HEARTBEAT", ts=START + s * 1000,
                        received_at=START + s * 1000, worker_id="w1", hardware_class="cuda")
            for s in range(0, 600, 60)
        )  # fmt: skip
        writer.append_derived(alerts)
    monkeypatch.setenv(DB_ENV, str(path))
    monkeypatch.delenv(READ_MODELS_ENV, raising=False)
    return path


def overview() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    at.run()
    assert not at.exception, at.exception
    return at


def test_overview_leads_with_the_firing_alerts_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history(tmp_path, monkeypatch, [
        alert("cap-rocm", 60, rule="class_capacity_below", subject_kind="hardware_class",
              subject_id="rocm", severity="critical", message="rocm: 0% of live workers"),
        alert("open-w1", 120),
        alert("health", 180, rule="fleet_health_below", subject_kind="fleet",
              subject_id="fleet", message="fleet health 61% is below 70%"),
        alert("health", 300, "RESOLVED", rule="fleet_health_below", subject_kind="fleet",
              subject_id="fleet", message="fleet health back at 90%"),
        alert("skew-w2", 240, rule="clock_skew", subject_id="w2",
              message="w2's clock is 3 min ahead"),
    ])  # fmt: skip
    at = overview()
    assert at.subheader[0].value == "Firing alerts"
    (table,) = [d.value for d in at.dataframe if "rule" in d.value.columns]
    assert list(table.columns) == ["severity", "rule", "subject", "message", "since", "for"]
    assert list(table["rule"]) == ["clock_skew", "open_longer_than_s", "class_capacity_below"]
    assert list(table["subject"]) == ["worker:w2", "worker:w1", "hardware_class:rocm"]
    assert list(table["severity"]) == ["warning", "warning", "critical"]
    assert table["message"].iloc[2] == "rocm: 0% of live workers"
    # Since when: the FIRING's time, and how long before the history's newest moment.
    assert [t.value // 1_000_000 for t in table["since"]] == [
        START + s * 1000 for s in (240, 120, 60)
    ]
    assert list(table["for"]) == ["5m 00s", "7m 00s", "8m 00s"]


@pytest.mark.parametrize("alerts", ["all resolved", "no alerts table"])
def test_overview_says_nothing_of_alerts_when_none_fire(
    alerts: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = history(tmp_path, monkeypatch, [alert("a", 60), alert("a", 120, "RESOLVED")])
    if alerts == "no alerts table":  # a history written before alerts existed
        con = duckdb.connect(str(path))
        con.execute("DROP TABLE alerts")
        con.close()
    at = overview()
    assert "Firing alerts" not in [s.value for s in at.subheader]
    assert not [d for d in at.dataframe if "rule" in d.value.columns]
