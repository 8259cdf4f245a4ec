"""Client for the guest agent over the virtio-serial unix socket.

Threading. One reader thread per connection decodes the agent's frames and routes them by request id.
Blocking requests (``ping``, ``exec``, the file operations…) may run from any number of threads at once;
each waits only for its own answers. Long-lived commands (``start``, ``relay``, ``attach``) park no thread:
their ``Job`` is driven by the reader thread, which calls the job's callbacks (``on_start``, ``on_stdout``,
``on_stderr``, ``on_exit``, ``on_stdin_credit``). Those callbacks must return quickly and must never wait
for an agent answer (the reader is the thread that would deliver it); they may call ``Job.offer_stdin``,
``close_stdin``, ``signal`` and ``consumed``. ``amber.vm.aio`` wraps jobs for asyncio.

Request ids come from one allocator per connection: random by default (so a restored VM's leftover frames
for the template's requests are never mistaken for ours: they are dropped), or seeded with
``first_request_id`` above every id the guest may still hold. Jobs started before a snapshot keep running
in the guest; ``attach`` (and ``AgentClient(attach=…)``, which routes their frames from the first byte)
takes them over after a restore.

Flow control. A job's output is read in the guest only while less than its ``window`` is unacknowledged;
the host acknowledges what its callbacks (or the async consumer) have taken, so a slow consumer stalls its
own command, never the connection. Stdin is credited the other way: at most ``STDIN_WINDOW`` bytes are in
flight per job.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import fcntl
import os
import posixpath
import queue
import secrets
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from amber.vm.errors import AgentDisconnected, AgentError, AgentTimeout
from amber.vm.files import FileInfo, FileStat, FileType
from amber.vm.job import (
    DEFAULT_WINDOW,
    MAX_ID,
    STDIN_FRAME,
    STDIN_WINDOW,
    ExecResult,
    Job,
    OutputCallback,
    check_signal,
    error_from,
)
from amber.vm.protocol import (
    CHUNK,
    MAX_LIST_ENTRIES,
    MKDIR_PARENTS,
    REMOVE_RECURSIVE,
    RENAME_NO_REPLACE,
    WRITE_MKDIRS,
    Frame,
    FrameDecoder,
    MsgType,
    ProtocolError,
    SyncMode,
    Tag,
    decode_entry,
    encode_field,
    encode_frame,
    encode_request,
)

SCRUB_BYTES = 9 << 20  # over twice the agent port's receive queue (1024 buffers of a 4 KiB page, QEMU 7.2)
SCRUB_FRAME_BYTES = 3 << 20  # one ping's zeros (frames carry at most 4 MiB)

__all__ = [  # the client, and the types its methods take and return
    "DEFAULT_WINDOW",
    "STDIN_WINDOW",
    "AgentClient",
    "ExecResult",
    "FileInfo",
    "FileStat",
    "FileType",
    "Job",
    "OutputCallback",
    "RunningExec",
]

Route = Callable[[Frame | None], None]  # None: the connection ended
_CLOSED: Final = None  # queued to every waiter when the connection ends

PIPELINE: Final = 4  # file chunks in flight per transfer (each CHUNK bytes)


@dataclass(frozen=True)
class RunningExec:
    """A command that has started (given to ``exec``'s ``on_start``): its guest pid, and a way to signal it."""

    pid: int
    request_id: int
    _client: AgentClient

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's whole process group (no effect once it has ended)."""
        self._client._signal(self.request_id, signum)


def _env_fields(env: Mapping[str, str] | None, what: str) -> list[bytes]:
    fields = []
    for k, v in (env or {}).items():
        if not k or "=" in k or "\0" in k:
            raise ValueError(f"{what}: invalid variable name {k!r}")
        fields.append(encode_field(Tag.ENV, f"{k}={v}"))
    return fields


class AgentClient:
    """One connection to one VM's agent. ``close()`` is idempotent; in-flight calls then raise.

    ``first_request_id`` seeds the request-id allocator (default: random); ``attach`` lists request ids
    of jobs started on an earlier connection (before a snapshot) whose frames must be kept from the very
    first byte until ``attach(id)`` claims them.
    """

    def __init__(self, sock: socket.socket, first_request_id: int | None = None, *,
                 attach: Iterable[int] = ()) -> None:
        if first_request_id is not None and not 1 <= first_request_id <= MAX_ID:
            raise ValueError(f"first_request_id must be in 1..{MAX_ID}, got {first_request_id}")
        self._sock = sock
        self._send_lock = threading.Lock()
        self._id_lock = threading.Lock()
        start = secrets.randbelow(1 << 30) + (1 << 20) if first_request_id is None else first_request_id
        self._next_id = start - 1
        self._routes: dict[int, Route] = {}
        self._routes_lock = threading.Lock()
        self._closed = False
        self.error: str | None = None
        self.dropped_bytes = 0  # output of jobs with no route (see the reader), for diagnostics
        self._received = 0  # reads from the socket so far, and how many of them were handed over (wait_drained)
        self._handled = 0
        self._decoder = FrameDecoder(resync=True)
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._outbox_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._held: dict[int, Job] = {}  # pre-registered jobs of an earlier connection, until attach()
        for rid in attach:
            job = Job(self, rid)
            job._held = []
            self._held[rid] = job
            self._routes[rid] = job._deliver
        self._reader = threading.Thread(target=self._read_loop, name="amber-agent-reader", daemon=True)
        self._reader.start()

    # ---- plumbing ----

    @property
    def resync_skipped(self) -> int:
        """Bytes skipped at the start of the connection before the first valid frame (a frame tail left
        over from the connection before a snapshot)."""
        return self._decoder.skipped

    @property
    def next_request_id(self) -> int:
        """The id the next request will get (persist it to seed ``first_request_id`` after a restore)."""
        with self._id_lock:
            return (self._next_id % MAX_ID) + 1

    def _allocate(self) -> int:
        with self._id_lock:
            self._next_id = (self._next_id % MAX_ID) + 1
            return self._next_id

    def _register(self, route: Route, rid: int | None = None) -> int:
        rid = self._allocate() if rid is None else rid
        with self._routes_lock:
            if self._closed:
                raise AgentDisconnected(f"agent connection is closed ({self.error or 'closed by the host'})")
            if rid in self._routes:
                raise ValueError(f"request id {rid} is already in use on this connection")
            self._routes[rid] = route
        return rid

    def _new_id(self) -> tuple[int, queue.SimpleQueue[Frame | None]]:
        q: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        return self._register(q.put), q

    def _drop(self, rid: int) -> None:
        with self._routes_lock:
            self._routes.pop(rid, None)

    def _send(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as e:
            raise AgentDisconnected(f"agent connection lost while sending: {e}") from None

    def _post(self, data: bytes) -> None:
        """Queue a job frame (EXEC, STDIN, ACK, SIGNAL, ATTACH) for the writer thread: callers never block
        on the socket, and one job's frames keep their order. A frame lost with the connection only
        matters to jobs that the lost connection ends anyway."""
        with self._outbox_lock:
            if self._closed:
                return
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="amber-agent-writer", daemon=True)
                self._writer.start()
            self._outbox.put(data)

    def _write_loop(self) -> None:
        while (data := self._outbox.get()) is not None:
            with contextlib.suppress(AgentDisconnected):
                self._send(data)

    def _read_loop(self) -> None:
        buf = bytearray(1 << 20)  # one receive buffer: no 1 MiB allocation per recv
        view = memoryview(buf)
        try:
            while True:
                n = self._sock.recv_into(view)
                if not n:
                    self.error = "the VM closed the agent connection"
                    break
                self._received += 1
                for frame in self._decoder.feed(view[:n]):
                    with self._routes_lock:
                        route = self._routes.get(frame.id)
                    if route is not None:
                        route(frame)
                    elif frame.type in (MsgType.STDOUT, MsgType.STDERR):
                        # Output of a job nobody attached (started on an earlier connection): dropped, and
                        # acknowledged so that a windowed job does not stall forever.
                        self.dropped_bytes += len(frame.payload)
                        ack = [encode_field(Tag.LENGTH, len(frame.payload))]
                        self._post(encode_request(MsgType.ACK, frame.id, ack))
                self._handled = self._received
        except ProtocolError as e:
            self.error = f"agent protocol error: {e}"
        except OSError as e:
            self.error = self.error or f"agent connection error: {e}"
        finally:
            with self._routes_lock:
                self._closed = True
                routes = list(self._routes.values())
            with self._outbox_lock:
                if self._writer is not None:
                    self._outbox.put(None)
                    self._writer = None
            for route in routes:
                route(_CLOSED)

    @staticmethod
    def _get(q: queue.SimpleQueue[Frame | None], deadline: float | None, what: str) -> Frame:
        try:
            frame = q.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AgentTimeout(f"{what}: no answer from the guest agent in time") from None
        if frame is None:
            raise AgentDisconnected(f"{what}: the agent connection closed")
        return frame

    def _call(self, type_: MsgType, fields: Sequence[bytes], what: str, timeout: float | None = 60.0,
              *, prefix: bool = True) -> Frame:
        rid, q = self._new_id()
        try:
            self._send(encode_request(type_, rid, fields))
            deadline = None if timeout is None else time.monotonic() + timeout
            frame = self._get(q, deadline, what)
            if frame.type == MsgType.ERROR:
                raise error_from(frame, what if prefix else None)
            return frame
        finally:
            self._drop(rid)

    def close(self) -> None:
        """Close the connection; waiting requests raise ``AgentDisconnected``, jobs end with it. Idempotent."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._outbox_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._outbox.put(None)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)

    def wait_drained(self, timeout: float = 2.0) -> bool:
        """Wait until every byte the VM wrote to the connection so far has been read and handed to its job or
        request (for a paused VM: all it sent before the pause). False when that did not happen in ``timeout``."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            try:
                pending = struct.unpack("i", fcntl.ioctl(self._sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
            except OSError:
                return True  # closed: nothing more will come
            quiet = quiet + 1 if pending == 0 and self._handled == self._received else 0
            if quiet >= 2:  # twice idle, a moment apart: the reader is not between recv and hand-over
                return True
            time.sleep(0.002)
        return False

    def quiesce(self) -> contextlib.AbstractContextManager[None]:
        """Hold every sender back and make sure the agent has read all that was sent (a ping round trip):
        a snapshot taken inside carries no half-received request. Blocks ``_send`` until exit."""
        return _Quiesced(self)

    # ---- requests ----

    def ping(self, timeout: float = 5.0) -> str:
        """Round trip to the agent; returns its version string ("amber-agent 2")."""
        return self._call(MsgType.PING, [], "ping", timeout).text(Tag.VERSION) or ""

    def scrub_transport(self, timeout: float = 60.0) -> None:
        """Overwrite the guest kernel's receive buffers of the agent port with zeros: pings carrying
        ``SCRUB_BYTES`` of zeros in all cycle every buffer of the port's queue (1024 pages with QEMU 7.2) twice.
        The guest reuses those buffers without clearing them, so the last requests (exec environments:
        build-only values) would stay in guest memory, and in a snapshot, until overwritten. The agent zeroes
        its own copy of every frame. ~0.1 s under TCG."""
        zeros = bytes(SCRUB_FRAME_BYTES)
        for _ in range(SCRUB_BYTES // SCRUB_FRAME_BYTES):
            self._call(MsgType.PING, [encode_field(Tag.DATA, zeros)], "scrub", timeout)

    def _first_answer(
        self,
        type_: MsgType,
        fields: Callable[[], Sequence[bytes]],
        what: str,
        timeout: float,
        alive: Callable[[], bool],
        resend_after: float,
    ) -> Frame:
        """Send a request, and send it again every ``resend_after`` seconds until one copy is answered (so
        only idempotent requests). All copies share one waiter; the first reply wins."""
        waiter: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        ids: list[int] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                # A copy is resent only into a socket with room: while the guest has not opened its port, QEMU
                # stops reading, and a blocking send would never reach the deadline check below.
                if not ids or self._writable():
                    ids.append(self._register(waiter.put))
                    self._send(encode_request(type_, ids[-1], fields()))
                resend = time.monotonic() + resend_after
                while True:
                    try:
                        frame = waiter.get(timeout=min(0.02, resend_after))
                        break
                    except queue.Empty:
                        if not alive():
                            raise AgentDisconnected(f"{what}: the VM stopped before its agent answered") from None
                        if time.monotonic() > deadline:
                            raise AgentTimeout(f"{what}: no agent answer within {timeout:.0f}s") from None
                        if time.monotonic() >= resend:
                            frame = None
                            break
                if frame is None:
                    if self._closed:
                        raise AgentDisconnected(f"{what}: agent connection closed ({self.error})")
                    continue
                if frame.type == MsgType.ERROR:
                    raise error_from(frame, what)
                return frame
        finally:
            for rid in ids:
                self._drop(rid)

    def _writable(self) -> bool:
        try:
            return bool(select.select([], [self._sock], [], 0)[1])
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout: float, alive: Callable[[], bool] = lambda: True, interval: float = 0.02) -> str:
        """Ping until the agent answers. Pings sent before the guest opens its port are discarded by the
        guest kernel, so they are repeated every ``interval`` seconds."""
        return self._first_answer(MsgType.PING, list, "boot", timeout, alive, interval).text(Tag.VERSION) or ""

    @staticmethod
    def _command_fields(
        argv: Sequence[str] | None,
        shell: str | None,
        connect: int | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        user: str | None,
        timeout: float | None,
    ) -> list[bytes]:
        if (argv is not None) + (shell is not None) + (connect is not None) != 1:
            raise ValueError("exec needs exactly one of argv, shell or connect")
        fields: list[bytes] = []
        if argv is not None:
            if not argv:
                raise ValueError("exec argv must not be empty")
            fields += [encode_field(Tag.ARGV, a) for a in argv]
        if shell is not None:
            fields.append(encode_field(Tag.SHELL, shell))
        if connect is not None:
            if not 1 <= connect <= 65535:
                raise ValueError(f"connect port must be in 1..65535, got {connect}")
            fields.append(encode_field(Tag.PORT, connect))
        fields += _env_fields(env, "exec env")
        if cwd:
            fields.append(encode_field(Tag.CWD, cwd))
        if user:
            fields.append(encode_field(Tag.USER, user))
        if timeout is not None:
            fields.append(encode_field(Tag.TIMEOUT_MS, max(1, int(timeout * 1000))))
        return fields

    def exec(
        self,
        argv: Sequence[str] | None = None,
        *,
        shell: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_start: Callable[[RunningExec], None] | None = None,
    ) -> ExecResult:
        """Run ``argv`` (or ``shell`` through /bin/sh -c) and wait for it to end, in this thread.

        Output is streamed to ``on_stdout``/``on_stderr`` (called in this thread) as the guest produces it,
        or collected into the result when no callback is given. ``user`` is "name", "uid", "name:group" or
        "uid:gid", resolved from the guest's /etc/passwd and /etc/group (default root); ``env`` overrides
        the agent's base environment (``set_env``), which overrides the PATH/HOME/TERM defaults; ``cwd``
        defaults to /. ``stdin`` is streamed as the command reads it. ``timeout`` (seconds) makes the agent
        SIGKILL the command's whole process group, reported as ``timed_out``. Spawn failures (unknown user,
        missing cwd or command) raise ``AgentError``; a non-zero exit does not raise. ``on_start`` receives
        a ``RunningExec`` that can signal the command (cancellation) while this call waits.
        """
        fields = self._command_fields(argv, shell, None, env, cwd, user, timeout)
        data = memoryview(stdin or b"")
        first, rest = data[:CHUNK], data[CHUNK:]
        if stdin is not None:
            fields.append(encode_field(Tag.STDIN, bytes(first)))
            if rest:
                fields.append(encode_field(Tag.STDIN_OPEN, True))
        sent, acked = len(first), 0
        out: list[bytes] = []
        err: list[bytes] = []
        write_out = on_stdout or out.append
        write_err = on_stderr or err.append
        rid, q = self._new_id()
        try:
            self._send(encode_request(MsgType.EXEC, rid, fields))
            # The agent's timeout kills the command; ours only guards against a wedged guest.
            deadline = None if timeout is None else time.monotonic() + timeout + 60.0
            pid, started = 0, False
            while True:
                frame = self._get(q, deadline, "exec")
                if frame.type == MsgType.STARTED:
                    pid, started = frame.u32(Tag.PID) or 0, True
                    if on_start:
                        on_start(RunningExec(pid, rid, self))
                elif frame.type == MsgType.STDIN_ACK:
                    acked += frame.u32(Tag.LENGTH) or 0
                elif frame.type == MsgType.STDOUT:
                    write_out(frame.payload)
                elif frame.type == MsgType.STDERR:
                    write_err(frame.payload)
                elif frame.type == MsgType.ERROR:
                    if started:
                        continue  # a refused stdin frame after the command closed its stdin: it has ended
                    raise error_from(frame, None)
                elif frame.type == MsgType.EXIT:
                    return ExecResult(
                        exit_code=frame.u32(Tag.EXIT_CODE),
                        signal=frame.u32(Tag.SIGNAL),
                        timed_out=frame.has(Tag.TIMED_OUT),
                        stdout=b"".join(out),
                        stderr=b"".join(err),
                        pid=pid,
                    )
                if started and rest and frame.type in (MsgType.STARTED, MsgType.STDIN_ACK):
                    take = min(len(rest), STDIN_WINDOW - (sent - acked))
                    for i in range(0, take, STDIN_FRAME):
                        self._send(encode_frame(MsgType.STDIN, rid, bytes(rest[i : min(take, i + STDIN_FRAME)])))
                    rest, sent = rest[take:], sent + take
                    if not rest:
                        self._send(encode_frame(MsgType.STDIN, rid, b""))
        finally:
            self._drop(rid)

    def start(
        self,
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
        manual_ack: bool = False,
        on_start: Callable[[Job], None] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_exit: Callable[[Job], None] | None = None,
        on_stdin_credit: Callable[[Job], None] | None = None,
    ) -> Job:
        """Start a command (as ``exec``) and return at once: no thread waits for it (see ``Job``).

        ``connect=port`` starts a relay instead of a command: the guest connects to 127.0.0.1:port (then
        ::1) and copies stdin to the socket and the socket to stdout until the socket closes; stdin EOF
        half-closes it. A failed connection is an ``AgentError`` naming the port (from ``wait_started``).
        ``stdin`` is sent first (as credit allows); with ``stdin_open`` more may follow (``send_stdin``,
        ``offer_stdin``) until ``close_stdin``. ``window`` bounds the output in flight (None: unbounded).
        Callbacks run in the reader thread (see the module docstring).
        """
        fields = self._command_fields(argv, shell, connect, env, cwd, user, timeout)
        if window is not None:
            if not 1 <= window <= MAX_ID:
                raise ValueError(f"window must be 1..{MAX_ID} bytes")
            fields.append(encode_field(Tag.WINDOW, window))
        data = memoryview(stdin or b"")
        first = data[: min(CHUNK, STDIN_WINDOW)]
        more = bool(data[len(first):]) or stdin_open
        if stdin is not None:
            fields.append(encode_field(Tag.STDIN, bytes(first)))
        if more:
            fields.append(encode_field(Tag.STDIN_OPEN, True))
        rid = self._allocate()
        job = Job(self, rid, on_start=on_start, on_stdout=on_stdout, on_stderr=on_stderr, on_exit=on_exit,
                  on_stdin_credit=on_stdin_credit, window=window, manual_ack=manual_ack, stdin_open=more)
        job._stdin_sent = len(first)
        job._pending = data[len(first):]
        job._stdin_closing = more and not stdin_open
        self._register(job._deliver, rid)
        self._post(encode_request(MsgType.EXEC, rid, fields))
        return job

    def relay(
        self,
        port: int,
        *,
        on_stdout: OutputCallback | None = None,
        on_exit: Callable[[Job], None] | None = None,
        window: int | None = DEFAULT_WINDOW,
        manual_ack: bool = False,
        on_stdin_credit: Callable[[Job], None] | None = None,
    ) -> Job:
        """A byte stream to ``port`` on the guest's loopback (see ``start(connect=)``): ``send_stdin``
        writes to the socket, ``on_stdout`` gets what it answers, ``close_stdin`` half-closes it."""
        return self.start(connect=port, stdin_open=True, on_stdout=on_stdout, on_exit=on_exit, window=window,
                          manual_ack=manual_ack, on_stdin_credit=on_stdin_credit)

    def attach(
        self,
        request_id: int,
        *,
        on_start: Callable[[Job], None] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_exit: Callable[[Job], None] | None = None,
        on_stdin_credit: Callable[[Job], None] | None = None,
        manual_ack: bool = False,
    ) -> Job:
        """Take over a command started on an earlier connection (before the snapshot this VM was restored
        from): its further STDOUT/STDERR/EXIT frames go to the returned job; ``signal`` and, when its stdin
        is still open, ``send_stdin``/``close_stdin`` work. The agent confirms the job (``on_start``,
        ``pid``); a job that ended before the snapshot's last frames reached us ends with an ``AgentError``
        (ENOENT, exit status lost). Frames are kept from the first byte only for ids given to
        ``AgentClient(attach=…)``/``restore(attach=…)``; others are routed from now on."""
        with self._routes_lock:
            held = self._held.pop(request_id, None)
        if held is not None:
            job = held
            job._claim(on_start, on_stdout, on_stderr, on_exit, on_stdin_credit, manual_ack)
        else:
            job = Job(self, request_id, on_start=on_start, on_stdout=on_stdout, on_stderr=on_stderr,
                      on_exit=on_exit, on_stdin_credit=on_stdin_credit, manual_ack=manual_ack)
            job._attaching = True
            self._register(job._deliver, request_id)
        self._post(encode_request(MsgType.ATTACH, request_id, []))
        return job

    def set_env(self, env: Mapping[str, str], timeout: float = 30.0) -> None:
        """Replace the agent's base environment, applied to every later exec under the exec's own env
        (agent defaults PATH/HOME/TERM ← base ← exec env). Kept in guest memory only (so it survives
        snapshot and restore); replaced values are zeroed. Values never appear in errors."""
        self._call(MsgType.SET_ENV, _env_fields(env, "set_env"), "set_env", timeout)

    # ---- files ----

    @staticmethod
    def _file_fields(path: str, user: str | None, *more: bytes) -> list[bytes]:
        fields = [encode_field(Tag.PATH, path), *more]
        if user:
            fields.append(encode_field(Tag.USER, user))
        return fields

    def stat(self, path: str, *, user: str | None = None, timeout: float = 60.0) -> FileStat:
        """``lstat(path)`` in the guest (as ``user``: its permissions apply). ``AgentError.errno`` tells
        ENOENT, EACCES, ENOTDIR… apart; messages name only the guest path."""
        frame = self._call(MsgType.STAT, self._file_fields(path, user), "stat", timeout, prefix=False)
        return FileStat.from_frame(frame)

    def exists(self, path: str, *, user: str | None = None) -> bool:
        """Whether ``path`` exists (a dangling symlink does); other errors (EACCES…) raise."""
        try:
            self.stat(path, user=user)
        except AgentError as e:
            if e.errno in (errno_codes.ENOENT, errno_codes.ENOTDIR):
                return False
            raise
        return True

    def list_dir(self, path: str, depth: int = 1, *, user: str | None = None, max_entries: int = 10_000,
                 timeout: float = 120.0) -> list[FileStat]:
        """Entries below the directory ``path`` (a symlink to one is followed), ``depth`` levels deep
        (1 = its children), depth first, sorted by name within each directory; symlinks below are listed,
        not followed; unreadable subdirectories are listed but not entered. More than ``max_entries``
        (at most 100 000) raise ``AgentError`` with errno E2BIG."""
        if not 1 <= depth <= 64:
            raise ValueError(f"depth must be 1..64, got {depth}")
        if not 1 <= max_entries <= MAX_LIST_ENTRIES:
            raise ValueError(f"max_entries must be 1..{MAX_LIST_ENTRIES}, got {max_entries}")
        fields = self._file_fields(path, user, encode_field(Tag.DEPTH, depth),
                                   encode_field(Tag.MAX_ENTRIES, max_entries))
        rid, q = self._new_id()
        entries: list[FileStat] = []
        try:
            self._send(encode_request(MsgType.LIST_DIR, rid, fields))
            deadline = time.monotonic() + timeout
            while True:
                frame = self._get(q, deadline, f"list_dir {path}")
                if frame.type == MsgType.ENTRIES:
                    entries += (FileStat.from_frame(decode_entry(v)) for t, v in frame.fields if t == Tag.ENTRY)
                elif frame.type == MsgType.ERROR:
                    raise error_from(frame)
                elif frame.type == MsgType.OK:
                    return entries
        finally:
            self._drop(rid)

    def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755, owner: str | None = None,
              user: str | None = None, timeout: float = 60.0) -> bool:
        """Create the directory ``path`` (with ``parents``: missing parents too, 0755, and an existing
        directory is fine); every directory created gets ``owner`` ("user[:group]") if given, the last one
        exactly ``mode``. Returns whether ``path`` itself was created."""
        self._check_mode(mode)
        more = [encode_field(Tag.MODE, mode)]
        if parents:
            more.append(encode_field(Tag.FLAGS, MKDIR_PARENTS))
        if owner:
            more.append(encode_field(Tag.OWNER, owner))
        frame = self._call(MsgType.MKDIR, self._file_fields(path, user, *more), "mkdir", timeout, prefix=False)
        return bool(frame.u32(Tag.STATUS))

    def remove(self, path: str, *, recursive: bool = False, user: str | None = None,
               timeout: float | None = 600.0) -> None:
        """Remove a file, symlink or empty directory; with ``recursive`` a whole tree (in a forked guest
        process, never following symlinks nor entering other filesystems). ``/`` is refused."""
        more = [encode_field(Tag.FLAGS, REMOVE_RECURSIVE)] if recursive else []
        self._call(MsgType.REMOVE, self._file_fields(path, user, *more), "remove", timeout, prefix=False)

    def rename(self, old: str, new: str, *, replace: bool = True, user: str | None = None,
               timeout: float = 60.0) -> None:
        """``rename(2)``, across directories; an existing ``new`` is replaced unless ``replace=False``
        (EEXIST). Across filesystems it fails with errno EXDEV."""
        more = [encode_field(Tag.NEW_PATH, new)]
        if not replace:
            more.append(encode_field(Tag.FLAGS, RENAME_NO_REPLACE))
        self._call(MsgType.RENAME, self._file_fields(old, user, *more), "rename", timeout, prefix=False)

    def chmod(self, path: str, mode: int, *, user: str | None = None, timeout: float = 60.0) -> None:
        """``chmod(path, mode)`` (follows symlinks), ``mode`` including set-id and sticky bits."""
        self._check_mode(mode)
        self._call(MsgType.CHMOD, self._file_fields(path, user, encode_field(Tag.MODE, mode)), "chmod", timeout,
                   prefix=False)

    @staticmethod
    def _check_mode(mode: int) -> None:
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"mode must be 0..0o7777, got {mode:#o}")

    def read_file_chunks(
        self,
        path: str,
        *,
        chunk: int = CHUNK,
        offset: int = 0,
        length: int | None = None,
        user: str | None = None,
        timeout: float = 60.0,
    ) -> Generator[bytes, None, None]:
        """The regular file ``path`` from ``offset`` (``length`` bytes, default: to its end) as chunks of at
        most ``chunk`` bytes (≤ 1 MiB). A few chunks are requested ahead (at most ``PIPELINE * chunk``
        bytes held), never the whole file. Raises ``AgentError`` (errno ENOENT, EACCES, EISDIR…) at the first
        ``next()``, and ESTALE if the file is replaced while it is read. Stopping early is fine."""
        if not 1 <= chunk <= CHUNK:
            raise ValueError(f"chunk must be 1..{CHUNK} bytes")
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        end = None if length is None else offset + length
        waiter: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        inflight: list[tuple[int, int]] = []  # (request id, requested bytes), in offset order
        ahead = offset
        eof = False
        inode: int | None = None
        early: dict[int, Frame] = {}  # answers that overtook the one we wait for (the agent keeps order)
        try:
            while True:
                while not eof and len(inflight) < PIPELINE and (end is None or ahead < end):
                    n = chunk if end is None else min(chunk, end - ahead)
                    rid = self._register(waiter.put)
                    inflight.append((rid, n))
                    self._send(encode_request(MsgType.READ_FILE, rid, self._file_fields(
                        path, user, encode_field(Tag.OFFSET, ahead, wide=True), encode_field(Tag.LENGTH, n))))
                    ahead += n
                if not inflight:
                    return
                rid, n = inflight[0]
                frame = early.pop(rid, None) or self._get(waiter, time.monotonic() + timeout, f"read_file {path}")
                if frame.id != rid:
                    early[frame.id] = frame
                    continue
                inflight.pop(0)
                self._drop(rid)
                if frame.type == MsgType.ERROR:
                    raise error_from(frame)
                ident = frame.u64(Tag.INO) or 0
                if inode is not None and ident != inode:
                    raise AgentError(f"read_file {path}: the file was replaced while it was read", errno_codes.ESTALE)
                inode = ident
                data = frame.get(Tag.DATA) or b""
                if data:
                    yield data
                if len(data) < n:  # end of file: answers still in flight are dropped
                    eof = True
                    for other, _ in inflight:
                        self._drop(other)
                    inflight.clear()
        finally:
            for rid, _ in inflight:
                self._drop(rid)

    def write_file_chunks(
        self,
        path: str,
        chunks: Iterable[bytes],
        *,
        mode: int | None = None,
        owner: str | None = None,
        make_parents: bool = False,
        user: str | None = None,
        atomic: bool = False,
        timeout: float = 60.0,
    ) -> int:
        """Create or replace the regular file ``path`` from ``chunks`` (any sizes; re-cut into 1 MiB frames,
        a few in flight: never the whole file in memory). The first frame creates or truncates. ``mode``
        (default: 0644 for a new file, an existing file keeps its mode) and ``owner`` ("user[:group]") are
        applied then; ``make_parents`` creates missing directories (0755). ``atomic`` writes a temporary
        file beside ``path`` and renames it over ``path`` at the end (removed on failure), keeping an
        existing file's mode. Returns the bytes written. Errors carry errno (ENOENT, EACCES, EISDIR…)."""
        if mode is not None:
            self._check_mode(mode)
        if not atomic:
            return self._write_chunks(path, chunks, mode=mode, owner=owner, make_parents=make_parents, user=user,
                                      timeout=timeout)
        if mode is None:
            try:
                mode = self.stat(path, user=user).mode
            except AgentError as e:
                if e.errno != errno_codes.ENOENT:
                    raise
        parent, name = posixpath.split(path)
        temp = posixpath.join(parent, f".{name}.amber-{secrets.token_hex(4)}.tmp")
        try:
            written = self._write_chunks(temp, chunks, mode=mode, owner=owner, make_parents=make_parents, user=user,
                                         timeout=timeout)
            self.rename(temp, path, user=user)
        except BaseException:
            with contextlib.suppress(AgentError, AgentDisconnected, AgentTimeout):
                self.remove(temp, user=user)
            raise
        return written

    def _write_chunks(self, path: str, chunks: Iterable[bytes], *, mode: int | None, owner: str | None,
                      make_parents: bool, user: str | None, timeout: float) -> int:
        waiter: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        inflight: list[int] = []
        offset = 0

        def settle(limit: int) -> None:
            while len(inflight) > limit:
                frame = self._get(waiter, time.monotonic() + timeout, f"write_file {path}")
                if frame.id not in inflight:
                    continue
                inflight.remove(frame.id)
                self._drop(frame.id)
                if frame.type == MsgType.ERROR:
                    raise error_from(frame)

        def send(data: bytes) -> None:
            nonlocal offset
            more = [encode_field(Tag.DATA, data), encode_field(Tag.OFFSET, offset, wide=True)]
            if offset == 0:
                if mode is not None:
                    more.append(encode_field(Tag.MODE, mode))
                if owner:
                    more.append(encode_field(Tag.OWNER, owner))
                if make_parents:
                    more.append(encode_field(Tag.FLAGS, WRITE_MKDIRS))
            settle(PIPELINE - 1)
            rid = self._register(waiter.put)
            inflight.append(rid)
            self._send(encode_request(MsgType.WRITE_FILE, rid, self._file_fields(path, user, *more)))
            offset += len(data)

        buf = bytearray()
        sent_any = False
        try:
            for piece in chunks:
                buf += piece
                while len(buf) >= CHUNK:
                    send(bytes(buf[:CHUNK]))
                    del buf[:CHUNK]
                    sent_any = True
            if buf or not sent_any:
                send(bytes(buf))
            settle(0)
        finally:
            for rid in inflight:
                self._drop(rid)
        return offset

    def write_file(
        self, path: str, data: bytes, *, mode: int = 0o644, owner: str | None = None, make_parents: bool = False
    ) -> None:
        """Create or replace ``path`` with ``data``, then set ``mode`` and ``owner`` ("user[:group]")."""
        view = memoryview(data)
        self._write_chunks(path, (view[i : i + CHUNK].tobytes() for i in range(0, len(view), CHUNK)), mode=mode,
                           owner=owner, make_parents=make_parents, user=None, timeout=60.0)

    def read_file(self, path: str) -> FileInfo:
        """Read a whole regular file with its mode and owner."""
        parts: list[bytes] = []
        offset = 0
        while True:
            frame = self._call(
                MsgType.READ_FILE,
                [encode_field(Tag.PATH, path), encode_field(Tag.OFFSET, offset, wide=True),
                 encode_field(Tag.LENGTH, CHUNK)],
                f"read_file {path}",
            )
            data = frame.get(Tag.DATA) or b""
            parts.append(data)
            offset += len(data)
            size = frame.u64(Tag.SIZE) or 0
            if not data or offset >= size:
                return FileInfo(b"".join(parts), frame.u32(Tag.MODE) or 0, frame.u32(Tag.UID) or 0,
                                frame.u32(Tag.GID) or 0)

    # ---- probes, sync, signals, post-restore ----

    def tcp_probe(self, port: int, *, host: str | None = None, timeout: float = 2.0) -> None:
        """Connect to ``host:port`` inside the guest (an IP literal; default 127.0.0.1, then ::1); raises
        ``AgentError`` when nothing listens."""
        fields = [encode_field(Tag.PORT, port), encode_field(Tag.TIMEOUT_MS, int(timeout * 1000))]
        if host:
            fields.append(encode_field(Tag.HOST, host))
        self._call(MsgType.TCP_PROBE, fields, f"tcp probe {host or 'localhost'}:{port}", timeout + 30)

    def http_probe(self, port: int, path: str = "/", *, timeout: float = 2.0) -> int:
        """GET ``http://localhost:port/path`` inside the guest (127.0.0.1, then ::1); returns the status code."""
        frame = self._call(MsgType.HTTP_PROBE, [encode_field(Tag.PORT, port), encode_field(Tag.PATH, path),
                                                encode_field(Tag.TIMEOUT_MS, int(timeout * 1000))],
                           f"http probe :{port}{path}", timeout + 30)
        return frame.u32(Tag.STATUS) or 0

    def sync(self, mode: SyncMode = SyncMode.SYNC) -> None:
        """``sync()`` every filesystem; FREEZE also freezes / (FIFREEZE) until THAW."""
        self._call(MsgType.SYNC, [encode_field(Tag.FLAGS, int(mode))], f"sync ({mode.name.lower()})", 300)

    def _signal(self, request_id: int, signum: int) -> None:
        # Fire and forget: the agent answers only a malformed request; the exec sees the command's end.
        self._send(encode_request(MsgType.SIGNAL, request_id, [encode_field(Tag.SIGNAL, check_signal(signum))]))

    def post_restore(
        self,
        *,
        boot_id: str,
        hostname: str | None = None,
        timeout: float = 60.0,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        """Set the guest clock to the host's, reseed its RNG with host entropy and give it a new boot_id.

        Doubles as the first contact after a restore (the agent never closed its port, so nothing sent
        after ``cont`` is lost); re-sent after a second without an answer, which is harmless: the clock is
        taken at each send and the boot_id is the same. Also resets every job's output window.
        """

        def fields() -> list[bytes]:
            out = [encode_field(Tag.CLOCK_NS, time.time_ns(), wide=True),
                   encode_field(Tag.ENTROPY, os.urandom(256)), encode_field(Tag.BOOT_ID, boot_id)]
            if hostname:
                out.append(encode_field(Tag.HOSTNAME, hostname))
            return out

        self._first_answer(MsgType.POST_RESTORE, fields, "post-restore", timeout, alive, 1.0)


class _Quiesced(contextlib.AbstractContextManager[None]):
    def __init__(self, client: AgentClient) -> None:
        self._client = client

    def __enter__(self) -> None:
        client = self._client
        client._send_lock.acquire()
        try:
            rid, q = client._new_id()
            try:
                client._sock.sendall(encode_request(MsgType.PING, rid, []))
                client._get(q, time.monotonic() + 30, "quiesce")
            finally:
                client._drop(rid)
        except BaseException:
            client._send_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self._client._send_lock.release()

