"""The dockerd that Amber starts, health-checks, restarts and stops itself (BuildKit lives inside it).

Guarantees: the daemon runs with its own data root, exec root, config file, unix socket and pidfile under
``<base_dir>``, without a bridge or iptables rules (every build must use network mode ``none`` or ``host``),
and with overlay2. Amber talks to it only through the Engine API on that socket, never through whatever
``docker`` is first on PATH. ``stop()`` ends exactly the process Amber started (by PID), nothing else.
Limits: one daemon per base directory; callers in one process share it through ``managed_dockerd()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

DOCKERD = Path("/usr/sbin/dockerd")
ENGINE_API_VERSION = "v1.41"  # dockerd 20.10; newer daemons accept it too
_DAEMON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # containerd, runc, docker-init from Debian; never /usr/local/bin
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0


class DockerdError(RuntimeError):
    """The managed dockerd is missing, failed to start, or stopped answering."""


@dataclass(frozen=True)
class DockerdLayout:
    """Where one managed dockerd keeps its files."""

    base_dir: Path

    @property
    def data_root(self) -> Path:
        return self.base_dir / "data"

    @property
    def exec_root(self) -> Path:
        # Short and outside the data dir: containerd's socket lives below it and unix paths max out at 108 bytes.
        digest = hashlib.sha256(str(self.base_dir.resolve()).encode()).hexdigest()[:12]
        return Path("/run/amber") / f"dockerd-{digest}"

    @property
    def socket(self) -> Path:
        return self.base_dir / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.base_dir / "dockerd.pid"

    @property
    def config_file(self) -> Path:
        return self.base_dir / "daemon.json"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "dockerd.log"


def dockerd_command(layout: DockerdLayout, *, dockerd: Path = DOCKERD, storage_driver: str = "overlay2") -> list[str]:
    """The exact dockerd command line Amber runs (pure)."""
    return [
        str(dockerd),
        f"--config-file={layout.config_file}",  # never the host's /etc/docker/daemon.json
        f"--data-root={layout.data_root}",
        f"--exec-root={layout.exec_root}",
        f"--pidfile={layout.pidfile}",
        f"--host=unix://{layout.socket}",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        f"--storage-driver={storage_driver}",
    ]


class ManagedDockerd:
    """One dockerd process owned by Amber. Methods are safe to call from several tasks of one event loop."""

    def __init__(self, base_dir: Path, *, dockerd: Path = DOCKERD, storage_driver: str = "overlay2") -> None:
        self.layout = DockerdLayout(base_dir)
        self.dockerd = dockerd
        self.storage_driver = storage_driver
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def client(self, *, timeout: float | None = 30.0) -> httpx.AsyncClient:
        """An Engine API client bound to this daemon's socket (caller closes it)."""
        transport = httpx.AsyncHTTPTransport(uds=str(self.layout.socket))
        return httpx.AsyncClient(transport=transport, base_url=f"http://docker/{ENGINE_API_VERSION}", timeout=timeout)

    async def healthy(self) -> bool:
        """True when the daemon answers ``GET /_ping`` on its socket."""
        if not self.layout.socket.exists():
            return False
        try:
            async with self.client(timeout=3.0) as api:
                response = await api.get("/_ping")
            return response.status_code == 200 and response.text == "OK"
        except httpx.HTTPError:
            return False

    async def ensure_running(self) -> None:
        """Start the daemon if it is not running, or restart it if it died or stopped answering."""
        async with self._lock:
            if self.pid is not None and await self.healthy():
                return
            if self._process is not None:
                self.restarts += 1
                await asyncio.to_thread(self._terminate)
            await asyncio.to_thread(self._stop_stale_from_pidfile)
            await self._start()

    async def stop(self) -> None:
        """Stop the daemon Amber started (SIGTERM, then SIGKILL after a grace period)."""
        async with self._lock:
            await asyncio.to_thread(self._terminate)

    async def supervise(self, interval_s: float = 5.0) -> None:
        """Health-check forever, restarting the daemon when it dies (run as a background task)."""
        while True:
            await self.ensure_running()
            await asyncio.sleep(interval_s)

    async def _start(self) -> None:
        if not self.dockerd.exists():
            raise DockerdError(f"dockerd not found at {self.dockerd} (install the Debian package docker.io)")
        for directory in (self.layout.base_dir, self.layout.data_root, self.layout.exec_root):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.layout.base_dir, 0o700)
        self.layout.config_file.write_text(json.dumps({}) + "\n")
        with contextlib.suppress(FileNotFoundError):
            self.layout.socket.unlink()
        log = open(self.layout.log_file, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            self._process = subprocess.Popen(
                dockerd_command(self.layout, dockerd=self.dockerd, storage_driver=self.storage_driver),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": _DAEMON_PATH, "HOME": str(self.layout.base_dir)},
                start_new_session=True,  # a Ctrl-C to Amber must not kill builds mid-way; we stop it ourselves
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DockerdError(f"dockerd exited with status {self._process.returncode}: {self._log_tail()}")
            if await self.healthy():
                return
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self._terminate)
        raise DockerdError(f"dockerd did not answer on {self.layout.socket} within {_START_TIMEOUT_S:.0f} s")

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT_S)

    def _stop_stale_from_pidfile(self) -> None:
        """A dockerd left by an earlier Amber process on the same data root is stopped before starting anew."""
        try:
            pid = int(self.layout.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return
        if f"--data-root={self.layout.data_root}".encode() not in cmdline:
            return  # the PID was reused by something that is not ours
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.layout.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


_DAEMONS: dict[Path, ManagedDockerd] = {}


def managed_dockerd(data_dir: Path) -> ManagedDockerd:
    """The process-wide daemon for an Amber data directory (``<data_dir>/dockerd``); not started yet."""
    base = (data_dir / "dockerd").resolve()
    if base not in _DAEMONS:
        _DAEMONS[base] = ManagedDockerd(base)
    return _DAEMONS[base]
