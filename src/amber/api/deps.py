"""Shared state of one running app and the FastAPI dependencies that read it (auth, services)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Depends, Request

from amber.api.errors import ApiError
from amber.api.ratelimit import RateLimiter, retry_after_header
from amber.blobs.store import BlobStore
from amber.builds.service import BuildService
from amber.machines.manager import MachineManager
from amber.machines.pools import WarmPools
from amber.machines.snapshots import Snapshots
from amber.settings import Settings
from amber.store import keys
from amber.store.database import Database
from amber.store.keys import Caller, hash_key

# A verified key is trusted this long without a database round trip: a revocation reaches every serving
# process within this time (plus one request), so it stays well under a second.
KEY_CACHE_SECS = 0.5


@dataclass
class AppState:
    settings: Settings
    db: Database
    blobs: BlobStore
    builds: BuildService
    machines: MachineManager | None = None
    snapshots: Snapshots | None = None
    warm_pools: WarmPools | None = None
    _keys: dict[str, tuple[float, Caller]] = field(default_factory=dict)
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_limit_per_sec, self.settings.rate_limit_burst)

    async def caller_for(self, key: str) -> Caller | None:
        digest = hash_key(key)
        cached = self._keys.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[0] < KEY_CACHE_SECS:
            return cached[1]
        found = await self.db.read(lambda s: keys.lookup_key(s, key))
        if found is None:
            self._keys.pop(digest, None)
            return None
        caller, stale = found
        if stale:
            await self.db.run(lambda s: keys.touch_key(s, caller.key_id))
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (now, caller)
        return caller


async def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.amber
    return state


async def current_caller(request: Request, state: AppState = Depends(app_state)) -> Caller:
    """Bearer API key → caller (§0.2). Missing or unknown key → 401 ``unauthorized``; a key over its rate
    limit → 429 ``rate_limit_exceeded`` with ``Retry-After`` (§0.7)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    caller = await state.caller_for(key.strip())
    if caller is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    wait = state.limiter.acquire(caller.key_id)
    if wait is not None:
        retry_after = retry_after_header(wait)
        raise ApiError(429, "rate_limit_exceeded",
                       f"rate limit exceeded: at most {state.limiter.rate:g} requests per second per API key "
                       f"(bursts of {state.limiter.burst}); retry after {retry_after} s",
                       headers={"Retry-After": retry_after})
    return caller


async def machine_manager(state: AppState = Depends(app_state)) -> MachineManager:
    if state.machines is None:
        raise ApiError(503, "feature_unavailable", "machines are not enabled on this server")
    return state.machines


async def machine_snapshots(state: AppState = Depends(app_state)) -> Snapshots:
    if state.snapshots is None:
        raise ApiError(503, "feature_unavailable", "machines are not enabled on this server")
    return state.snapshots


async def warm_pools(state: AppState = Depends(app_state)) -> WarmPools:
    if state.warm_pools is None:
        raise ApiError(503, "feature_unavailable", "template warm pools are not enabled on this server")
    return state.warm_pools
