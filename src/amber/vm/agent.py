"""Client for the guest agent over the virtio-serial unix socket.

Thread-safe: any number of threads may run requests at once (the agent runs up to 64 jobs concurrently);
one reader thread routes reply frames to their request by id. Request ids start at a random value so a
restored VM's leftover frames for the template's requests are never mistaken for ours (they are dropped).
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from amber.vm.errors import AgentDisconnected, AgentError, AgentTimeout
from amber.vm.protocol import (
    CHUNK,
    WRITE_MKDIRS,
    Frame,
    FrameDecoder,
    MsgType,
    ProtocolError,
    SyncMode,
    Tag,
    encode_field,
    encode_frame,
    encode_request,
)

OutputCallback = Callable[[bytes], None]
_CLOSED: Final = None  # queued to every waiter when the connection ends


@dataclass(frozen=True)
class ExecResult:
    """How a command ended. ``exit_code`` is None when it was killed by ``signal``."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout: bytes
    stderr: bytes
    pid: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class RunningExec:
    """A command that has started (given to ``exec``'s ``on_start``): its guest pid, and a way to signal it."""

    pid: int
    request_id: int
    _client: AgentClient

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's whole process group (no effect once it has ended)."""
        self._client._signal(self.request_id, signum)


@dataclass(frozen=True)
class FileInfo:
    data: bytes
    mode: int
    uid: int
    gid: int


