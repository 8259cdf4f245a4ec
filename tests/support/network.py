"""Listeners that count who reaches them, for the network isolation tests.

- ``HostListener``: TCP on every host address (``0.0.0.0`` and ``::``), one port; what a guest must never
  reach (the host's loopback through slirp's 10.0.2.2, and every address of every interface).
- ``OutsideWorld``: a network namespace the test creates, joined to the host by a veth pair (198.18.N.0/30,
  the benchmarking range), with TCP and UDP listeners inside (TCP answers ``outside-world``, as an HTTP
  response to a GET); the "outside world" a guest with internet may
  reach and a guest without internet must never send a packet to. The host's end of the veth is one more
  host address.

Both record every connection or datagram; tests assert the counts. Cleanup kills only the processes they
started (by pid) and deletes their namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_LISTENER = r"""
import socket, sys, threading
port, log = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
def note(kind, peer):
    with lock, open(log, "a") as f:
        f.write(f"{kind} {peer[0]}\n")
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); tcp.bind(("0.0.0.0", port))
tcp.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", port))
def serve_udp():
    while True:
        data, peer = udp.recvfrom(65536)
        note("udp", peer)
threading.Thread(target=serve_udp, daemon=True).start()
print("ready", flush=True)
def serve(conn, peer):
    note("tcp", peer)
    conn.settimeout(0.5)
    request = b""
    try:
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
    except OSError:
        pass
    try:
        body = b"outside-world\n"
        if request.startswith(b"GET "):
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nLast-Modified: Sat, 01 Jan 2022 00:00:00 GMT"
                         b"\r\n\r\n" % len(body) + body)
        else:
            conn.sendall(body)
    finally:
        conn.close()
while True:
    conn, peer = tcp.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
"""


def host_addresses() -> list[str]:
    """Every address of every host interface (IPv4 and IPv6, link-local excluded: they need a scope)."""
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    found = []
    for link in json.loads(out):
        for info in link.get("addr_info", []):
            if info.get("scope") == "link":
                continue
            found.append(str(info["local"]))
    return found


@dataclass
class HostListener:
    """TCP and UDP listeners on every host address, one port; ``connections`` lists the peers of every
    accepted connection and received datagram (``"tcp <peer>"``/``"udp <peer>"``). A guest's neighbours exist
    on the host only as such sockets (their slirp's sockets, on host addresses), so this stands for them too."""

    port: int = 0
    connections: list[str] = field(default_factory=list)
    _socks: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> HostListener:
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # one socket: every v4 and v6 address
        v6.bind(("::", 0))
        v6.listen(64)
        v6.settimeout(0.2)
        self.port = v6.getsockname()[1]
        self._socks.append(v6)
        threading.Thread(target=self._serve, args=(v6,), daemon=True).start()
        u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        u6.bind(("::", self.port))
        u6.settimeout(0.2)
        self._socks.append(u6)
        threading.Thread(target=self._serve_udp, args=(u6,), daemon=True).start()
        return self

    def _serve_udp(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                _, peer = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(f"udp {peer[0]}")

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(f"tcp {peer[0]}")
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\nhost-listener\n")
            conn.close()

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for sock in self._socks:
            sock.close()


@dataclass
class OutsideWorld:
    """A network namespace standing for the internet (see the module docstring)."""

    work: Path
    name: str = ""
    address: str = ""
    host_side: str = ""
    port: int = 0
    _pid: int = 0
    _log: Path = Path()

    def __enter__(self) -> OutsideWorld:
        token = secrets.token_hex(3)
        self.name = f"amber-test-{token}"
        subnet = secrets.randbelow(250) + 2
        self.host_side, self.address = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
        outer = f"amt{token}"
        self._log = self.work / f"{self.name}.log"
        self._log.touch()
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", self.name)
            _ip("addr", "add", f"{self.host_side}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", "eth0")
            _ip("-n", self.name, "link", "set", "eth0", "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "route", "add", "default", "via", self.host_side)
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
            probe.close()
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, sys.executable, "-I", "-c", _LISTENER, str(self.port),
                 str(self._log)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
            self._pid = proc.pid
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                said = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"the outside listener did not start: {said}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def events(self) -> list[str]:
        """``"tcp <peer>"`` / ``"udp <peer>"`` lines, one per connection or datagram received."""
        return self._log.read_text().splitlines()

    def wait_events(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.events()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events()

    def __exit__(self, *_: object) -> None:
        if self._pid:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
        if self.name:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)
