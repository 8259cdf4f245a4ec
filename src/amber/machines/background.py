"""A service's background work on the event loop: one long-running loop task and the tasks it spawns, owned
together so that stopping the service leaves none running (the reaper and the warm-pool controller)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class Background:
    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, loop: Coroutine[Any, Any, None]) -> None:
        """Run ``loop`` (which runs until cancelled) as the task named ``name``."""
        self._loop = asyncio.create_task(loop, name=self.name)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the loop; it is kept until done (the event loop holds tasks only weakly)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, *, cancel_spawned: bool) -> None:
        """Cancel the loop, then cancel (``cancel_spawned``) or let finish every spawned task, and wait for them."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        tasks = list(self._tasks)
        if cancel_spawned:
            for task in tasks:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
