"""JSON Lines: the file form of a history, used by replay, tune and simulate."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO

from pydantic import ValidationError

from .exceptions import InvalidEventError
from .models import InputRecord, WorkerEvent, input_model_for


def parse_input_line(line: str | bytes) -> InputRecord:
    """Validate one JSON line into a worker event or control record."""
    try:
        # Most lines are worker events: one validating parse (2.3x cheaper than parsing
        # first to find the kind). The rest (control records, bad lines) take the path
        # below, which picks the model by kind and names the field at fault.
        return WorkerEvent.model_validate_json(line)
    except ValidationError:
        pass
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = line[exc.start]
            raise InvalidEventError(
                "line", f"is not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1})"
            ) from None
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidEventError("line", f"is not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InvalidEventError("line", "is nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits, which Python refuses
        raise InvalidEventError("line", f"is not usable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InvalidEventError("line", "must be a JSON object")
    model = input_model_for(raw.get("kind"))
    if model is None:
        raise InvalidEventError("kind", f"unknown kind {raw.get('kind')!r}")
    try:
        # JSON mode so bytes come from base64, as model_dump_json wrote them.
        return model.model_validate_json(line)  # type: ignore[return-value]
    except ValidationError as exc:
        raise InvalidEventError.from_validation(exc) from None


class InvalidLineError(InvalidEventError):
    """An invalid record in a file, with its 1-based line number."""

    def __init__(self, lineno: int, error: InvalidEventError) -> None:
        super().__init__(error.field, error.reason)
        self.lineno = lineno
        self.args = (f"line {lineno}: {error.field}: {error.reason}",)


def read_input_records(
    lines: Iterable[str | bytes], *, skip_invalid: bool = False, errors: list | None = None
) -> Iterator[InputRecord]:
    """Parse a history line by line; raise InvalidLineError, or skip and collect it."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield parse_input_line(line)
        except InvalidEventError as exc:
            error = InvalidLineError(lineno, exc)
            if not skip_invalid:
                raise error from None
            if errors is not None:
                errors.append(error)


def write_records(records: Iterable, out: IO[str]) -> int:
    """Write input records as JSON lines; returns how many."""
    count = 0
    for record in records:
        out.write(record.model_dump_json())
        out.write("\n")
        count += 1
    return count
