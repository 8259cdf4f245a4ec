"""A long-lived command in the guest, driven by the agent connection's reader thread (see ``agent.py``).

Flow control, both directions: the guest sends a job's output only while less than its ``window`` is
unacknowledged (``ACK`` frames, sent as callbacks or the consumer take the output), and at most
``STDIN_WINDOW`` bytes of stdin are in flight (``STDIN_ACK`` frames credit them back).
"""

from __future__ import annotations

import errno as errno_codes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from amber.vm.errors import AgentDisconnected, AgentError, AgentTimeout
from amber.vm.protocol import Frame, MsgType, Tag, encode_field, encode_frame, encode_request

if TYPE_CHECKING:
    from amber.vm.agent import AgentClient

log = logging.getLogger(__name__)

OutputCallback = Callable[[bytes], None]
MAX_ID: Final = 0x7FFFFFFF  # request ids are 1..MAX_ID
DEFAULT_WINDOW: Final = 1 << 20  # bytes of a job's output the guest sends before the host acknowledges
STDIN_WINDOW: Final = 2 << 20  # bytes of stdin in flight per job (the guest buffers at most this)
STDIN_FRAME: Final = 256 << 10  # stdin is sent in frames of at most this size


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


def error_from(frame: Frame, what: str | None = None) -> AgentError:
    message = frame.text(Tag.MESSAGE) or "the agent refused the request"
    return AgentError(f"{what}: {message}" if what else message, frame.u32(Tag.ERRNO) or 0)


def check_signal(signum: int) -> int:
    if not 1 <= int(signum) <= 64:
        raise ValueError(f"signal number must be 1..64, got {signum}")
    return int(signum)


