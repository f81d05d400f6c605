"""The worker SDK's one call to resume a task: its newest checkpoint, from the projector's
HTTP API (`GET /api/checkpoints/{task_id}`), with the standard library only.

    checkpoint = fetch_checkpoint("task-42")
    if checkpoint is not None:
        resume(checkpoint.checkpoint_seq, checkpoint.checkpoint_state)
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request

from .config import Settings, load_settings
from .exceptions import FaultstreamError
from .models import EventKind, WorkerEvent

PROJECTOR_URL_ENV = "FAULTSTREAM_PROJECTOR_URL"


class CheckpointFetchError(FaultstreamError):
    """The projector could not be reached or answered something unexpected."""


def projector_url(settings: Settings | None = None, host: str = "127.0.0.1") -> str:
    """$FAULTSTREAM_PROJECTOR_URL, else http://<host>:<http.projector_port>."""
    url = os.environ.get(PROJECTOR_URL_ENV)
    if url:
        return url.rstrip("/")
    settings = settings or load_settings()
    return f"http://{host}:{settings.http.projector_port}"


def fetch_checkpoint(
    task_id: str,
    settings: Settings | None = None,
    *,
    host: str = "127.0.0.1",
    timeout_s: float = 5.0,
) -> WorkerEvent | None:
    """The task's newest CHECKPOINT event (state decoded to bytes), or None if it has none."""
    if not task_id:
        raise CheckpointFetchError("task_id: must not be empty")
    url = f"{projector_url(settings, host)}/api/checkpoints/{urllib.parse.quote(task_id, '')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise CheckpointFetchError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CheckpointFetchError(f"{url}: {exc}") from None
    state = body.get("checkpoint_state")
    return WorkerEvent(
        event_id=body["event_id"],
        kind=EventKind.CHECKPOINT,
        ts=body["ts"],
        worker_id=body["worker_id"],
        hardware_class=body["hardware_class"],
        task_id=body["task_id"],
        task_type=body.get("task_type"),
        checkpoint_seq=body["checkpoint_seq"],
        checkpoint_state=None if state is None else base64.b64decode(state),
    )
