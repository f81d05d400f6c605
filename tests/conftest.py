"""Shared fixtures. Integration tests (marker `kafka`) need a real broker.

The broker comes from FAULTSTREAM_TEST_BOOTSTRAP (default 127.0.0.1:9092; `.ci/run`
starts one with `faultstream broker start`). Locally a missing broker skips those tests;
under CI it fails them, so a green CI always means they ran.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings

from faultstream.events.admin import delete_topics
from faultstream.events.config import Settings, load_settings

BOOTSTRAP = os.environ.get("FAULTSTREAM_TEST_BOOTSTRAP", "127.0.0.1:9092")

# Hypothesis runs derandomized, locally as under CI (its "ci" profile), so no test fails at
# random; FAULTSTREAM_HYPOTHESIS_PROFILE=long explores afresh, with many more examples.
hypothesis_settings.register_profile(
    "long",
    max_examples=2_000,
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# `make mutation`: a failing example fails at once, unshrunk (docs/TESTING.md).
hypothesis_settings.register_profile(
    "mutation", hypothesis_settings.get_profile("ci"), phases=[Phase.explicit, Phase.generate]
)
hypothesis_settings.load_profile(os.environ.get("FAULTSTREAM_HYPOTHESIS_PROFILE", "ci"))


def _broker_answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    if not _broker_answers(BOOTSTRAP):
        message = f"no Kafka broker at {BOOTSTRAP} (start one: faultstream broker start)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return BOOTSTRAP


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix per test, so tests never read each other's records."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, topic_prefix: str, tmp_path) -> Iterator[Settings]:
    """Settings pointing at the test broker, with this test's own topics and files (the
    topics deleted afterwards, so the broker does not slow down as the suite goes on)."""
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": topic_prefix},
        emitter={"spool_path": str(tmp_path / "spool.jsonl")},
        processor={"data_dir": str(tmp_path / "processor"), "tick_interval_s": 1.0},
        storage={
            "duckdb_path": str(tmp_path / "fs.duckdb"),
            "read_models_dir": str(tmp_path / "read-models"),
        },
    )
    yield settings
    delete_topics(settings.kafka)
