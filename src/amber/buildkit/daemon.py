"""The dockerd that Amber starts, health-checks, restarts and stops itself (BuildKit lives inside it).

Guarantees: the daemon runs with its own data root, exec root, config file, unix socket and pidfile under
``<base_dir>``, with overlay2, on its own bridge (``amber-bk*``, from ``amber.isolation``: build containers
with internet reach the outside world only, never the host nor each other) and without iptables rules of its
own (``amber.isolation`` installs the host's rules). Amber talks to it only through the Engine API on that
socket, never through whatever ``docker`` is first on PATH. ``stop()`` ends exactly the process Amber started
(by PID), nothing else, and removes its bridge.
No daemon outlives its Amber: it is started with a parent-death SIGTERM (so it shuts down, stopping containerd
and unmounting, when Amber dies however it dies) and records its owner (``owner.json``: Amber's pid and start
time); ``sweep_orphaned`` stops a daemon, containerd and anything else running on its roots whose owner is
gone, unmounts what they left mounted and removes the exec root.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from amber.host import processes
from amber.host.mounts import is_mount_point, mounts_under, unmount
from amber.host.owners import read_owner, write_owner
from amber.isolation import IsolationError, bridge_name, ensure_bridge, remove_bridge
from amber.settings import get_settings

DOCKERD = Path("/usr/sbin/dockerd")
ENGINE_API_VERSION = "v1.41"  # dockerd 20.10; newer daemons accept it too
DAEMON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # containerd, runc, docker-init from Debian; never /usr/local/bin
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
    def bridge(self) -> str:
        """The bridge of this daemon's build containers (network mode ``default``)."""
        return bridge_name(hashlib.sha256(str(self.base_dir.resolve()).encode()).hexdigest())

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

    @property
    def owner_file(self) -> Path:
        return self.base_dir / "owner.json"


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
        f"--bridge={layout.bridge}",
        f"--storage-driver={storage_driver}",
    ]


class ManagedDockerd:
    """One dockerd process owned by Amber. Methods are safe to call from several tasks of one event loop."""

    def __init__(
        self,
        base_dir: Path,
        *,
        dockerd: Path = DOCKERD,
        storage_driver: str = "overlay2",
        path: str = DAEMON_PATH,
        cache_keep_bytes: int = 10 * 1024**3,
    ) -> None:
        self.layout = DockerdLayout(base_dir)
        self.cache_keep_bytes = cache_keep_bytes  # BuildKit's cache is garbage-collected down to this; 0 = never
        self.dockerd = dockerd
        self.path = path  # where dockerd finds containerd, runc, docker-init
        self.storage_driver = storage_driver
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()
        self._lock_loop: asyncio.AbstractEventLoop | None = None
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

    def _loop_lock(self) -> asyncio.Lock:
        """The start/stop lock of the running event loop (an asyncio.Lock that once waited is bound to its loop;
        one object may be used from several ``asyncio.run`` calls, e.g. CLI commands and tests)."""
        loop = asyncio.get_running_loop()
        if self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def ensure_running(self) -> None:
        """Start the daemon if it is not running, or restart it if it died or stopped answering."""
        async with self._loop_lock():
            if self.pid is not None and await self.healthy():
                return
            if self._process is not None:
                self.restarts += 1
                await asyncio.to_thread(self._terminate)
            await asyncio.to_thread(self._stop_stale_from_pidfile)
            await self._start()

    async def stop(self) -> None:
        """Stop the daemon Amber started (SIGTERM, then SIGKILL after a grace period), anything else still running
        on its roots, unmount what is left mounted there and remove its exec root."""
        async with self._loop_lock():
            await asyncio.to_thread(self._terminate)
            await asyncio.to_thread(self._stop_stale_from_pidfile)
            self.layout.owner_file.unlink(missing_ok=True)
            await asyncio.to_thread(remove_bridge, self.layout.bridge)

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
        try:
            await asyncio.to_thread(ensure_bridge, self.layout.bridge)
        except IsolationError as e:
            raise DockerdError(f"cannot set up the build network: {e}") from None
        self.layout.config_file.write_text(json.dumps(daemon_config(self.cache_keep_bytes)) + "\n")
        with contextlib.suppress(FileNotFoundError):
            self.layout.socket.unlink()
        with open(self.layout.log_file, "ab") as log:
            # Ctrl-C to Amber must not kill builds mid-way (its own session; Amber stops it in order), but Amber's
            # death, even by SIGKILL, makes it shut down cleanly.
            self._process = processes.spawn(
                dockerd_command(self.layout, dockerd=self.dockerd, storage_driver=self.storage_driver),
                death_signal=signal.SIGTERM, stdout=log,
                env={"PATH": self.path, "HOME": str(self.layout.base_dir)},
            )  # fmt: skip
        write_owner(self.layout.owner_file)
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
        """A dockerd (or the containerd it started) left by a dead daemon or an earlier Amber process on the
        same roots is stopped before starting anew; PIDs are checked against their command lines first."""
        _clean_roots(self.layout, SweepReport())

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.layout.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass
class SweepReport:
    """What ``sweep_orphaned`` did, and what it could not undo (with why)."""

    stopped: list[int] = field(default_factory=list)
    unmounted: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def sweep_orphaned(data_dir: Path) -> SweepReport:
    """Stop and clean up the managed dockerd of ``data_dir`` when its owner (an Amber process) is dead: the
    daemon by its pidfile, containerd, every other process running on its roots (shims, runc, build steps),
    then every mount left under its roots, and the exec root. A daemon with a live owner is left alone."""
    layout = DockerdLayout((data_dir / "dockerd").resolve())
    report = SweepReport()
    if not layout.base_dir.is_dir():
        return report
    owner = read_owner(layout.owner_file)
    if owner is not None and owner.alive:
        return report
    _clean_roots(layout, report)
    layout.owner_file.unlink(missing_ok=True)
    return report


