"""The worker SDK with no broker (a closed local port, real librdkafka): it never loses an
event without saying so, never spools one twice, and closes within its timeout."""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from faultstream.events.config import Settings
from faultstream.events.emitter import Emitter, KafkaTransport
from faultstream.events.exceptions import InvalidEventError
from faultstream.events.models import EventKind, WorkerEvent
from faultstream.events.spool import Spool
from faultstream.events.transport import ClientLog

LIBRDKAFKA_LOGGER = "faultstream.events.emitter.transport.librdkafka"
CLOSE_TIMEOUT_S = 0.5
# Only stops a broken close from hanging the test; far above CLOSE_TIMEOUT_S, far below
# the 30 s a close used to wait with no broker.
CLOSE_GUARD_S = 20


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def no_broker(tmp_path: Path) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{_closed_port()}", "topic_prefix": "t"},
        emitter={"spool_path": str(tmp_path / "spool.jsonl"), "close_timeout_s": CLOSE_TIMEOUT_S},
    )


def _spooled(settings: Settings) -> Counter[str]:
    return Counter(e.event_id for e in Spool(settings.emitter.spool_path).read())


def _spool_lines(settings: Settings) -> int:
    path = Path(settings.emitter.spool_path)
    return len(path.read_text().splitlines()) if path.exists() else 0


def _close_within_guard(emitter: Emitter) -> None:
    closer = threading.Thread(target=emitter.close)
    closer.start()
    closer.join(CLOSE_GUARD_S)
    assert not closer.is_alive(), "close() did not return"


def test_closing_with_no_broker_waits_close_timeout_s_then_spools_every_event(
    no_broker: Settings,
) -> None:
    # Deliveries would be retried for 5 minutes: only close_timeout_s can end the wait.
    emitter = Emitter(no_broker, worker_id="w1", hardware_class="cuda")
    emitted = [emitter.failure(f"t{n}", "bert", message="boom") for n in range(20)]
    _close_within_guard(emitter)
    assert _spooled(no_broker) == Counter(emitted)
    assert emitter.transport.pending == 0
    assert emitter.flush() == 0  # everything is on disk: nothing lost, nothing in flight


def test_librdkafka_logs_through_python_logging_once_per_state_not_per_retry(
    no_broker: Settings, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER)
    emitter = Emitter(no_broker, worker_id="w1", hardware_class="cuda")
    emitter.heartbeat()
    emitter.flush(2)  # librdkafka retries the connection several times meanwhile
    emitter.close()
    records = [r for r in caplog.records if r.name == LIBRDKAFKA_LOGGER]
    assert 1 <= len(records) < 5, [r.getMessage() for r in records]
    assert emitter.transport.client_log.repeats > 0  # the retries happened, unlogged
    assert "rdkafka" not in capfd.readouterr().err  # nothing printed behind logging's back


def test_a_repeated_librdkafka_message_is_logged_again_only_after_a_good_delivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client_log = ClientLog()
    fail = "[thrd:b:9092/1]: b:9092/1: Connect to ipv4#10.0.0.1:9092 failed: refused"
    retries = [
        f"{fail} (after 0ms in state CONNECT)",
        f"{fail} (after 12ms in state CONNECT, 1 identical error(s) suppressed)",
        f"{fail} (after 3ms in state CONNECT, 40 identical error(s) suppressed)",
    ]
    other_broker = fail.replace("10.0.0.1", "10.0.0.2") + " (after 0ms in state CONNECT)"
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER)
    for text in [*retries, other_broker]:
        client_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", text)
    assert [r.getMessage() for r in caplog.records] == [
        f"FAIL {retries[0]}",
        f"FAIL {other_broker}",
    ]
    assert client_log.repeats == 2
    client_log.recovered()  # the broker answered: the next failure is news again
    client_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", retries[1])
    assert caplog.records[-1].getMessage() == f"FAIL {retries[1]}"
    assert "deliveries succeed again (2 repeated" in caplog.records[-2].getMessage()


@pytest.mark.parametrize(
    "producer_config",
    [
        {},  # the broker is away: deliveries time out
        {"message.max.bytes": 1000},  # the producer refuses each event at produce()
    ],
    ids=["delivery-fails", "produce-raises"],
)
def test_three_starts_against_a_dead_broker_leave_exactly_the_original_events_spooled(
    no_broker: Settings, producer_config: dict
) -> None:
    def start() -> Emitter:
        transport = KafkaTransport(
            no_broker, message_timeout_ms=200, producer_config=producer_config
        )
        return Emitter(worker_id="w1", hardware_class="cuda", transport=transport)

    emitter = start()
    emitted = [emitter.checkpoint("t1", n, b"x" * 2000) for n in range(3)]
    emitter.flush(30)
    emitter.close()
    for _ in range(2):  # each start re-sends the spool, which fails again
        emitter = start()
        # flush returns once every event is resolved (its 200-ms timeout is past): the
        # bound only stops a hang, however loaded the machine.
        assert emitter.flush(30) == 0  # failed again, but still spooled: nothing lost
        emitter.close()
    assert _spooled(no_broker) == Counter(emitted)
    assert _spool_lines(no_broker) == 3


