"""Admission control for machine starts on this host: a bounded number of restores at once, a bounded queue
behind them, a machine cap and a guest-memory budget.

- ``restore_slot()``: at most ``slots`` restores (and resumes, runtime-artifact boots) run at once — they are
  CPU-bound, so one per core; up to ``queue_limit`` callers wait; beyond that ``Busy`` (429 + Retry-After).
- ``reserve(id, memory_mb)``: a machine counts against ``max_machines`` and against
  ``memory_budget_mb`` (host RAM times the overcommit ratio) from create until it stops running; beyond either
  ``CapacityExceeded`` (503). ``release(id)`` returns it. Paused machines hold neither.
All methods run on the event loop (no locking needed beyond it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from amber.machines.errors import Busy, CapacityExceeded

RETRY_AFTER_SECS = 1.0


def host_memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20))
    except (ValueError, OSError):
        return 4096


class Admission:
    def __init__(self, *, slots: int, queue_limit: int, max_machines: int, memory_budget_mb: int) -> None:
        self.slots = max(1, slots)
        self.queue_limit = max(0, queue_limit)
        self.max_machines = max(1, max_machines)
        self.memory_budget_mb = max(64, memory_budget_mb)
        self._semaphore = asyncio.Semaphore(self.slots)
        self._waiting = 0
        self._reserved: dict[str, int] = {}

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def machines(self) -> int:
        return len(self._reserved)

    @property
    def memory_mb(self) -> int:
        return sum(self._reserved.values())

    @contextlib.asynccontextmanager
    async def restore_slot(self) -> AsyncIterator[None]:
        if self._semaphore.locked() and self._waiting >= self.queue_limit:
            raise Busy(f"too many machines are starting on this host ({self.slots} at once, {self._waiting} "
                       f"waiting); retry in {RETRY_AFTER_SECS:g} s", retry_after=RETRY_AFTER_SECS)
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()

    def reserve(self, machine_id: str, memory_mb: int) -> None:
        if machine_id in self._reserved:
            return
        if len(self._reserved) >= self.max_machines:
            raise CapacityExceeded(f"this host runs its maximum of {self.max_machines} machines "
                                   f"(AMBER_MAX_MACHINES); destroy or hibernate one first")
        if self.memory_mb + memory_mb > self.memory_budget_mb:
            raise CapacityExceeded(f"not enough memory on this host for {memory_mb} MiB more: "
                                   f"{self.memory_mb} of {self.memory_budget_mb} MiB of guest memory are in use "
                                   f"(AMBER_MACHINE_MEMORY_OVERCOMMIT)")
        self._reserved[machine_id] = memory_mb

    def release(self, machine_id: str) -> None:
        self._reserved.pop(machine_id, None)
