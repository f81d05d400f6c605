"""`--log-format json`: one JSON object per line, with the component and, for the
processor's stats lines, their figures as fields (the running processor and projector are
read back in tests/integration/test_metrics_scrape.py, `faultstream api` in
test_api_app.py)."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator

import pytest

from faultstream.cli.dashboard import run_as_json_lines
from faultstream.logs import JsonFormatter, json_line
from faultstream.processors.stream import stats
from faultstream.processors.stream.stats import BatchStats


@pytest.fixture
def processor_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("processor"))
    logger = logging.getLogger("faultstream.processor")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_stats_line_carries_its_figures_as_fields(processor_lines) -> None:
    stage = BatchStats("decide")
    stage.counts["frames from ingest"] = 3
    stage._since -= stats.STATS_EVERY_S  # the interval is over: this batch logs it
    stage.add(records=500, busy_s=2.5, oldest_ts_ms=time.time() * 1000 - 10_000)

    (line,) = processor_lines.getvalue().splitlines()
    fields = json.loads(line)
    assert fields["component"] == "processor"
    assert fields["level"] == "info" and fields["logger"] == "faultstream.processor"
    assert fields["message"].startswith("decide: 500 records (1 batches, 3 frames from ingest)")
    assert {k: fields[k] for k in ("stage", "records", "batches", "frames_from_ingest")} == {
        "stage": "decide", "records": 500, "batches": 1, "frames_from_ingest": 3,
    }  # fmt: skip
    assert fields["interval_s"] == pytest.approx(10, abs=1)
    assert fields["records_per_s"] == pytest.approx(500 / fields["interval_s"], abs=0.1)
    assert fields["busy_pct"] == pytest.approx(250 / fields["interval_s"], abs=0.1)
    for age in ("age_p50_ms", "age_p99_ms", "age_max_ms"):  # one batch: all the same
        assert fields[age] == pytest.approx(10_000, abs=1_000)


def test_a_stats_line_says_the_snapshots_taken_their_largest_and_longest(processor_lines) -> None:
    stage = BatchStats("decide")
    stage.snapshot(3_000_000, 0.020)
    stage.snapshot(2_500_000, 0.045)
    stage._since -= stats.STATS_EVERY_S
    stage.add(records=10, busy_s=0.1, oldest_ts_ms=time.time() * 1000)
    stage.add(records=10, busy_s=0.1, oldest_ts_ms=time.time() * 1000)  # a new interval

    first, *rest = processor_lines.getvalue().splitlines()
    fields = json.loads(first)
    assert fields["message"].endswith("; 2 snapshots, largest 3.0 MB, longest pause 45 ms")
    assert (fields["snapshots"], fields["snapshot_bytes_max"]) == (2, 3_000_000)
    assert fields["snapshot_pause_max_ms"] == 45.0
    assert rest == []  # the next interval has not ended, and starts with no snapshots
    assert stage.snapshots == []


def test_a_line_is_one_object_whatever_the_message_holds() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "", 0, "two\nlines", None, sys.exc_info())
    record.fields = {"message": "not the message", "n": 1}  # core keys are not replaced
    line = JsonFormatter("api").format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert (document["message"], document["n"], document["component"]) == ("two\nlines", 1, "api")
    assert "ValueError: bad" in document["exception"]
    assert json.loads(json_line("dashboard", "up", url="http://x/"))["url"] == "http://x/"


def test_the_dashboard_launcher_says_each_line_of_streamlit_as_json(capsys) -> None:
    child = [sys.executable, "-c", "print('  You can now view'); print(); print('URL: x')"]
    assert run_as_json_lines(child, {}) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["component"], line["message"]) for line in lines] == [
        ("dashboard", "You can now view"), ("dashboard", "URL: x"),
    ]  # fmt: skip
