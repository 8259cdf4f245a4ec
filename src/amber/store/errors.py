"""Domain errors raised by the store and the build service; the API maps each to one HTTP status and code."""

from __future__ import annotations


class StoreError(Exception):
    """Base class. ``code`` is the contract's error code; ``field`` names the offending input, if any."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field


class Invalid(StoreError):
    status = 400
    code = "invalid_request"


class NotFound(StoreError):
    status = 404
    code = "not_found"


class Conflict(StoreError):
    status = 409
    code = "conflict"
