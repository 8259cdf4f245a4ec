"""Shared state of one running app and the FastAPI dependencies that read it (auth, services)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Depends, Request

from amber.api.errors import ApiError
from amber.blobs.store import BlobStore
from amber.builds.service import BuildService
from amber.settings import Settings
from amber.store import catalog
from amber.store.catalog import Caller, hash_key
from amber.store.database import Database

_KEY_CACHE_SECS = 30.0  # a verified key is trusted this long without a database round trip


@dataclass
class AppState:
    settings: Settings
    db: Database
    blobs: BlobStore
    builds: BuildService
    _keys: dict[str, tuple[float, Caller]] = field(default_factory=dict)

    async def caller_for(self, key: str) -> Caller | None:
        digest = hash_key(key)
        cached = self._keys.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _KEY_CACHE_SECS:
            return cached[1]
        caller = await self.db.read(lambda s: catalog.caller_for_key(s, key))
        if caller is not None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[digest] = (now, caller)
        return caller


async def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.amber
    return state


async def current_caller(request: Request, state: AppState = Depends(app_state)) -> Caller:
    """Bearer API key → caller (§0.2). Missing or unknown key → 401 ``unauthorized``."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    caller = await state.caller_for(key.strip())
    if caller is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    return caller
