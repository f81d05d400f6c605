"""Posting a JSON document to a webhook until the receiver accepts it.

`Webhook.post` returns only once the receiver answered 2xx: connection errors, timeouts
and every other status are retried with exponential backoff up to a cap, for as long as
it takes. A 4xx other than 429 is logged as an error naming the status (the receiver or
the URL needs fixing) and retried at the cap, so nothing is ever skipped: the caller
commits what it delivered only after `post` returned. A timeout after the receiver got
the document means it gets it again: receivers dedupe (an `Idempotency-Key` is sent).

A URL may carry a token, in its path or query or as user:password: logs and errors name
only `scheme://host[:port]/`. Standard library only (urllib), as the SDK stays slim.
"""

from __future__ import annotations

import base64
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.client import HTTPException
from urllib.parse import urlsplit, urlunsplit

from .exceptions import FaultstreamError

log = logging.getLogger(__name__)
_READ_LIMIT = 64 * 1024


class WebhookError(FaultstreamError):
    """A webhook URL that cannot be used; the message names only its scheme and host."""


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: `first_s`, then `factor` times longer, at most `cap_s`."""

    first_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 60.0

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield min(delay, self.cap_s)
            delay = min(delay * self.factor, self.cap_s)


def redacted(url: str) -> str:
    """`scheme://host[:port]/`: what a log may say about a URL that may hold a token."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = f":{parts.port}" if _port(url) is not None else ""
    return f"{parts.scheme}://{host}{port}/"


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a GET without the body: a 2xx from that would
    # count as delivered. A redirect is reported instead, as any other non-2xx status.
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


class Webhook:
    """One receiver of JSON documents (POST, Content-Type application/json)."""

    def __init__(
        self,
        url: str,
        *,
        backoff: Backoff | None = None,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookError(f"webhook {redacted(url)}: not an http:// or https:// URL")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError:
            raise WebhookError(f"webhook {redacted(url)}: the port is not a number") from None
        self.where = redacted(url)
        self.backoff = backoff or Backoff()
        self.timeout_s = timeout_s
        self.sleep = sleep
        self._headers = {"Content-Type": "application/json", "User-Agent": "faultstream"}
        if parts.username is not None:  # user:password@ is not sent by urllib by itself
            secret = f"{parts.username}:{parts.password or ''}".encode()
            self._headers["Authorization"] = f"Basic {base64.b64encode(secret).decode()}"
            netloc = parts.netloc.rpartition("@")[2]
            url = urlunsplit(parts._replace(netloc=netloc))
        self._url = url
        self._opener = urllib.request.build_opener(_NoRedirects)

    def post(self, body: bytes, *, idempotency_key: str | None = None) -> int:
        """POST `body` until the receiver answers 2xx; returns how many attempts it took."""
        headers = dict(self._headers)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        delays = self.backoff.delays()
        attempt = 0
        while True:
            attempt += 1
            refused, retry_after = self._attempt(body, headers)
            if refused is None:
                if attempt > 1:
                    log.info("webhook %s accepted after %d attempts", self.where, attempt)
                return attempt
            delay = next(delays)
            if retry_after is not None:  # the receiver's own pace, within our cap
                delay = min(max(delay, retry_after), self.backoff.cap_s)
            level, why = refused
            log.log(level, "webhook %s: %s (attempt %d); retrying in %.1f s",
                    self.where, why, attempt, delay)  # fmt: skip
            self.sleep(delay)

    def _attempt(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[tuple[int, str] | None, float | None]:
        """(None, None) when accepted, else ((log level, why), Retry-After seconds)."""
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(_READ_LIMIT)  # what it says is not needed, only its status
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            retry_after = _seconds(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            return _refusal(status), retry_after
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            # urllib's messages name the failure, not the URL (URLError wraps the OSError).
            reason = getattr(exc, "reason", exc)
            return (logging.WARNING, f"not reachable ({reason})"), None
        if 200 <= status < 300:
            return None, None
        return _refusal(status), None  # a 1xx or 3xx that urllib handed back as is


def _refusal(status: int) -> tuple[int, str]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "unknown status"
    said = f"HTTP {status} {phrase}"
    if status >= 500 or status == HTTPStatus.TOO_MANY_REQUESTS:
        return logging.WARNING, said
    if 300 <= status < 400:
        return logging.ERROR, f"{said}: a redirect; give the final URL"
    # A 4xx will not pass by itself: a person fixes the receiver or the URL meanwhile.
    return logging.ERROR, f"{said}: the receiver refused it; nothing is skipped"


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (an HTTP date is ignored: the backoff applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
