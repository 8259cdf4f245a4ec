"""asyncio face of agent jobs: await a command's start and exit, iterate its output, feed its stdin.

No thread is parked per command: the agent's reader thread hands frames to the event loop with
``loop.call_soon_threadsafe``, and every host → guest frame of a job goes through the connection's writer
thread (``Job.offer_stdin``, ``consumed``, ``signal`` never block), so nothing here blocks the loop.

Streaming jobs (the default) deliver output to ``output()`` with backpressure: a chunk is acknowledged to
the guest when the iterator hands it out, so a consumer that stops reading stalls only its own command
(after the job's window, 1 MiB by default). Iterate ``output()`` to the end or use ``collect=True``
(output collected into ``wait()``'s result) — a streaming job whose output nobody reads stops once its
window is full, and then it also stops reading its stdin: feed stdin and read output concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from amber.vm.agent import DEFAULT_WINDOW, AgentClient, ExecResult, Job


class Stream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class Output:
    """One chunk of a command's output, as the guest read it from the command's pipe."""

    stream: Stream
    data: bytes


_END = None  # queued after the last chunk


class AsyncJob:
    """A command in the guest (``start``), a relay (``relay``) or a job taken over after a restore
    (``attach``), for asyncio code. Must be created and used on one running event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, collect: bool) -> None:
        self._loop = loop
        self._collect = collect
        self._queue: asyncio.Queue[Output | None] = asyncio.Queue()
        self._started: asyncio.Future[int] = loop.create_future()
        self._exited: asyncio.Future[ExecResult] = loop.create_future()
        self._credit = asyncio.Event()
        self._iterating = False
        self.job: Job | None = None

    # ---- construction ----

    @classmethod
    async def start(
        cls,
        agent: AgentClient,
        argv: Sequence[str] | None = None,
        *,
        shell: str | None = None,
        connect: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: bytes | None = None,
        stdin_open: bool = False,
        timeout: float | None = None,
        window: int | None = DEFAULT_WINDOW,
        collect: bool = False,
    ) -> AsyncJob:
        """Start a command (see ``AgentClient.start``) and return once it runs; a spawn failure (or a
        relay's failed connection) raises ``AgentError``."""
        self = cls(asyncio.get_running_loop(), collect)
        self.job = agent.start(
            argv, shell=shell, connect=connect, env=env, cwd=cwd, user=user, stdin=stdin, stdin_open=stdin_open,
            timeout=timeout, window=window, manual_ack=not collect, on_start=self._on_start,
            on_stdout=None if collect else self._on_stdout, on_stderr=None if collect else self._on_stderr,
            on_exit=self._on_exit, on_stdin_credit=self._on_credit,
        )
        await self.started()
        return self

    @classmethod
    async def relay(cls, agent: AgentClient, port: int, *, window: int | None = DEFAULT_WINDOW) -> AsyncJob:
        """A byte stream to ``port`` on the guest's loopback: ``send_stdin`` writes to the socket,
        ``output()`` yields what it answers, ``close_stdin`` half-closes it."""
        return await cls.start(agent, connect=port, stdin_open=True, window=window)

    @classmethod
    async def attach(cls, agent: AgentClient, request_id: int, *, collect: bool = False) -> AsyncJob:
        """Take over a job started before a snapshot (see ``AgentClient.attach``); returns once the
        guest confirmed it, raises ``AgentError`` (ENOENT) if it had ended."""
        self = cls(asyncio.get_running_loop(), collect)
        self.job = agent.attach(
            request_id, on_start=self._on_start, on_stdout=None if collect else self._on_stdout,
            on_stderr=None if collect else self._on_stderr, on_exit=self._on_exit, on_stdin_credit=self._on_credit,
            manual_ack=not collect,
        )
        await self.started()
        return self

    # ---- reader-thread callbacks: hand over to the loop ----

    def _soon(self, fn: Callable[..., object], *args: object) -> None:
        if not self._loop.is_closed():  # a loop that ended has nobody left to tell
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_start(self, job: Job) -> None:
        self._soon(self._set_started, job.pid or 0)

    def _on_stdout(self, data: bytes) -> None:
        self._soon(self._queue.put_nowait, Output(Stream.STDOUT, data))

    def _on_stderr(self, data: bytes) -> None:
        self._soon(self._queue.put_nowait, Output(Stream.STDERR, data))

    def _on_credit(self, _job: Job) -> None:
        self._soon(self._credit.set)

    def _on_exit(self, job: Job) -> None:
        self._soon(self._set_exited, job)

    def _set_started(self, pid: int) -> None:
        if not self._started.done():
            self._started.set_result(pid)

    def _set_exited(self, job: Job) -> None:
        self._queue.put_nowait(_END)
        self._credit.set()
        if job.error is not None or job.result is None:
            error = job.error or RuntimeError(f"job {job.request_id} ended without a result")
            for future in (self._started, self._exited):
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # marked retrieved: a failure nobody awaits is not an asyncio warning
        else:
            self._set_started(job.pid or 0)
            if not self._exited.done():
                self._exited.set_result(job.result)

    # ---- the job ----

    @property
    def request_id(self) -> int:
        assert self.job is not None
        return self.job.request_id

    @property
    def pid(self) -> int | None:
        return self.job.pid if self.job else None

    async def started(self) -> int:
        """The command's guest pid once it runs (raises its spawn error)."""
        return await asyncio.shield(self._started)

    async def wait(self) -> ExecResult:
        """The command's end: exit code or signal (and the output with ``collect``)."""
        return await asyncio.shield(self._exited)

    async def output(self) -> AsyncIterator[Output]:
        """Output chunks in the order the guest read them, until the command exits. One iterator per job."""
        if self._collect:
            raise RuntimeError("this job collects its output (collect=True): read it from wait()")
        if self._iterating:
            raise RuntimeError("output() of a job can be iterated only once")
        self._iterating = True
        job = self.job
        assert job is not None
        while (item := await self._queue.get()) is not _END:
            job.consumed(len(item.data))
            yield item

    async def send_stdin(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin, waiting (without a thread) for the guest's credit."""
        job = self.job
        assert job is not None
        view = memoryview(data).cast("B")
        while view:
            self._credit.clear()
            taken = job.offer_stdin(view)
            view = view[taken:]
            if view:
                if job.done:
                    raise ValueError(f"job {job.request_id} ended before its stdin was written")
                await self._credit.wait()

    def close_stdin(self) -> None:
        """End of input (after what was sent); for a relay, half-closes the socket."""
        assert self.job is not None
        self.job.close_stdin()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process group."""
        assert self.job is not None
        self.job.signal(signum)