class AgentClient:
    """One connection to one VM's agent. ``close()`` is idempotent; in-flight calls then raise."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self._id_lock = threading.Lock()
        self._next_id = secrets.randbelow(1 << 30) + (1 << 20)
        self._waiters: dict[int, queue.SimpleQueue[Frame | None]] = {}
        self._waiters_lock = threading.Lock()
        self._closed = False
        self.error: str | None = None
        self._reader = threading.Thread(target=self._read_loop, name="amber-agent-reader", daemon=True)
        self._reader.start()

    # ---- plumbing ----

    def _new_id(self) -> tuple[int, queue.SimpleQueue[Frame | None]]:
        q: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        with self._id_lock:
            self._next_id = (self._next_id % 0x7FFFFFFF) + 1
            rid = self._next_id
        with self._waiters_lock:
            if self._closed:
                raise AgentDisconnected(f"agent connection is closed ({self.error or 'closed by the host'})")
            self._waiters[rid] = q
        return rid, q

    def _drop(self, rid: int) -> None:
        with self._waiters_lock:
            self._waiters.pop(rid, None)

    def _send(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as e:
            raise AgentDisconnected(f"agent connection lost while sending: {e}") from None

    def _read_loop(self) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                data = self._sock.recv(1 << 20)
                if not data:
                    self.error = "the VM closed the agent connection"
                    break
                for frame in decoder.feed(data):
                    with self._waiters_lock:
                        q = self._waiters.get(frame.id)
                    if q is not None:
                        q.put(frame)
        except ProtocolError as e:
            self.error = f"agent protocol error: {e}"
        except OSError as e:
            self.error = self.error or f"agent connection error: {e}"
        finally:
            with self._waiters_lock:
                self._closed = True
                waiters = list(self._waiters.values())
            for q in waiters:
                q.put(_CLOSED)

    @staticmethod
    def _get(q: queue.SimpleQueue[Frame | None], deadline: float | None, what: str) -> Frame:
        try:
            frame = q.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AgentTimeout(f"{what}: no answer from the guest agent in time") from None
        if frame is None:
            raise AgentDisconnected(f"{what}: the agent connection closed")
        return frame

    def _call(self, type_: MsgType, fields: Sequence[bytes], what: str, timeout: float | None = 60.0) -> Frame:
        rid, q = self._new_id()
        try:
            self._send(encode_request(type_, rid, fields))
            deadline = None if timeout is None else time.monotonic() + timeout
            frame = self._get(q, deadline, what)
            if frame.type == MsgType.ERROR:
                raise AgentError(f"{what}: {frame.text(Tag.MESSAGE)}", frame.u32(Tag.ERRNO) or 0)
            return frame
        finally:
            self._drop(rid)

    def close(self) -> None:
        """Close the connection; waiting requests raise ``AgentDisconnected``. Idempotent."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)

    # ---- requests ----

    def ping(self, timeout: float = 5.0) -> str:
        """Round trip to the agent; returns its version string."""
        return self._call(MsgType.PING, [], "ping", timeout).text(Tag.VERSION) or ""

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
                with self._id_lock:
                    self._next_id = (self._next_id % 0x7FFFFFFF) + 1
                    rid = self._next_id
                with self._waiters_lock:
                    if self._closed:
                        raise AgentDisconnected(f"{what}: agent connection closed ({self.error})")
                    self._waiters[rid] = waiter
                ids.append(rid)
                self._send(encode_request(type_, rid, fields()))
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
                    raise AgentError(f"{what}: {frame.text(Tag.MESSAGE)}", frame.u32(Tag.ERRNO) or 0)
                return frame
        finally:
            for rid in ids:
                self._drop(rid)

    def wait_ready(self, timeout: float, alive: Callable[[], bool] = lambda: True, interval: float = 0.02) -> str:
        """Ping until the agent answers. Pings sent before the guest opens its port are discarded by the
        guest kernel, so they are repeated every ``interval`` seconds."""
        return self._first_answer(MsgType.PING, list, "boot", timeout, alive, interval).text(Tag.VERSION) or ""

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
        """Run ``argv`` (or ``shell`` through /bin/sh -c) and wait for it to end.

        Output is streamed to ``on_stdout``/``on_stderr`` as the guest produces it, or collected into the
        result when no callback is given. ``user`` is "name", "uid", "name:group" or "uid:gid", resolved
        from the guest's /etc/passwd and /etc/group (default root); ``env`` adds to PATH/HOME/TERM
        defaults; ``cwd`` defaults to /. ``timeout`` (seconds) makes the agent SIGKILL the command's whole
        process group, reported as ``timed_out``. Spawn failures (unknown user, missing cwd or command)
        raise ``AgentError``; a non-zero exit does not raise. ``on_start`` receives a ``RunningExec`` that
        can signal the command (cancellation) while this call waits.
        """
        if (argv is None) == (shell is None):
            raise ValueError("exec needs exactly one of argv or shell")
        fields: list[bytes] = []
        if argv is not None:
            if not argv:
                raise ValueError("exec argv must not be empty")
            fields += [encode_field(Tag.ARGV, a) for a in argv]
        if shell is not None:
            fields.append(encode_field(Tag.SHELL, shell))
        for k, v in (env or {}).items():
            if not k or "=" in k:
                raise ValueError(f"exec env: invalid variable name {k!r}")
            fields.append(encode_field(Tag.ENV, f"{k}={v}"))
        if cwd:
            fields.append(encode_field(Tag.CWD, cwd))
        if user:
            fields.append(encode_field(Tag.USER, user))
        if timeout is not None:
            fields.append(encode_field(Tag.TIMEOUT_MS, max(1, int(timeout * 1000))))
        rest = b""
        if stdin is not None:
            first, rest = stdin[:CHUNK], stdin[CHUNK:]
            fields.append(encode_field(Tag.STDIN, first))
            if rest:
                fields.append(encode_field(Tag.STDIN_OPEN, True))
        out: list[bytes] = []
        err: list[bytes] = []
        write_out = on_stdout or out.append
        write_err = on_stderr or err.append
        rid, q = self._new_id()
        try:
            self._send(encode_request(MsgType.EXEC, rid, fields))
            # The agent's timeout kills the command; ours only guards against a wedged guest.
            deadline = None if timeout is None else time.monotonic() + timeout + 60.0
            pid = 0
            while True:
                frame = self._get(q, deadline, "exec")
                if frame.type == MsgType.STARTED:
                    pid = frame.u32(Tag.PID) or 0
                    if on_start:
                        on_start(RunningExec(pid, rid, self))
                    if rest:
                        for i in range(0, len(rest), CHUNK):
                            self._send(encode_frame(MsgType.STDIN, rid, rest[i : i + CHUNK]))
                        self._send(encode_frame(MsgType.STDIN, rid, b""))
                elif frame.type == MsgType.STDOUT:
                    write_out(frame.payload)
                elif frame.type == MsgType.STDERR:
                    write_err(frame.payload)
                elif frame.type == MsgType.ERROR:
                    raise AgentError(frame.text(Tag.MESSAGE) or "exec failed", frame.u32(Tag.ERRNO) or 0)
                elif frame.type == MsgType.EXIT:
                    return ExecResult(
                        exit_code=frame.u32(Tag.EXIT_CODE),
                        signal=frame.u32(Tag.SIGNAL),
                        timed_out=frame.has(Tag.TIMED_OUT),
                        stdout=b"".join(out),
                        stderr=b"".join(err),
                        pid=pid,
                    )
        finally:
            self._drop(rid)

    def write_file(
        self, path: str, data: bytes, *, mode: int = 0o644, owner: str | None = None, make_parents: bool = False
    ) -> None:
        """Create or replace ``path`` with ``data``, then set ``mode`` and ``owner`` ("user[:group]")."""
        offset = 0
        while True:
            chunk = data[offset : offset + CHUNK]
            fields = [encode_field(Tag.PATH, path), encode_field(Tag.DATA, chunk), encode_field(Tag.MODE, mode),
                      encode_field(Tag.OFFSET, offset, wide=True)]
            if owner:
                fields.append(encode_field(Tag.OWNER, owner))
            if make_parents:
                fields.append(encode_field(Tag.FLAGS, WRITE_MKDIRS))
            self._call(MsgType.WRITE_FILE, fields, f"write_file {path}")
            offset += len(chunk)
            if offset >= len(data):
                return

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
        self._send(encode_request(MsgType.SIGNAL, request_id, [encode_field(Tag.SIGNAL, signum)]))

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
        taken at each send and the boot_id is the same.
        """

        def fields() -> list[bytes]:
            out = [encode_field(Tag.CLOCK_NS, time.time_ns(), wide=True),
                   encode_field(Tag.ENTROPY, os.urandom(256)), encode_field(Tag.BOOT_ID, boot_id)]
            if hostname:
                out.append(encode_field(Tag.HOSTNAME, hostname))
            return out

        self._first_answer(MsgType.POST_RESTORE, fields, "post-restore", timeout, alive, 1.0)
