"""Tokens that open a machine's preview URLs without an API key: HMAC-signed, never stored.

- the *traffic access token* of a machine (``traffic_access_token`` in the create answer) opens every port of that
  machine for as long as it exists;
- a *preview token* opens one port of one machine until it expires (``get_url``/``get_preview_url``).
The key is ``AMBER_PREVIEW_SECRET`` (the same on every host of a cluster) or a random key kept in
``data_dir/preview.key`` (0600), created on first use. Tokens are compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from amber.settings import Settings

TRAFFIC_PREFIX = "ntt_"
PREVIEW_PREFIX = "npv_"
PREVIEW_TTL_SECS = 24 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_settings(cls, settings: Settings) -> TokenSigner:
        if settings.preview_secret:
            return cls(settings.preview_secret.encode())
        return cls(_stored_key(settings.data_dir / "preview.key"))

    def _sign(self, message: str) -> str:
        return _b64(hmac.new(self._key, message.encode(), hashlib.sha256).digest()[:24])

    def traffic_token(self, machine_id: str) -> str:
        return TRAFFIC_PREFIX + self._sign(f"traffic:{machine_id}")

    def preview_token(self, machine_id: str, port: int, ttl_secs: int = PREVIEW_TTL_SECS) -> tuple[str, int]:
        """A token for ``port`` of ``machine_id`` and when it expires (unix seconds)."""
        expires = int(time.time()) + ttl_secs
        return f"{PREVIEW_PREFIX}{expires}.{self._sign(f'preview:{machine_id}:{port}:{expires}')}", expires

    def opens(self, token: str, machine_id: str, port: int) -> bool:
        """Whether ``token`` (traffic or preview) opens ``port`` of ``machine_id`` now."""
        if token.startswith(TRAFFIC_PREFIX):
            return hmac.compare_digest(token, self.traffic_token(machine_id))
        if token.startswith(PREVIEW_PREFIX):
            expires_text, _, signature = token[len(PREVIEW_PREFIX):].partition(".")
            if not expires_text.isdigit() or int(expires_text) < time.time():
                return False
            expected = self._sign(f"preview:{machine_id}:{port}:{expires_text}")
            return hmac.compare_digest(signature, expected)
        return False


def _stored_key(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    try:
        os.link(tmp, path)  # the first process to publish wins; the others read its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()
