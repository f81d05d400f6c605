"""The alert consumer behind `faultstream alerts`: at-least-once, offsets after delivery.

Reads `<prefix>.alerts` as a consumer group (events/consumer.py). An alert's offset is
committed only after its handler returned (for the webhook: after the receiver accepted
it), so a crash or a stop while delivering delivers it again on the next start; nothing is
skipped but records that are not alerts. The same record repeated (a processor re-sending
after its restart) is handled once per process: an alert is known by (alert_id, state),
since its FIRING and RESOLVED records share the alert_id.
"""

from __future__ import annotations

from .codec import Codec
from .config import Settings
from .consumer import RecordConsumer
from .models import Alert

# A handler may wait hours for a webhook to come back; librdkafka's largest poll interval
# (a day) keeps the group membership meanwhile (heartbeats go on in the background).
_MAX_POLL_INTERVAL_MS = 86_400_000


class AlertConsumer(RecordConsumer[Alert]):
    """Alerts from `<prefix>.alerts`, in each partition's order (an alert's FIRING and
    RESOLVED share its key, so they share a partition, in that order)."""

    record_type = Alert
    what = "alert"

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        from_beginning: bool = False,
        codec: Codec | None = None,
    ) -> None:
        super().__init__(
            settings,
            "alerts",
            group_id=group_id,
            from_beginning=from_beginning,
            codec=codec,
            client={"max.poll.interval.ms": _MAX_POLL_INTERVAL_MS},
        )

    def handled_key(self, record: Alert) -> tuple[str, str]:
        return (record.alert_id, str(record.state))