class Job:
    """A command in the guest whose frames the reader thread delivers (see the module docstring).

    Made by ``AgentClient.start``/``relay``/``attach``. ``pid`` is known once the command started (or the
    attach was confirmed). Without ``on_stdout``/``on_stderr`` the output is collected into ``wait()``'s
    result (and acknowledged at once); with them every chunk goes to the callback and is acknowledged when
    it returns — unless the job was made with ``manual_ack``, then the consumer calls ``consumed(n)``.
    A callback that raises is logged and re-raised by ``wait()``; delivery goes on.
    """

    def __init__(
        self,
        client: AgentClient,
        request_id: int,
        *,
        on_start: Callable[[Job], None] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_exit: Callable[[Job], None] | None = None,
        on_stdin_credit: Callable[[Job], None] | None = None,
        window: int | None = None,
        manual_ack: bool = False,
        stdin_open: bool = False,
    ) -> None:
        self.request_id = request_id
        self.pid: int | None = None
        self.result: ExecResult | None = None
        self.error: BaseException | None = None  # spawn failure, lost connection or job lost before attach
        self.errors: list[AgentError] = []  # refusals of stdin/signal frames after the start (races with exit)
        self._client = client
        self._lock = threading.RLock()
        self._credit = threading.Condition(self._lock)
        self._stdin_lock = threading.Lock()
        self._started = threading.Event()
        self._done = threading.Event()
        self._settled = threading.Event()  # started or done, whichever comes first
        self._on_start, self._on_exit, self._on_stdin_credit = on_start, on_exit, on_stdin_credit
        self._on_stdout, self._on_stderr = on_stdout, on_stderr
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._callback_error: BaseException | None = None
        self._window = window
        self._manual_ack = manual_ack
        self._unreported = 0
        self._stdin_open = stdin_open  # the guest holds our stdin pipe open
        self._stdin_closing = False  # close once ``_pending`` is sent
        self._stdin_sent = 0
        self._stdin_acked = 0
        self._pending = memoryview(b"")
        self._attaching = False
        self._held: list[Frame] | None = None  # frames kept for a job pre-registered by AgentClient(attach=)
        self._done_callbacks: list[Callable[[Job], None]] = []

    def __repr__(self) -> str:
        state = "done" if self._done.is_set() else "running" if self._started.is_set() else "starting"
        return f"<Job {self.request_id} pid={self.pid} {state}>"

    # ---- state ----

    @property
    def started(self) -> bool:
        return self._started.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def stdin_open(self) -> bool:
        """Whether ``send_stdin`` may still be used."""
        with self._lock:
            return self._stdin_open and not self._stdin_closing and not self._done.is_set()

    def wait_started(self, timeout: float | None = None) -> int:
        """Block until the command runs (its pid) or failed to start (raises its ``AgentError``)."""
        if not self._settled.wait(timeout):
            raise AgentTimeout(f"job {self.request_id}: not started within {timeout}s")
        if self.pid is None:
            self._raise()
        return self.pid or 0

    def wait(self, timeout: float | None = None) -> ExecResult:
        """Block until the command ended; its result (output only if it was collected). Raises the job's
        error (spawn failure, lost connection, lost before attach) or a callback's exception."""
        if not self._done.wait(timeout):
            raise AgentTimeout(f"job {self.request_id}: still running after {timeout}s")
        self._raise()
        assert self.result is not None
        return self.result

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
        if self._callback_error is not None:
            raise self._callback_error

    def add_done_callback(self, fn: Callable[[Job], None]) -> None:
        """Call ``fn(job)`` when the job ends (at once if it has); from the reader thread otherwise."""
        with self._lock:
            if not self._done.is_set():
                self._done_callbacks.append(fn)
                return
        fn(self)

    # ---- host → guest ----

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process group (ignored by the guest once it has ended)."""
        self._client._post(encode_request(MsgType.SIGNAL, self.request_id,
                                          [encode_field(Tag.SIGNAL, check_signal(signum))]))

    def offer_stdin(self, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as the stdin credit allows for sending; never blocks (the connection's
        writer thread sends it). Returns the number of bytes taken; ``ValueError`` when stdin is not open."""
        view = memoryview(data).cast("B")
        with self._stdin_lock:
            with self._lock:
                if not self._stdin_open or self._stdin_closing or self._done.is_set():
                    raise ValueError(f"job {self.request_id}: stdin is not open")
                if self._pending:
                    return 0  # the job's own initial stdin goes first
                take = min(len(view), STDIN_WINDOW - (self._stdin_sent - self._stdin_acked))
                if take <= 0:
                    return 0
                self._stdin_sent += take
            for i in range(0, take, STDIN_FRAME):
                piece = bytes(view[i : min(take, i + STDIN_FRAME)])
                self._client._post(encode_frame(MsgType.STDIN, self.request_id, piece))
            return take

    def send_stdin(self, data: bytes, timeout: float | None = None) -> None:
        """Send all of ``data`` to the command's stdin, waiting for credit as the command reads. Not from a
        callback (the reader thread delivers the credit): use ``offer_stdin`` there."""
        if threading.current_thread() is self._client._reader:
            raise RuntimeError("send_stdin would block the agent reader thread: use offer_stdin in callbacks")
        view = memoryview(data).cast("B")
        deadline = None if timeout is None else time.monotonic() + timeout
        while view:
            taken = self.offer_stdin(view)
            view = view[taken:]
            if not view:
                return
            with self._credit:
                while not self._done.is_set() and (
                        self._pending or self._stdin_sent - self._stdin_acked >= STDIN_WINDOW):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise AgentTimeout(f"job {self.request_id}: stdin not consumed within {timeout}s")
                    self._credit.wait(left)

    def close_stdin(self) -> None:
        """End of input for the command (after any stdin still pending). Idempotent."""
        with self._stdin_lock:
            with self._lock:
                if not self._stdin_open or self._stdin_closing or self._done.is_set():
                    return
                self._stdin_closing = True
                if self._pending:
                    return  # sent after the pending bytes
            self._client._post(encode_frame(MsgType.STDIN, self.request_id, b""))

    def consumed(self, n: int) -> None:
        """The consumer has taken ``n`` output bytes (``manual_ack`` jobs); acknowledges them in batches."""
        with self._lock:
            if self._window is None or self._done.is_set():
                return
            self._unreported += n
            if self._unreported < max(1, self._window // 4):
                return
            n, self._unreported = self._unreported, 0
        self._client._post(encode_request(MsgType.ACK, self.request_id, [encode_field(Tag.LENGTH, min(n, MAX_ID))]))

    def _pump_pending(self) -> None:
        """Send the initial stdin beyond the EXEC frame as credit arrives (from any thread, never blocks)."""
        with self._stdin_lock:
            with self._lock:
                if self._done.is_set() or not self._pending:
                    return
                take = min(len(self._pending), STDIN_WINDOW - (self._stdin_sent - self._stdin_acked))
                if take <= 0:
                    return
                chunk, self._pending = self._pending[:take], self._pending[take:]
                self._stdin_sent += take
                close = not self._pending and self._stdin_closing
            for i in range(0, take, STDIN_FRAME):
                self._client._post(encode_frame(MsgType.STDIN, self.request_id, bytes(chunk[i : i + STDIN_FRAME])))
            if close:
                self._client._post(encode_frame(MsgType.STDIN, self.request_id, b""))

    # ---- guest → host (reader thread) ----

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception as e:  # a consumer bug must not stop the reader
            log.exception("agent job %d: callback %r failed", self.request_id, fn)
            if self._callback_error is None:
                self._callback_error = e

    def _deliver(self, frame: Frame | None) -> None:
        pump = False
        with self._lock:
            if self._held is not None:
                if frame is None:
                    self._finish(None, AgentDisconnected(f"job {self.request_id}: the agent connection closed"))
                else:
                    self._held.append(frame)
                return
            if self._done.is_set():
                return
            if frame is None:
                self._finish(None, AgentDisconnected(f"job {self.request_id}: the agent connection closed "
                                                     f"({self._client.error or 'closed by the host'})"))
                return
            t = frame.type
            if t == MsgType.STARTED or (t == MsgType.OK and self._attaching):
                self.pid = frame.u32(Tag.PID) or 0
                if t == MsgType.OK:
                    self._attaching = False
                    self._stdin_open = frame.has(Tag.STDIN_OPEN)
                    self._window = frame.u32(Tag.WINDOW) or None  # the guest reset its count at ATTACH
                self._started.set()
                self._settled.set()
                pump = bool(self._pending)
                if self._on_start:
                    self._call(self._on_start, self)
            elif t in (MsgType.STDOUT, MsgType.STDERR):
                callback = self._on_stdout if t == MsgType.STDOUT else self._on_stderr
                if callback is None:
                    (self._out if t == MsgType.STDOUT else self._err).append(frame.payload)
                else:
                    self._call(callback, frame.payload)
                if callback is None or not self._manual_ack:
                    self.consumed(len(frame.payload))
            elif t == MsgType.STDIN_ACK:
                self._stdin_acked += frame.u32(Tag.LENGTH) or 0
                self._credit.notify_all()
                pump = bool(self._pending)
                if self._on_stdin_credit:
                    self._call(self._on_stdin_credit, self)
            elif t == MsgType.EXIT:
                self._finish(ExecResult(exit_code=frame.u32(Tag.EXIT_CODE), signal=frame.u32(Tag.SIGNAL),
                                        timed_out=frame.has(Tag.TIMED_OUT), stdout=b"".join(self._out),
                                        stderr=b"".join(self._err), pid=self.pid or 0), None)
            elif t == MsgType.ERROR:
                error = error_from(frame)
                if not self._started.is_set():  # spawn failure, or the job ended before we attached
                    if self._attaching and error.errno == errno_codes.ENOENT:
                        error = AgentError(f"job {self.request_id} ended before it was attached; its exit "
                                           f"status is lost ({error})", errno_codes.ENOENT)
                    self._finish(None, error)
                else:
                    self.errors.append(error)
        if pump:
            self._pump_pending()

    def _finish(self, result: ExecResult | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self._pending = memoryview(b"")
        self._done.set()
        self._settled.set()
        self._credit.notify_all()
        self._client._drop(self.request_id)
        if self._on_exit:
            self._call(self._on_exit, self)
        for fn in self._done_callbacks:
            self._call(fn, self)
        self._done_callbacks.clear()

    def _claim(
        self,
        on_start: Callable[[Job], None] | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        on_exit: Callable[[Job], None] | None,
        on_stdin_credit: Callable[[Job], None] | None,
        manual_ack: bool,
    ) -> None:
        """Take over a pre-registered job: set the callbacks, then replay what arrived meanwhile in order."""
        with self._lock:
            self._on_start, self._on_stdout, self._on_stderr = on_start, on_stdout, on_stderr
            self._on_exit, self._on_stdin_credit, self._manual_ack = on_exit, on_stdin_credit, manual_ack
            self._attaching = True
            held, self._held = self._held or [], None
            for frame in held:
                self._deliver(frame)
