"""`<prefix>.figures`: the topic, the processor's decide stage sending the core's
`circuit_figures` to it keyed `<circuit_kind>:<circuit_id>`, its metrics, and the projector
landing them in the history's `circuit_figures` table. No broker: fakes stand in for the
Faust app and the consumer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
from histories import History

from faultstream.events import frames
from faultstream.events.admin import FIGURES, LOGICAL_TOPICS, topic_specs
from faultstream.events.codec import Codec
from faultstream.events.config import KafkaSettings, Settings, StorageSettings
from faultstream.events.decode import InputDecoder
from faultstream.events.models import CircuitFigures
from faultstream.processors.core import FleetCore
from faultstream.processors.stream import metrics
from faultstream.processors.stream.app import Topics
from faultstream.processors.stream.decide import DecideStage


def a_history() -> History:
    h = History()
    h.success("w1", ts=1_000)
    h.failure("w2", ts=1_500, failure_type="WORKER_CRASH")
    h.tick(2_000)
    return h


def test_the_figures_topic_is_created_compacted_by_circuit_and_deleted_past_retention() -> None:
    assert FIGURES in LOGICAL_TOPICS
    kafka = KafkaSettings(topic_prefix="fs", retention_days=3)
    (spec,) = [s for s in topic_specs(kafka) if s.logical == FIGURES]
    assert (spec.name, spec.partitions) == ("fs.figures", kafka.partitions)
    assert spec.config["cleanup.policy"] == "compact,delete"
    assert spec.config["retention.ms"] == str(3 * 86_400_000)
    assert spec.config["min.compaction.lag.ms"] == str(86_400_000)  # a projector a day behind
    assert Topics.of(Settings(kafka=kafka)).figures == "fs.figures"


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes, *_: Any
    ) -> asyncio.Future[None]:
        """Records what it is given; returns its delivery, as Faust's producer does (here
        delivered at once)."""
        self.sent.append((topic, key, value))
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


def test_the_decide_stage_sends_each_figures_record_to_the_figures_topic_by_circuit() -> None:
    settings = Settings(kafka=KafkaSettings(topic_prefix="fs"))
    producer = FakeProducer()
    decoder = InputDecoder()
    stage = DecideStage(
        SimpleNamespace(producer=producer), settings, decoder, Topics.of(settings), {}
    )
    stage.core = FleetCore(settings.core)
    records = a_history().records
    raw = [decoder.codec.encode(r) for r in records]
    (frame,) = frames.pack_all(raw, [r.ts for r in records])
    before = metrics.RECORDS_OUT.labels("circuit_figures")._value.get()
    asyncio.run(stage._decide_frame(frame, 2_000.0, "test", offset=0))
    core = FleetCore(settings.core)
    expected = [o for r in records for o in core.process(r)]
    published = [o for o in expected if isinstance(o, CircuitFigures)]
    assert len(published) == 4  # w1, w2, cuda, bert: all new
    on_figures = [(key, value) for topic, key, value in producer.sent if topic == "fs.figures"]
    assert on_figures == [(f.key.encode(), Codec().encode(f)) for f in published]
    assert [topic for topic, _, _ in producer.sent] == [
        "fs.commands",
        *["fs.figures"] * len(published),
    ]
    after = metrics.RECORDS_OUT.labels("circuit_figures")._value.get()
    assert after - before == len(published)


class FakeMessage:
    def __init__(self, topic: str, offset: int, value: bytes) -> None:
        self._topic, self._offset, self._value = topic, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 2_000)


def test_the_projector_lands_the_figures_topic_in_the_history(tmp_path: Path) -> None:
    from faultstream.projections.projector import Projector

    storage = StorageSettings(
        duckdb_path=str(tmp_path / "h.duckdb"), read_models_dir=str(tmp_path / "rm")
    )
    settings = Settings(kafka=KafkaSettings(topic_prefix="fs"), storage=storage)
    projector = Projector(settings)
    assert projector.topics["fs.figures"] == FIGURES
    core = FleetCore(settings.core)
    derived = [o for r in a_history().records for o in core.process(r)]
    published = [o for o in derived if isinstance(o, CircuitFigures)]
    codec = Codec()
    messages = [FakeMessage("fs.figures", n, codec.encode(f)) for n, f in enumerate(published)]
    projector.consumer = SimpleNamespace(consume=lambda *_: messages)  # type: ignore[assignment]
    try:
        assert projector.poll_once() == len(published)
        projector.flush()
    finally:
        projector.consumer = None
        projector.close()
    con = duckdb.connect(settings.storage.duckdb_path, read_only=True)
    try:
        stored = con.execute(
            "SELECT event_id, circuit_kind, circuit_id, total_failures FROM circuit_figures "
            "ORDER BY event_id"
        ).fetchall()
        offsets = con.execute(
            "SELECT next_offset FROM projector_offsets WHERE topic = 'fs.figures'"
        ).fetchall()
    finally:
        con.close()
    assert stored == sorted(
        (f.event_id, f.circuit_kind.value, f.circuit_id, f.total_failures) for f in published
    )
    assert offsets == [(len(published),)]
