"""Alerts: which are firing, and the FIRING / RESOLVED records (CIRCUITS.md "Alerts").

The core decides when a rule is met; this book keeps each alert firing once until it is
resolved, and gives the records their deterministic ids.
"""

from __future__ import annotations

from faultstream.events.models import Alert, AlertState, trusted

from .ids import alert_id

CAPACITY = "class_capacity_below"
OPEN_LONGER = "open_longer_than_s"
ESCALATIONS = "escalations"
FLEET_HEALTH = "fleet_health_below"
CLOCK_SKEW = "clock_skew"

CRITICAL, WARNING = "critical", "warning"
SEVERITY = {
    CAPACITY: CRITICAL,
    OPEN_LONGER: WARNING,
    ESCALATIONS: CRITICAL,
    FLEET_HEALTH: WARNING,
    CLOCK_SKEW: WARNING,
}


class AlertBook:
    """The firing alerts, by (rule, subject kind, subject id) -> alert_id; and the tasks
    whose escalation fires (asked at every SUCCESS)."""

    __slots__ = ("firing", "tasks")

    def __init__(self) -> None:
        self.firing: dict[tuple[str, str, str], str] = {}
        self.tasks: set[str] = set()

    def fire(
        self, rule: str, kind: str, subject: str, message: str, ts: int, caused_by: str
    ) -> Alert | None:
        """A FIRING record, or None when this alert already fires."""
        key = (rule, kind, subject)
        if key in self.firing:
            return None
        aid = self.firing[key] = alert_id(rule, kind, subject, ts, caused_by)
        if rule == ESCALATIONS:
            self.tasks.add(subject)
        return alert_record(aid, AlertState.FIRING, key, message, ts, caused_by)

    def resolve(
        self, rule: str, kind: str, subject: str, message: str, ts: int, caused_by: str
    ) -> Alert | None:
        """The RESOLVED record of a firing alert (its alert_id), or None when none fires."""
        key = (rule, kind, subject)
        aid = self.firing.pop(key, None)
        if aid is None:
            return None
        if rule == ESCALATIONS:
            self.tasks.discard(subject)
        return alert_record(aid, AlertState.RESOLVED, key, message, ts, caused_by)

    def fires(self, rule: str, kind: str, subject: str) -> bool:
        return (rule, kind, subject) in self.firing


def alert_record(
    aid: str,
    state: AlertState,
    key: tuple[str, str, str],
    message: str,
    ts: int,
    caused_by: str,
) -> Alert:
    """The alert record of one firing or resolving of the alert `key` (rule, subject kind,
    subject id), under its alert_id `aid`."""
    rule, kind, subject = key
    return trusted(
        Alert,
        {
            "alert_id": aid,
            "ts": ts,
            "rule": rule,
            "subject_kind": kind,
            "subject_id": subject,
            "severity": SEVERITY[rule],
            "state": state,
            "message": message,
            "caused_by": caused_by,
        },
    )
