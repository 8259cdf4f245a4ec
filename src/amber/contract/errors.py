"""The errors of the contract's pure rules: each a ``ValueError`` whose message names what is wrong.

Callers catch them by name: ``InvalidRequest`` (a request rule, with its field) becomes the contract's 400
``invalid_request``. Messages never contain credential or secret values.
"""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request rule was broken. ``field`` is a JSON path into the request (``steps[2].command``, ``tags``)."""

    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InvalidRequest) and (self.field, self.message) == (other.field, other.message)

    def __hash__(self) -> int:
        return hash((self.field, self.message))


class InvalidReferenceError(ValueError):
    """An image reference is malformed (``contract.images.parse_reference``); ``message`` says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRef(ValueError):
    """A template ref that cannot be parsed (``contract.template_refs``); the message says why."""
