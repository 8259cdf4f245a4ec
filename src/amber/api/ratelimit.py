"""Per-API-key request rate limiting (§0.7: ``429 rate_limit_exceeded`` with ``Retry-After``). Pure.

A token bucket per key: ``burst`` requests at once, refilled at ``rate_per_sec``. The defaults
(``AMBER_RATE_LIMIT_PER_SEC``, ``AMBER_RATE_LIMIT_BURST``) are far above what the SDK does; ``rate_per_sec <= 0``
disables limiting. Buckets live in the serving process (each host of a multi-host deployment limits on its own).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

_MAX_BUCKETS = 10_000  # beyond this, full (idle) buckets are forgotten


class RateLimiter:
    def __init__(self, rate_per_sec: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_sec
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time of last update)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> float | None:
        """Take one request for ``key``: None if allowed, else the seconds until the next one would be."""
        if not self.enabled:
            return None
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._remember(key, tokens - 1.0, now)
            return None
        self._remember(key, tokens, now)
        return (1.0 - tokens) / self.rate

    def _remember(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= _MAX_BUCKETS:
            self._buckets = {
                k: (t, at) for k, (t, at) in self._buckets.items()
                if min(float(self.burst), t + (now - at) * self.rate) < self.burst
            }
        self._buckets[key] = (tokens, now)


def retry_after_header(wait_secs: float) -> str:
    """``Retry-After`` in whole seconds (RFC 9110), never 0."""
    return str(max(1, math.ceil(wait_secs)))
