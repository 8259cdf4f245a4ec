"""The process table of one machine: background commands, their cumulative logs and their live listeners.

Guarantees (machines-api.md M8, M9):
- logs are cumulative from the first byte: ``stdout``, ``stderr`` and ``output`` (both interleaved, in the order
  the guest read them) only grow, and stay readable after exit with ``exit_code``;
- text is decoded as UTF-8 with invalid bytes replaced, and a multi-byte character split across chunks is held
  back until it is complete, so a later read is always an extension of an earlier one (the SDK slices by length);
- a command outlives every listener (WebSocket close never kills it);
- each stream keeps at most ``LOG_CAP`` bytes; beyond that it is truncated (``truncated`` says so).
Listeners are called from the agent's reader thread and must not block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amber.vm import ExecResult, Job

LOG_CAP = 8 << 20  # bytes per stream and for the interleaved output, per process
MAX_PROCESSES = 1024  # exited processes beyond this are forgotten, oldest first

Listener = Callable[["ProcessEvent"], None]


@dataclass(frozen=True)
class ProcessEvent:
    """``kind``: ``stdout``/``stderr`` (``data`` holds the bytes) or ``exit`` (``exit_code``)."""

    kind: str
    data: bytes = b""
    exit_code: int | None = None


def exit_code_of(result: ExecResult) -> int:
    """A shell's convention: the exit status, or 128 + the signal that killed it."""
    if result.exit_code is not None:
        return result.exit_code
    return 128 + (result.signal or 0)


def decoded_prefix(data: bytes | bytearray) -> str:
    """UTF-8 text of ``data`` up to the last complete character (invalid bytes replaced)."""
    end = len(data)
    # A character is at most 4 bytes: look back for a lead byte whose sequence is not complete yet.
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:
            break
        if byte >= 0xC0:
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < need:
                end -= back
            break
    return bytes(data[:end]).decode("utf-8", errors="replace")


def _decoded(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


@dataclass
class Process:
    """One background command of a machine. ``request_id`` is its agent request id (to attach after resume)."""

    pid: int
    command: str
    request_id: int
    running: bool = True
    exit_code: int | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    output: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    job: Job | None = field(default=None, repr=False, compare=False)  # the live agent job, while connected
    _listeners: list[Listener] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_output(self, stream: str, data: bytes) -> None:
        with self._lock:
            target = self.stdout if stream == "stdout" else self.stderr
            for buf in (target, self.output):
                room = LOG_CAP - len(buf)
                if room < len(data):
                    self.truncated = True
                buf += data[: max(0, room)]
            listeners = list(self._listeners)
        event = ProcessEvent(stream, data)
        for fn in listeners:
            fn(event)

    def finish(self, exit_code: int) -> None:
        with self._lock:
            if not self.running:
                return
            self.running = False
            self.exit_code = exit_code
            listeners, self._listeners = self._listeners, []
        event = ProcessEvent("exit", exit_code=exit_code)
        for fn in listeners:
            fn(event)

    def listen(self, fn: Listener) -> bool:
        """Add a listener for output from now on; False (nothing added) when the process already exited."""
        with self._lock:
            if not self.running:
                return False
            self._listeners.append(fn)
            return True

    def unlisten(self, fn: Listener) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def info(self) -> dict[str, Any]:
        """ProcessInfo: exactly ``pid``, ``command``, ``running`` (M3)."""
        return {"pid": self.pid, "command": self.command, "running": self.running}

    def logs(self) -> dict[str, Any]:
        """ProcessLogs: cumulative text of each stream, and ``exit_code`` once it exited."""
        with self._lock:
            text = decoded_prefix if self.running else _decoded  # once it ended, a partial character is final
            return {"stdout": text(self.stdout), "stderr": text(self.stderr), "output": text(self.output),
                    "exit_code": self.exit_code}

    def to_json(self) -> dict[str, Any]:
        """What hibernation keeps on disk (the logs are the guest's output, kept with its memory)."""
        with self._lock:
            return {"pid": self.pid, "command": self.command, "request_id": self.request_id,
                    "running": self.running, "exit_code": self.exit_code, "truncated": self.truncated,
                    "stdout": self.stdout.hex(), "stderr": self.stderr.hex(), "output": self.output.hex()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Process:
        return cls(pid=int(data["pid"]), command=str(data["command"]), request_id=int(data["request_id"]),
                   running=bool(data["running"]), exit_code=data.get("exit_code"),
                   truncated=bool(data.get("truncated")), stdout=bytearray.fromhex(data.get("stdout", "")),
                   stderr=bytearray.fromhex(data.get("stderr", "")), output=bytearray.fromhex(data.get("output", "")))


class ProcessTable:
    """pid → ``Process`` of one machine (thread-safe). A pid reused by the guest replaces the older entry."""

    def __init__(self) -> None:
        self._by_pid: dict[int, Process] = {}
        self._lock = threading.Lock()

    def add(self, process: Process) -> None:
        with self._lock:
            self._by_pid.pop(process.pid, None)
            self._by_pid[process.pid] = process
            if len(self._by_pid) > MAX_PROCESSES:
                for pid in [p.pid for p in self._by_pid.values() if not p.running][: len(self._by_pid) - MAX_PROCESSES]:
                    del self._by_pid[pid]

    def get(self, pid: int) -> Process | None:
        with self._lock:
            return self._by_pid.get(pid)

    def all(self) -> list[Process]:
        with self._lock:
            return list(self._by_pid.values())

    def running(self) -> list[Process]:
        return [p for p in self.all() if p.running]

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.all()]

    @classmethod
    def from_json(cls, items: list[dict[str, Any]]) -> ProcessTable:
        table = cls()
        for item in items:
            table.add(Process.from_json(item))
        return table
