"""Waiting for the started service: the readiness probe loop (R54), independent of how a probe is made.

``wait_until_ready`` sleeps ``startup_grace_secs``, then runs the probe every ``interval_ms`` until it passes or
``timeout_secs`` has elapsed since the first attempt; a ``timeout`` probe just waits ``timeout_ms``. The loop
stops as soon as ``cancel`` is set. Each probe attempt is bounded by the time left (at least one second).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from amber.builds.planning.runtime import Readiness
from amber.vm import AgentClient

Probe = Callable[[float], Awaitable[str | None]]  # (attempt timeout secs) → None when ready, else why not


class NotReady(Exception):
    """The probe never passed. ``attempts`` and the last failure reason are in the message."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


async def _sleep_or_cancel(seconds: float, cancel: asyncio.Event) -> None:
    if seconds <= 0:
        return
    try:
        await asyncio.wait_for(cancel.wait(), timeout=seconds)
    except TimeoutError:
        return
    raise asyncio.CancelledError


async def wait_until_ready(
    readiness: Readiness, probe: Probe, cancel: asyncio.Event, *, clock: Callable[[], float] = time.monotonic
) -> int:
    """Return the number of attempts it took; raise ``NotReady`` on timeout, ``CancelledError`` on cancel."""
    if readiness.kind == "timeout":
        await _sleep_or_cancel((readiness.timeout_ms or 0) / 1000, cancel)
        return 0
    await _sleep_or_cancel(readiness.startup_grace_secs, cancel)
    deadline = clock() + readiness.timeout_secs
    attempts = 0
    last = "no attempt was made"
    while True:
        attempts += 1
        left = max(1.0, deadline - clock())
        failure = await probe(min(left, 10.0))
        if failure is None:
            return attempts
        last = failure
        if clock() + readiness.interval_ms / 1000 > deadline:
            raise NotReady(
                f"readiness probe {describe(readiness)} did not pass within {readiness.timeout_secs} s "
                f"({attempts} attempts); last result: {last}",
                attempts,
            )
        await _sleep_or_cancel(readiness.interval_ms / 1000, cancel)


def probe_once(agent: AgentClient, readiness: Readiness, *, env: Mapping[str, str], cwd: str | None, user: str,
               timeout: float) -> str | None:
    """One attempt of a ``tcp``/``http``/``command`` probe in the guest: None when it passes, else why not."""
    try:
        if readiness.kind == "tcp":
            agent.tcp_probe(readiness.port or 0, timeout=min(timeout, 2.0))
            return None
        if readiness.kind == "http":
            status = agent.http_probe(readiness.port or 0, readiness.path or "/", timeout=min(timeout, 2.0))
            return None if 200 <= status < 400 else f"HTTP status {status}"
        result = agent.exec(shell=readiness.command or "true", env=dict(env), cwd=cwd, user=user, timeout=timeout)
        return None if result.ok else f"command exited with code {result.exit_code}"
    except Exception as exc:
        return str(exc) or type(exc).__name__


def describe(readiness: Readiness) -> str:
    if readiness.kind == "tcp":
        return f"tcp port {readiness.port}"
    if readiness.kind == "http":
        return f"http://127.0.0.1:{readiness.port}{readiness.path}"
    if readiness.kind == "command":
        return f"command {readiness.command!r}"
    return f"timeout {readiness.timeout_ms} ms"
