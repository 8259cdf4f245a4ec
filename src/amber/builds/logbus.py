"""In-process fan-out of freshly persisted build log entries to live followers (SSE streams, blocking creates).

Entries are always written to the database first (that is the durable log and the one offset sequence);
the bus only wakes followers in this process so they need not poll. Followers on other hosts (PostgreSQL
deployments) fall back to re-reading the database periodically. Slow followers never block a build: each
has a bounded queue, and on overflow it is told to re-read from the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

TERMINAL_KINDS = frozenset({"end", "error", "cancelled"})
_QUEUE_LIMIT = 1024


@dataclass(frozen=True)
class Published:
    """One persisted entry: its offset, kind and the exact JSON served to clients."""

    offset: int
    kind: str
    entry_json: str

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


class Follower:
    """A subscription. ``overflowed`` means entries were dropped: re-read the database from your cursor."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Published] = asyncio.Queue(_QUEUE_LIMIT)
        self.overflowed = False

    def offer(self, item: Published) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


class LogBus:
    """Must be used from the event loop's thread only."""

    def __init__(self) -> None:
        self._followers: dict[str, set[Follower]] = {}

    @contextmanager
    def follow(self, build_id: str) -> Iterator[Follower]:
        follower = Follower()
        self._followers.setdefault(build_id, set()).add(follower)
        try:
            yield follower
        finally:
            group = self._followers.get(build_id)
            if group is not None:
                group.discard(follower)
                if not group:
                    del self._followers[build_id]

    def publish(self, build_id: str, item: Published) -> None:
        for follower in tuple(self._followers.get(build_id, ())):
            follower.offer(item)

    def follower_count(self) -> int:
        return sum(len(group) for group in self._followers.values())
