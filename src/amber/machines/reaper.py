"""The reaper: enforces every machine's time limits, within a second.

Each tick (``TICK_SECS``): a running machine past ``timeout_at`` (``timeout_ms`` from create, resume or the last
``set_timeout``), or idle for ``inactivity_timeout_ms`` (activity = exec, file, process and WebSocket traffic and
preview requests), gets its timeout action (destroy, or hibernate). Every few ticks: paused machines past
``auto_delete_after_ms`` are destroyed and expired idempotency keys dropped. Each verdict runs as its own task,
so one slow hibernation never delays the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from amber.machines.background import Background
from amber.machines.manager import MachineManager
from amber.store import machines as records

log = logging.getLogger("amber.machines")

TICK_SECS = 0.25
SLOW_EVERY = 20  # ticks between the database sweeps (auto delete, idempotency keys)


class Reaper:
    def __init__(self, manager: MachineManager) -> None:
        self.manager = manager
        self._busy: set[str] = set()
        self._background = Background("amber-machine-reaper")

    def start(self) -> None:
        self._background.start(self._run())

    async def stop(self) -> None:
        await self._background.stop(cancel_spawned=False)  # a hibernation under way finishes

    async def _run(self) -> None:
        tick = 0
        while True:
            try:
                self.tick()
                if tick % SLOW_EVERY == 0:
                    await self.sweep()
            except Exception:
                log.exception("machine reaper tick failed")
            tick += 1
            await asyncio.sleep(TICK_SECS)

    def _spawn(self, machine_id: str, coro_factory: object) -> None:
        if machine_id in self._busy:
            return
        self._busy.add(machine_id)

        async def run() -> None:
            try:
                await coro_factory()  # type: ignore[operator]
            except Exception:
                log.exception("enforcing the time limit of machine %s failed", machine_id)
            finally:
                self._busy.discard(machine_id)

        self._background.spawn(run())

    def tick(self) -> None:
        now = time.time()
        for live in self.manager.live_machines():
            if live.stopping:
                continue
            if live.timeout_at is not None and now >= live.timeout_at:
                self._spawn(live.id, lambda m=live.id: self.manager.expire(m, "its timeout was reached"))
            elif live.inactivity_timeout_ms is not None and \
                    (now - live.last_active) * 1000 >= live.inactivity_timeout_ms:
                self._spawn(live.id, lambda m=live.id, ms=live.inactivity_timeout_ms: self.manager.expire(
                    m, f"idle for {ms} ms"))

    async def sweep(self) -> None:
        def due(session: object) -> list[str]:
            now = datetime.now(UTC)
            out = []
            for row in records.machines_with_status(session, ["paused"]):  # type: ignore[arg-type]
                if row.auto_delete_after_ms and row.paused_at is not None and \
                        now >= row.paused_at + timedelta(milliseconds=row.auto_delete_after_ms):
                    out.append(row.id)
            records.expire_idempotency_keys(session)  # type: ignore[arg-type]
            return out

        for machine_id in await self.manager.db.run(due):
            self._spawn(machine_id, lambda m=machine_id: self.manager.auto_delete(m))
        await self.manager.collect_snapshots()
