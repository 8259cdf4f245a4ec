"""File operations in a machine, through its guest agent (as the requested guest user: the guest kernel checks
that user's permissions). Paths follow ``paths.resolve_path``. Large transfers are streamed in chunks (≤ 1 MiB,
a few in flight), never whole in this process's memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from amber.contract.errors import InvalidRequest
from amber.machines.errors import ExecFailed, MachineProblem
from amber.machines.live import LiveMachine
from amber.machines.paths import MAX_LIST_DEPTH, WORKSPACE, file_info, home_of, problem_of, resolve_path
from amber.vm import AgentError, VMError

TEXT_READ_LIMIT = 64 << 20  # files/read answers JSON: larger files go through GET /file


def _str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(key, "must be a string")
    return value


async def _call(what: str, path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except AgentError as exc:
        raise problem_of(exc, what, path) from None
    except VMError as exc:
        raise ExecFailed(f"the machine's agent did not answer: {str(exc).splitlines()[0]}") from None


class Files:
    """The file operations of one live machine."""

    def __init__(self, live: LiveMachine) -> None:
        self.live = live

    async def _fallback(self) -> str:
        """``/workspace``, or the template's workdir when the image has none (decided once per machine)."""
        if self.live.files_base is None:
            try:
                exists = await asyncio.to_thread(self.live.agent.exists, WORKSPACE)
            except (AgentError, VMError):
                exists = False
            self.live.files_base = WORKSPACE if exists else (self.live.workdir or "/")
        return self.live.files_base

    async def path(self, raw: Any, user: str | None, field: str = "path") -> str:
        if not isinstance(raw, str):
            raise InvalidRequest(field, "must be a string")
        fallback = WORKSPACE if raw.startswith("/") else await self._fallback()
        return resolve_path(raw, cwd=self.live.cwd, home=home_of(user), fallback=fallback, field=field)

    @staticmethod
    def user_of(body: dict[str, Any]) -> str | None:
        user = body.get("user")
        if user is not None and (not isinstance(user, str) or not user or "\0" in user):
            raise InvalidRequest("user", "must be a user name or uid")
        return user or None

    async def info(self, path: str, user: str | None) -> dict[str, Any]:
        entry = await _call("info", path, self.live.agent.stat, path, user=user)
        return file_info(entry)

    async def exists(self, path: str, user: str | None) -> bool:
        return bool(await _call("exists", path, self.live.agent.exists, path, user=user))

    async def write(self, body: dict[str, Any]) -> dict[str, Any]:
        user = self.user_of(body)
        path = await self.path(body.get("path"), user)
        content = _str(body, "content")
        assert content is not None
        encoding = body.get("encoding") or "utf8"
        if encoding in ("utf8", "utf-8", "text"):
            data = content.encode()
        elif encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequest("content", "is not valid base64") from None
        else:
            raise InvalidRequest("encoding", "must be 'utf8' or 'base64'")
        await _call("write", path, self.live.agent.write_file_chunks, path, [data], user=user, make_parents=True,
                    atomic=False)
        return await self.info(path, user)

    async def read(self, body: dict[str, Any]) -> dict[str, Any]:
        user = self.user_of(body)
        path = await self.path(body.get("path"), user)
        encoding = body.get("encoding") or "utf8"
        if encoding not in ("utf8", "utf-8", "text", "base64"):
            raise InvalidRequest("encoding", "must be 'utf8' or 'base64'")
        entry = await _call("read", path, self.live.agent.stat, path, user=user)
        if entry.size > TEXT_READ_LIMIT:
            raise InvalidRequest("path", f"{path} is {entry.size} bytes: read files over {TEXT_READ_LIMIT >> 20} MiB "
                                         "as bytes (GET /v1/machines/{id}/file, files.read(format='stream'))")

        def read_all() -> bytes:
            return b"".join(self.live.agent.read_file_chunks(path, user=user))

        data: bytes = await _call("read", path, read_all)
        if encoding == "base64":
            return {"content": base64.b64encode(data).decode(), "encoding": "base64", "size": len(data)}
        return {"content": data.decode("utf-8", errors="replace"), "encoding": "utf8", "size": len(data)}

    async def list(self, path: str, depth: int, user: str | None) -> list[dict[str, Any]]:
        if not 1 <= depth <= MAX_LIST_DEPTH:
            raise InvalidRequest("depth", f"must be between 1 and {MAX_LIST_DEPTH}")
        entries = await _call("list", path, self.live.agent.list_dir, path, depth, user=user)
        return [file_info(e) for e in entries]

    async def mkdir(self, path: str, user: str | None) -> None:
        await _call("mkdir", path, self.live.agent.mkdir, path, parents=True, user=user)

    async def remove(self, path: str, user: str | None) -> None:
        if path == "/":
            raise InvalidRequest("path", "the root directory cannot be removed")
        await _call("remove", path, self.live.agent.remove, path, recursive=True, user=user)

    async def chmod(self, path: str, mode: int, user: str | None) -> None:
        await _call("chmod", path, self.live.agent.chmod, path, mode, user=user)

    async def rename(self, old: str, new: str, user: str | None) -> dict[str, Any]:
        await _call("rename", old, self.live.agent.rename, old, new, user=user)
        return await self.info(new, user)

    async def download(self, path: str, user: str | None) -> AsyncIterator[bytes]:
        """The file's bytes as chunks; the first chunk is read before this returns, so a missing file is a clean
        error answer, not a broken stream."""
        chunks = self.live.agent.read_file_chunks(path, user=user)
        first = await _call("read", path, next, chunks, b"")
        return _stream(first, chunks, self.live)

    async def upload(self, path: str, user: str | None, body: AsyncIterator[bytes]) -> int:
        """Write the request body to ``path`` as it arrives (at most a few chunks buffered)."""
        feed: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        failed = threading.Event()

        def chunks() -> Iterator[bytes]:
            while (item := feed.get()) is not None:
                yield item

        def write() -> int:
            try:
                return self.live.agent.write_file_chunks(path, chunks(), user=user, make_parents=True, atomic=True)
            except BaseException:
                failed.set()
                raise

        async def offer(item: bytes | None) -> bool:
            while not failed.is_set():
                try:
                    feed.put_nowait(item)
                    return True
                except queue.Full:
                    await asyncio.sleep(0.002)
            return False

        task = asyncio.ensure_future(_call("write", path, write))
        try:
            async for part in body:
                if part and not await offer(part):
                    break
                self.live.touch()
        finally:
            await offer(None)
        written: int = await task
        return written


async def _stream(first: bytes, chunks: Iterator[bytes], live: LiveMachine) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        while True:
            chunk = await asyncio.to_thread(next, chunks, b"")
            if not chunk:
                return
            live.touch()
            yield chunk
    except (AgentError, VMError, MachineProblem):
        return  # the answer has started: the client sees a short body
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(chunks.close)  # type: ignore[attr-defined]
