"""Server-generated identifiers: URL-path-safe (``[a-z0-9_]``), prefixed by kind, roughly time-ordered."""

from __future__ import annotations

import secrets
import time


def _new(prefix: str) -> str:
    # Millisecond time first so ids sort by creation; 64 random bits make collisions irrelevant.
    return f"{prefix}{int(time.time() * 1000):011x}{secrets.token_hex(8)}"


def build_id() -> str:
    return _new("tb_")


def artifact_id() -> str:
    return _new("tmpl_")


def template_id() -> str:
    return _new("lt_")


def blob_id() -> str:
    return _new("blob_")


def claim_token() -> str:
    return "claim_" + secrets.token_urlsafe(24).replace("-", "a").replace("_", "b")


def request_id() -> str:
    return _new("req_")
