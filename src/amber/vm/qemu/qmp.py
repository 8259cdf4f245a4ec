"""A minimal synchronous QMP client (QEMU's JSON monitor over a unix socket).

Hand-written (60 lines) instead of ``qemu.qmp``: that library's sync shim binds an asyncio loop to the
thread that created it and cannot run inside an already running event loop, while the driver is called
from worker threads and from async service code alike.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

from amber.vm.errors import VMError


class QMPError(VMError):
    """QEMU rejected a QMP command, or the monitor connection failed."""


class QMPClient:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError(f"unexpected QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    @classmethod
    def connect(cls, path: str, timeout: float = 10.0) -> QMPClient:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(60)
            try:
                sock.connect(path)
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"QMP socket {path} did not appear within {timeout:.0f}s") from None
                time.sleep(0.005)

    def _read(self) -> dict[str, Any]:
        try:
            line = self._file.readline()
        except OSError as e:
            raise QMPError(f"QMP connection failed: {e}") from None
        if not line:
            raise QMPError("QEMU closed the QMP connection")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one command and return its ``return`` value; raise ``QMPError`` with QEMU's message."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        with self._lock:
            try:
                self._sock.sendall(json.dumps(request).encode() + b"\n")
            except OSError as e:
                raise QMPError(f"QMP {command}: {e}") from None
            while True:
                msg = self._read()
                if "event" in msg:
                    self.events.append(msg)
                    continue
                if "error" in msg:
                    raise QMPError(f"QMP {command}: {msg['error'].get('desc', msg['error'])}")
                return msg.get("return")

    def close(self) -> None:
        try:
            self._file.close()
            self._sock.close()
        except OSError:
            pass
