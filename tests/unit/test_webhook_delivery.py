"""Webhook delivery (events/webhook.py) against a real local HTTP server that refuses
connections, fails and redirects before it accepts: every alert arrives, in order, exactly
as sent, and nothing is given up. No timing is asserted: the backoff is made tiny, and
its waits are counted through the injected sleep."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from faultstream.cli.alerts import deliverer, webhook_body
from faultstream.events.models import Alert
from faultstream.events.webhook import Backoff, Webhook, WebhookError, redacted

TINY = Backoff(first_s=0.001, factor=2.0, cap_s=0.004)


def alert(n: int, state: str = "FIRING") -> Alert:
    return Alert(
        alert_id=f"alert-{n}", ts=1_000 + n, rule="fleet_health_below", subject_kind="fleet",
        subject_id="fleet", severity="warning", state=state,
        message=f"fleet health 6{n}% is below 70% — ünïcode kept", caused_by=f"tick-{n}",
    )  # fmt: skip


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next scripted status (200 once the script is spent) and
    keeps every body it was sent, attempts included."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, script: list[int]) -> None:
        self.script = list(script)
        self.attempts: list[bytes] = []
        self.accepted: list[bytes] = []
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.attempts.append(body)
            self.server.headers_seen.append(dict(self.headers))
            status = self.server.script.pop(0) if self.server.script else 200
            if 200 <= status < 300:
                self.server.accepted.append(body)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/elsewhere")
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(receiver: Receiver) -> threading.Thread:
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.shutdown()
        receiver.server_close()


def test_every_alert_arrives_in_order_exactly_as_sent_through_refusals_and_failures(
    receivers: list[Receiver], capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens at first (connection refused), then the receiver fails with 500,
    503 and 429 before accepting: each alert is retried until accepted, then printed."""
    port = free_port()
    waits: list[float] = []

    def sleep(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 2 and not receivers:  # the receiver comes up after two refusals
            receivers.append(Receiver(port, [500, 503, 429, 200, 500]))
            serve(receivers[0])

    webhook = Webhook(f"http://127.0.0.1:{port}/hooks/alerts", backoff=TINY, sleep=sleep)
    sent = [alert(1), alert(2), alert(1, "RESOLVED")]
    deliver = deliverer(webhook)
    for each in sent:
        deliver(each)

    (receiver,) = receivers
    assert receiver.accepted == [webhook_body(a) for a in sent]  # all, in order, as sent
    assert [json.loads(body) for body in receiver.accepted] == [
        a.model_dump(mode="json") for a in sent
    ]
    # Retries did happen: two refusals and 500, 503, 429 for the first, 500 for the second.
    assert len(waits) == 2 + 3 + 1
    assert len(receiver.attempts) == 3 + 1 + 2 + 1
    assert [h["Idempotency-Key"] for h in receiver.headers_seen][-1] == "alert-1:RESOLVED"
    assert {h["Content-Type"] for h in receiver.headers_seen} == {"application/json"}
    printed = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["alert_id"] for line in printed] == ["alert-1", "alert-2", "alert-1"]


def test_the_backoff_doubles_up_to_its_cap_and_stays_there() -> None:
    delays = Backoff(first_s=0.5, factor=2.0, cap_s=3.0).delays()
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_a_client_error_is_logged_with_its_status_and_retried_never_dropped(
    receivers: list[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver(free_port(), [400, 401, 302, 200])
    receivers.append(receiver)
    serve(receiver)
    secret = "s3cr3t-T0KEN"
    url = f"http://bot:{secret}@127.0.0.1:{receiver.server_port}/hook/{secret}?token={secret}"
    webhook = Webhook(url, backoff=TINY)
    with caplog.at_level(logging.INFO, logger="faultstream.events.webhook"):
        assert webhook.post(webhook_body(alert(7))) == 4
    assert receiver.accepted == [webhook_body(alert(7))]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert "HTTP 400 Bad Request" in errors[0] and "nothing is skipped" in errors[0]
    assert "HTTP 401 Unauthorized" in errors[1]
    assert "HTTP 302 Found" in errors[2] and "redirect" in errors[2]  # a redirect is no 2xx
    # The token is sent (user:password as basic auth), never logged.
    auth = receiver.headers_seen[-1]["Authorization"]
    assert base64.b64decode(auth.removeprefix("Basic ")).decode() == f"bot:{secret}"
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert all(f"http://127.0.0.1:{receiver.server_port}/" in message for message in errors)


def test_logs_and_errors_name_only_the_scheme_and_host_of_a_url() -> None:
    assert (
        redacted("https://u:p@hooks.example.com:8443/T0KEN?k=v")
        == "https://hooks.example.com:8443/"
    )
    assert redacted("http://[::1]:9000/x") == "http://[::1]:9000/"
    with pytest.raises(WebhookError, match=r"^webhook ftp://example.com/: not an http") as info:
        Webhook("ftp://example.com/T0KEN")
    assert "T0KEN" not in str(info.value)
    with pytest.raises(WebhookError, match="port is not a number"):
        Webhook("http://example.com:T0KEN/")