def _unencodable(event_id: str) -> WorkerEvent:
    # Built without validation (model_construct), as a careless caller could: a lone
    # surrogate has no UTF-8 form, so neither Avro nor the spool can write it.
    return WorkerEvent.model_construct(
        event_id=event_id, kind=EventKind.HEARTBEAT, ts=1, worker_id="w\udcff",
        hardware_class="cuda", task_id=None, task_type=None, failure_type=None, message=None,
        attempt=0, recovery_command_id=None, attributes={}, checkpoint_seq=None,
        checkpoint_state=None, received_at=None,
    )  # fmt: skip


@pytest.mark.parametrize("background", [True, False], ids=["sender-thread", "inline"])
def test_an_event_the_sender_cannot_encode_is_counted_and_logged_as_lost(
    no_broker: Settings, caplog: pytest.LogCaptureFixture, background: bool
) -> None:
    transport = KafkaTransport(no_broker, background=background)
    emitter = Emitter(worker_id="w1", hardware_class="cuda", transport=transport)
    good = emitter.heartbeat()
    with caplog.at_level(logging.ERROR, logger="faultstream.events.emitter.transport"):
        emitter.emit(_unencodable("bad-1"))
        # In flight (no broker) plus lost: flush says neither is delivered nor spooled.
        assert emitter.flush(0.2) == 2
    emitter.close()
    assert _spooled(no_broker) == Counter([good])
    assert emitter.flush() == 1  # the loss stays reported
    assert transport.lost == 1
    [record] = [r for r in caplog.records if "lost" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("1 events lost: event 'bad-1' cannot be encoded")


def test_a_full_local_queue_spools_the_overflow_instead_of_blocking_or_dropping(
    no_broker: Settings,
) -> None:
    # One message fits in librdkafka's queue; with no broker it never leaves.
    transport = KafkaTransport(no_broker, producer_config={"queue.buffering.max.messages": 1})
    emitter = Emitter(worker_id="w1", hardware_class="cuda", transport=transport)
    emitted = [emitter.heartbeat() for _ in range(5)]
    assert emitter.flush(0.2) == 1  # the one in flight; the other four are on disk
    assert len(_spooled(no_broker)) == 4
    emitter.close()
    assert _spooled(no_broker) == Counter(emitted)
    assert transport.lost == 0


class RaisingCallbackTransport(KafkaTransport):
    """A delivery callback that fails (a subclass's bug): its events must not vanish."""

    def _on_delivery(self, event_id: str, err: object, msg: object) -> None:
        raise RuntimeError("callback bug")


def test_a_delivery_callback_that_raises_loses_nothing_and_is_logged(
    no_broker: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RaisingCallbackTransport(no_broker, message_timeout_ms=100)
    emitter = Emitter(worker_id="w1", hardware_class="cuda", transport=transport)
    emitted = [emitter.heartbeat() for _ in range(3)]
    with caplog.at_level(logging.ERROR, logger="faultstream.events.emitter.transport"):
        # librdkafka expires messages on a once-a-second scan, so their callbacks come
        # about 1 s in (later on a loaded machine); flush returns once all three have run.
        assert emitter.flush(30) == 3  # never acknowledged: reported, not counted delivered
    assert any("callback bug" in (r.exc_text or "") for r in caplog.records)
    emitter.close()
    assert _spooled(no_broker) == Counter(emitted)


def test_an_event_sent_after_close_is_spooled_not_lost(no_broker: Settings) -> None:
    emitter = Emitter(no_broker, worker_id="w1", hardware_class="cuda")
    emitter.close()
    late = emitter.heartbeat()
    assert _spooled(no_broker) == Counter([late])
    assert emitter.flush() == 0


@pytest.mark.parametrize("field", ["worker_id", "hardware_class"])
def test_an_identity_that_is_not_utf8_text_is_refused_at_construction(
    no_broker: Settings, field: str
) -> None:
    identity = {"worker_id": "w1", "hardware_class": "cuda", field: "w\udcff"}
    with pytest.raises(InvalidEventError) as caught:
        Emitter(no_broker, **identity)
    assert caught.value.field == field
    assert not Path(no_broker.emitter.spool_path).exists()
