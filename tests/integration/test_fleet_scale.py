"""A scaled-down fleet on the real broker: 2,000 workers reporting for a minute.

The events carry the SDK's sequenced ids; part of them arrive twice, as a spool resent
after an outage would; the processor is SIGKILLed halfway and restarts from its snapshot.
What the processor published must equal FleetCore over its own decisions order, and the
repeats must change nothing. (The full-size figures, 10,000 workers at 20,000 events/s,
are bench/bench_scale.py's and bench/bench_processor.py's, in BENCHMARKS.md.)
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from test_processor import (
    derived_id,
    processor,
    produce,
    read_topic,
    replay,
    restored_offset,
    snapshot_offsets,
    wait_for_replayed_ids,
    wait_until,
)

from faultstream.events.admin import create_topics
from faultstream.events.models import RecoveryCommand, WorkerEvent, derived_to_json
from faultstream.processors.simulator.steady import steady_fleet

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WORKERS = 2_000
SECONDS = 60
RESENT = range(10, 13)  # these seconds' events arrive again ...
RESEND_AT = 20  # ... at this second, as a spool resent after a short outage would
KILL_AT = 30


def test_two_thousand_workers_for_a_minute_with_resends_and_a_sigkill(kafka_settings, tmp_path):
    create_topics(kafka_settings.kafka)
    start_ms = time.time_ns() // 1_000_000
    # The processor sends its own TICKs; the fleet's are left out.
    seconds = [
        [r for r in batch if isinstance(r, WorkerEvent)]
        for batch in steady_fleet(WORKERS, SECONDS, slots=1, start_ts=start_ms)
    ]
    sent = [record for batch in seconds for record in batch]
    resent = [record for second in RESENT for record in seconds[second]]

    started = time.monotonic()
    with processor(kafka_settings, tmp_path) as first:
        for second, batch in enumerate(seconds[:KILL_AT]):
            time.sleep(max(0.0, started + second - time.monotonic()))  # paced: a real minute
            produce(kafka_settings, batch + (resent if second == RESEND_AT else []))
        wait_until(lambda: snapshot_offsets(tmp_path), "a snapshot")
        first.send_signal(signal.SIGKILL)
    with processor(kafka_settings, tmp_path):
        for second, batch in enumerate(seconds[KILL_AT:], start=KILL_AT):
            time.sleep(max(0.0, started + second - time.monotonic()))
            produce(kafka_settings, batch)
        expected, out = wait_for_replayed_ids(kafka_settings, sent)
    assert restored_offset(tmp_path) > 0  # the restart began from a snapshot
    # What was published after the last snapshot before the kill is published again:
    # every copy must be the record the core derives under that id.
    derived = {derived_id(r): derived_to_json(r) for r in expected}
    assert {derived_id(r) for r in out} == set(derived)
    assert all(derived_to_json(r) == derived[derived_id(r)] for r in out)

    # The resent events are in the decisions order twice (and a few more are, which the
    # killed processor had ordered but not yet committed as read), and change nothing.
    decisions = read_topic(kafka_settings, "ordered")
    arrivals = Counter(r.event_id for r in decisions if isinstance(r, WorkerEvent))
    assert set(arrivals) == {r.event_id for r in sent}
    assert all(arrivals[r.event_id] >= 2 for r in resent)
    firsts, seen = [], set()
    for record in decisions:
        if record.event_id not in seen:
            seen.add(record.event_id)
            firsts.append(record)
    lines = [derived_to_json(r) for r in replay(kafka_settings, decisions)]
    assert lines == [derived_to_json(r) for r in replay(kafka_settings, firsts)]
    assert any(isinstance(r, RecoveryCommand) for r in expected)  # failures were decided
