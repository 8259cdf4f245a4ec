"""Structured build log entries for one build: phases, step indices and cache events, as ``LogEvent``s.

Counts cache outcomes as they are reported, for the build's TemplateBuildCacheSummary.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from amber.contract.logs import (
    CACHE_SUMMARY_KEYS,
    CacheKind,
    CacheReason,
    CacheStatus,
    Emit,
    LogEvent,
    LogKind,
    LogLevel,
    LogPhase,
    cache_summary_key,
)


class BuildLog:
    def __init__(self, emit: Emit, total_steps: int) -> None:
        self._emit = emit
        self.total_steps = total_steps
        self.cache_counts: Counter[str] = Counter()

    async def info(self, phase: LogPhase, message: str, *, step: int | None = None) -> None:
        await self._event(LogKind.MESSAGE, LogLevel.INFO, phase, message, step)

    async def debug(self, phase: LogPhase, message: str, *, step: int | None = None) -> None:
        await self._event(LogKind.MESSAGE, LogLevel.DEBUG, phase, message, step)

    async def warn(self, phase: LogPhase, message: str, *, step: int | None = None) -> None:
        await self._event(LogKind.WARNING, LogLevel.WARN, phase, message, step)

    async def _event(self, kind: LogKind, level: LogLevel, phase: LogPhase, message: str, step: int | None) -> None:
        await self._emit(
            LogEvent(
                kind,
                message,
                level,
                phase,
                step_index=step,
                total_steps=self.total_steps if step is not None else None,
            )
        )

    async def cache(
        self,
        kind: CacheKind,
        status: CacheStatus,
        subject: str,
        message: str,
        *,
        reason: CacheReason | None = None,
        step: int | None = None,
    ) -> None:
        self.cache_counts[cache_summary_key(kind, status)] += 1
        await self._emit(
            LogEvent(
                LogKind.CACHE,
                message,
                LogLevel.INFO,
                LogPhase.CACHE,
                step_index=step,
                total_steps=self.total_steps if step is not None else None,
                cache_kind=kind,
                cache_status=status,
                cache_reason=reason,
                cache_subject=subject,
            )
        )

    async def forward(self, event: LogEvent) -> None:
        """Pass on an event made elsewhere (BuildKit), counting it if it is a cache outcome."""
        if event.kind == LogKind.CACHE and event.cache_kind is not None and event.cache_status is not None:
            self.cache_counts[cache_summary_key(event.cache_kind, event.cache_status)] += 1
        await self._emit(event)

    def cache_summary(self) -> dict[str, int]:
        """TemplateBuildCacheSummary: every counter present (zero when nothing happened)."""
        return {key: self.cache_counts.get(key, 0) for key in CACHE_SUMMARY_KEYS}


class OutputPump:
    """Forwards a guest command's output lines (produced on a worker thread) as ``info`` log entries (what the
    SDK's default printer shows, like ``docker build`` output), one at a time and in order, on the event loop.
    At most ``limit`` lines per pump are logged; the rest are counted and summarised in one line (the failure
    message still carries the command's last lines)."""

    def __init__(self, log: BuildLog, phase: LogPhase, step: int | None, limit: int = 2000) -> None:
        self._log, self._phase, self._step, self._limit = log, phase, step, limit
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run())
        self._dropped = 0

    def line(self, text: str) -> None:
        """Thread-safe: queue one output line."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, text)

    async def _run(self) -> None:
        sent = 0
        while (text := await self._queue.get()) is not None:
            if sent < self._limit:
                await self._log.info(self._phase, text, step=self._step)
                sent += 1
            else:
                self._dropped += 1

    async def close(self) -> None:
        """Log everything queued so far (call after the producing thread has returned)."""
        self._queue.put_nowait(None)
        await self._task
        if self._dropped:
            await self._log.info(self._phase, f"({self._dropped} more output lines not logged)", step=self._step)
