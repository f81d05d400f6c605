"""The history's alerts (the `alerts` table): all of them, and the ones firing now.

An alert is firing while its alert_id has a FIRING row and no RESOLVED row. A history
written before alerts existed has no `alerts` table: it reads as no alerts at all.
"""

from __future__ import annotations

from typing import Any

from .queries import History

FIRING_SQL = """
    SELECT * FROM alerts f
    WHERE state = 'FIRING'
      AND NOT EXISTS (SELECT 1 FROM alerts r WHERE r.alert_id = f.alert_id
                      AND r.state = 'RESOLVED')
    QUALIFY row_number() OVER (PARTITION BY alert_id ORDER BY ts) = 1
    ORDER BY ts DESC, alert_id
"""


def has_alerts_table(history: History) -> bool:
    """Whether the history has the `alerts` table (a view over read models counts)."""
    (row,) = history._rows(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'alerts'"
    )
    return bool(row["n"])


def all_alerts(history: History) -> list[dict[str, Any]]:
    """Every alert record, oldest first, as the core published them."""
    if not has_alerts_table(history):
        return []
    return history._rows("SELECT * FROM alerts ORDER BY ts, alert_id, state")


def firing_alerts(history: History) -> list[dict[str, Any]]:
    """The alerts firing now, newest first: the FIRING row of each."""
    if not has_alerts_table(history):
        return []
    return history._rows(FIRING_SQL)
