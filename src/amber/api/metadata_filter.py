"""The ``metadata`` query filter of list endpoints (machines, snapshots): a JSON object whose pairs a listed
record's metadata must all contain. HTTP only."""

from __future__ import annotations

import json
from typing import Any

from amber.contract.errors import InvalidRequest


def parse_metadata_filter(raw: str | None) -> dict[str, Any] | None:
    """The filter (None when absent or empty); anything but a JSON object → ``InvalidRequest`` on ``metadata``."""
    if not raw:
        return None
    try:
        query = json.loads(raw)
    except ValueError:
        raise InvalidRequest("metadata", "must be a JSON object") from None
    if not isinstance(query, dict):
        raise InvalidRequest("metadata", "must be a JSON object")
    return query