def _clean_roots(layout: DockerdLayout, report: SweepReport) -> None:
    """Everything a daemon on ``layout`` left: processes (dockerd first, so it can shut the rest down itself),
    the containerd pidfile, mounts (deepest first) and the exec root."""
    _stop_pid_from_file(layout.pidfile, f"--data-root={layout.data_root}", report)
    containerd_pidfile = layout.exec_root / "containerd" / "containerd.pid"
    _stop_pid_from_file(containerd_pidfile, str(layout.exec_root), report)
    for pid in processes.pids_using(layout.data_root, layout.exec_root):
        if processes.stop(pid, _STOP_TIMEOUT_S):
            report.stopped.append(pid)
        else:
            report.failed.append((Path(f"/proc/{pid}"), f"process {pid} ({processes.cmdline(pid)[:80]}) did not exit"))
    # A dead containerd may linger as a zombie (PID 1 here does not reap), and dockerd would take the PID in this
    # file for a running containerd and wait for it forever.
    with contextlib.suppress(FileNotFoundError):
        containerd_pidfile.unlink()
    # dockerd bind-mounts its data root onto itself, and overlay and BuildKit mounts live below it; a killed
    # daemon leaves them behind.
    for root in (layout.exec_root, layout.base_dir):
        for mount in mounts_under(root):
            problem = unmount(mount)
            if problem is None:
                report.unmounted.append(mount)
            else:
                report.failed.append((mount, f"cannot unmount: {problem}"))
    _remove_exec_root(layout.exec_root)
    if layout.exec_root.exists():
        report.failed.append((layout.exec_root, "not empty after its daemon stopped"))


def _stop_pid_from_file(pidfile: Path, marker: str, report: SweepReport) -> None:
    """Stop the process named in ``pidfile`` if its command line contains ``marker`` (the PID may have been
    reused by something that is not ours)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    if not processes.running(pid) or marker not in processes.cmdline(pid):
        return
    if processes.stop(pid, _STOP_TIMEOUT_S):
        report.stopped.append(pid)


def _remove_exec_root(root: Path) -> None:
    """Remove what a stopped dockerd left in its exec root (sockets, configs), never entering a mount point."""
    if not root.is_dir():
        return
    for directory, subdirs, files in os.walk(root, topdown=False):
        if os.path.ismount(directory) or is_mount_point(Path(directory)):
            continue
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        for name in subdirs:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)


_DAEMONS: dict[Path, ManagedDockerd] = {}


def daemon_config(cache_keep_bytes: int) -> dict[str, object]:
    """dockerd's ``daemon.json``: BuildKit's cache is bounded by its own garbage collector (Amber's cache
    limit, ``AMBER_CACHE_MAX_BYTES``, covers only the caches Amber writes itself)."""
    if cache_keep_bytes <= 0:
        return {"builder": {"gc": {"enabled": False}}}
    return {"builder": {"gc": {"enabled": True, "defaultKeepStorage": f"{cache_keep_bytes}b"}}}


def managed_dockerd(data_dir: Path) -> ManagedDockerd:
    """The process-wide daemon for an Amber data directory (``<data_dir>/dockerd``); not started yet.

    ``AMBER_DOCKERD_ROOT`` may name a directory holding another dockerd build unpacked from its Debian
    packages (``usr/sbin/dockerd``, ``usr/bin/containerd``…), e.g. Debian 13's 26.x (docs/buildkit.md).
    """
    base = (data_dir / "dockerd").resolve()
    if base not in _DAEMONS:
        keep = get_settings().buildkit_cache_max_bytes
        root = os.environ.get("AMBER_DOCKERD_ROOT")
        if root:
            _DAEMONS[base] = ManagedDockerd(
                base,
                dockerd=Path(root) / "usr/sbin/dockerd",
                path=f"{root}/usr/bin:{root}/usr/sbin:{DAEMON_PATH}",
                cache_keep_bytes=keep,
            )
        else:
            _DAEMONS[base] = ManagedDockerd(base, cache_keep_bytes=keep)
    return _DAEMONS[base]


async def stop_managed_dockerds() -> None:
    """Stop every daemon ``managed_dockerd`` handed out (call on service shutdown)."""
    for daemon in list(_DAEMONS.values()):
        await daemon.stop()
