"""Errors of the event contract, each naming what is wrong so a caller can fix it."""

from __future__ import annotations

from pydantic import ValidationError


class FaultstreamError(Exception):
    """Base of every error faultstream raises on purpose."""


class InvalidEventError(FaultstreamError, ValueError):
    """An event that breaks the contract; `field` names the field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    @classmethod
    def from_validation(cls, error: ValidationError) -> InvalidEventError:
        first = error.errors(include_url=False)[0]
        loc = ".".join(str(part) for part in first["loc"])
        text = str(first["msg"]).removeprefix("Value error, ")
        if not loc:
            # Cross-field rules (models._field_error) put the field first in the text.
            loc, _, text = text.partition(" ")
        return cls(loc, text)


class DecodeError(FaultstreamError):
    """Bytes on a topic that are not a record of the expected schema."""


class ConfigError(FaultstreamError, ValueError):
    """A setting that is missing, malformed or out of range; the message names it."""
