"""How the long-running commands (processor, projector, api, dashboard) log: `--log-format
text` (lines for a person, as before) or `json` (one JSON object per line, for a log
pipeline).

A JSON line always has `ts` (UTC, ISO 8601), `level`, `component` (which command),
`logger` and `message`; a log call that passes `extra={"fields": {...}}` adds those
figures as top-level keys, so the processor's stats lines carry their numbers as numbers.
Standard library only: the worker SDK's install has nothing more.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"
# The keys every JSON line has; a field of the same name cannot replace them.
_CORE_KEYS = ("ts", "level", "component", "logger", "message")


def add_log_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, with the component and the "
        "figures of each line as fields",
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: the core keys, the record's `fields`, its exception."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            document.update((k, v) for k, v in fields.items() if k not in _CORE_KEYS)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        # A message is one line whatever it holds: json.dumps escapes line breaks.
        return json.dumps(document, default=str)


def json_line(component: str, message: str, *, logger: str = "faultstream", **fields: Any) -> str:
    """The JSON line of a message that does not go through `logging` (a launcher's own)."""
    record = logging.LogRecord(logger, logging.INFO, "", 0, message, None, None)
    record.fields = fields
    return JsonFormatter(component).format(record)


def logging_config(log_format: str, component: str, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` document: one stderr handler in `log_format`. Faust's
    worker takes it as its `logging_config`, which replaces the one it would build."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "component": component}
        if log_format == "json"
        else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure_logging(
    log_format: str, component: str, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """The root logger writes `log_format` lines to stderr (or `stream`), and only those."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(component) if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
