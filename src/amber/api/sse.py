"""Server-Sent Events for build logs (§3.2, C1-C3): replay from an offset, then optionally follow live.

Framing per entry: ``id: <offset>``, ``event: log``, ``data: <one-line JSON>`` — one line for every client
whatever the build printed (U+2028, U+0085, CR, NUL … are escaped, see ``amber.contract.jsonline``). While idle
a comment line ``: keepalive`` is sent every ``sse_heartbeat_secs`` (the SDK's read timeout is 30 s on
reconnects). The stream closes after a terminal entry (``end``, ``error``, ``cancelled``), after the replay when
not following, or when the build is terminal or gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from amber.builds.logbus import Published
from amber.builds.service import BuildService
from amber.contract.jsonline import line_safe
from amber.contract.status import TERMINAL_STATUSES

_PAGE = 500
KEEPALIVE = b": keepalive\n\n"


def frame(item: Published) -> bytes:
    """One SSE event. Entries are stored line-safe (``amber.contract.jsonline``); ``line_safe`` again costs
    nothing for them and keeps entries written by older versions from splitting."""
    return f"id: {item.offset}\nevent: log\ndata: {line_safe(item.entry_json)}\n\n".encode()


async def log_entries(service: BuildService, build_id: str, start: int, *, follow: bool) -> AsyncIterator[
        Published | None]:
    """Entries from ``start`` on; ``None`` items mean "idle, send a heartbeat"."""
    settings = service.settings
    heartbeat = settings.sse_heartbeat_secs
    # Entries written by other hosts only reach us through the database; SQLite means one host.
    poll = heartbeat if service.db.is_sqlite else min(heartbeat, settings.log_poll_secs)
    with service.bus.follow(build_id) as follower:
        next_offset = start

        async def catch_up() -> tuple[list[Published], str | None]:
            nonlocal next_offset
            out: list[Published] = []
            status: str | None = None
            while True:
                items, status = await service.entries_since(build_id, next_offset, _PAGE)
                out.extend(items)
                if items:
                    next_offset = items[-1].offset + 1
                if len(items) < _PAGE or any(i.terminal for i in items):
                    return out, status

        items, status = await catch_up()
        for item in items:
            yield item
            if item.terminal:
                return
        if not follow or status is None or status in TERMINAL_STATUSES:
            return
        last_sent = time.monotonic()
        while True:
            try:
                item = await asyncio.wait_for(follower.queue.get(), timeout=poll)
            except TimeoutError:
                got: Published | None = None
            else:
                got = item
            if got is not None and got.offset < next_offset:
                continue
            if got is not None and got.offset == next_offset and not follower.overflowed:
                next_offset += 1
                yield got
                last_sent = time.monotonic()
                if got.terminal:
                    return
                continue
            follower.overflowed = False
            items, status = await catch_up()
            for item in items:
                yield item
                last_sent = time.monotonic()
                if item.terminal:
                    return
            if status is None or status in TERMINAL_STATUSES:
                return
            if time.monotonic() - last_sent >= heartbeat:
                yield None
                last_sent = time.monotonic()


async def sse_stream(service: BuildService, build_id: str, start: int, *, follow: bool) -> AsyncIterator[bytes]:
    async for item in log_entries(service, build_id, start, follow=follow):
        yield KEEPALIVE if item is None else frame(item)


async def wait_terminal(service: BuildService, build_id: str) -> Published | None:
    """Block until the build's terminal entry is stored; returns it (None if the build vanished)."""
    last: Published | None = None
    async for item in log_entries(service, build_id, 0, follow=True):
        if item is not None:
            last = item
    return last if last is not None and last.terminal else None
