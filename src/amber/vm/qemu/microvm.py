"""A running QEMU microVM, the ``Machine`` of ``amber.vm.driver``: talk to its agent, checkpoint its disk, snapshot
it, close it (started by ``amber.vm.qemu.driver``).

Guarantees: a ``MicroVM`` is a context manager; on ``close()``, on an exception during boot, on SIGKILL
of the owning process (parent-death signal) and at the next driver start after a crash (``sweep_stale``)
its QEMU process is killed and its run directory (sockets, console log, private overlay, memory file)
removed. The immutable layers of the disk chain are opened read-only and never written; the VM writes only
to its own qcow2 overlay. Limits: one snapshot per VM (QEMU cannot migrate twice; the VM is gone after
``snapshot``); guest RAM is a sparse file in the run directory (file backend), so the data directory's
filesystem needs room for what the guest touches.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from amber.isolation import IsolationError, confine
from amber.vm.agent import AgentClient, ExecResult, OutputCallback, RunningExec
from amber.vm.artifact import TemplateArtifact, write_artifact
from amber.vm.errors import AgentError, AgentTimeout, BootError, GuestHung, SnapshotError, VMError
from amber.vm.machine import DiskChain, DiskFormat, MachineDescription, MemoryBackend, virtual_size
from amber.vm.protocol import SyncMode
from amber.vm.qemu import host
from amber.vm.qemu.argv import MachineFiles, qemu_argv
from amber.vm.qemu.process import kill_and_wait, spawn, staging_name
from amber.vm.qemu.qcow2 import write_overlay
from amber.vm.qemu.qmp import QMPClient, QMPError

Progress = Callable[[str], None]

MAX_BANDWIDTH = 100 << 30  # bytes/s: lifts QEMU's 128 MiB/s default, which also throttles migration to a file


def create_overlay(backing: Path, backing_format: DiskFormat, overlay: Path, size: int) -> None:
    """A fresh, empty qcow2 over ``backing`` (written directly, see ``qcow2.py``). The backing is not
    opened, so a layer that a running VM holds is fine; the header's backing path is informational (QEMU
    gets the chain explicitly)."""
    try:
        write_overlay(overlay, backing, str(backing_format), size)
    except (OSError, ValueError) as e:
        raise VMError(f"cannot create the disk overlay {overlay}: {e}") from None


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    return data[-limit:].decode(errors="replace").strip()


class MicroVM:
    """A running microVM. Use ``boot()`` or ``restore()`` to get one, and ``with`` (or ``close()``) to end it.

    ``exec``/``agent`` reach the guest; ``checkpoint_disk`` turns the writable overlay into an immutable
    layer without a reboot; ``snapshot`` writes a template artifact and ends the VM.
    """

    def __init__(
        self,
        *,
        run_dir: Path,
        description: MachineDescription,
        files: MachineFiles,
        process: subprocess.Popen[bytes],
        internet: bool,
    ) -> None:
        self.run_dir = run_dir
        self.description = description
        self.files = files
        self.chain = files.chain
        self.overlay = files.overlay
        self.process = process
        self.internet = internet and description.network  # a machine without a NIC has no network at all
        self._top_node = "root"
        self._checkpoints = 0
        self._dirfd = os.open(run_dir, os.O_PATH | os.O_CLOEXEC)
        self._qmp: QMPClient | None = None
        self._agent: AgentClient | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.boot_seconds = 0.0
        self.known_sha256: dict[Path, str] = {}  # checksums of chain and memory files known without reading them

    # ---- life cycle ----

    @classmethod
    def start(cls, run_dir: Path, description: MachineDescription, files: MachineFiles, *,
              internet: bool) -> MicroVM:
        """Spawn QEMU, confined (``amber.isolation``: with ``internet`` only the outside world, else no
        network at all), and connect QMP (no agent yet). On failure the caller removes ``run_dir``."""
        try:
            argv = confine(qemu_argv(host.qemu_binary(), description, files),
                           internet=internet and description.network)
        except IsolationError as e:
            raise BootError(f"cannot isolate the VM's network: {e}") from None
        (run_dir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        process = spawn(argv, run_dir, run_dir / "qemu.log")
        vm = cls(run_dir=run_dir, description=description, files=files, process=process, internet=internet)
        try:
            vm._qmp = QMPClient(vm._connect(files.qmp_socket, 30.0))
        except BaseException as e:
            vm.close()
            if isinstance(e, VMError):
                raise BootError(vm.failure(f"QEMU did not start: {e}")) from None
            raise
        return vm

    def _sock_path(self, name: str) -> str:
        path = str(self.run_dir / name)
        # sun_path holds 108 bytes: reach long run directories through our O_PATH descriptor instead.
        return path if len(path) < 100 else f"/proc/self/fd/{self._dirfd}/{name}"

    def _connect(self, name: str, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        path = self._sock_path(name)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if self.process.poll() is not None:
                    raise VMError(f"QEMU exited with status {self.process.returncode}") from None
                if time.monotonic() > deadline:
                    raise VMError(f"{name} did not appear within {timeout:.0f}s") from None
                time.sleep(0.003)

    def connect_agent(self, timeout: float, *, ping: bool = True, first_request_id: int | None = None,
                      attach: Iterable[int] = ()) -> AgentClient:
        """Connect to the agent port and (with ``ping``) wait until the agent answers (see ``AgentClient``
        for ``first_request_id`` and ``attach``)."""
        try:
            sock = self._connect(self.files.agent_socket, timeout)
            sock.settimeout(None)
            self._agent = AgentClient(sock, first_request_id=first_request_id, attach=attach)
            if ping:
                self._agent.wait_ready(timeout, alive=self.alive)
        except VMError as e:
            error = GuestHung if ping and isinstance(e, AgentTimeout) and self.alive() else BootError
            raise error(self.failure(f"the guest agent did not answer: {e}")) from None
        return self._agent

    def failure(self, message: str) -> str:
        """``message`` with the tails of QEMU's log and the guest console: what a start or snapshot error says."""
        parts = [message]
        log = _tail(self.run_dir / "qemu.log", 1500)
        if log:
            parts.append(f"QEMU said: {log}")
        serial = _tail(self.run_dir / self.files.serial_log)
        if serial:
            parts.append(f"guest console (last lines):\n{serial}")
        return "\n".join(parts)

    @property
    def zeroes_freed_memory(self) -> bool:
        """Booted with ``zero_freed_memory`` (the guest zeroes freed pages; ``snapshot`` also scrubs the agent
        port's receive buffers): a VM that carried build-only values."""
        return "init_on_free=1" in self.description.kernel_cmdline.split()

    def alive(self) -> bool:
        return not self._closed and self.process.poll() is None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def qmp(self) -> QMPClient:
        if self._qmp is None:
            raise VMError("the VM has no QMP connection")
        return self._qmp

    @property
    def agent(self) -> AgentClient:
        """The agent client (thread-safe; see ``AgentClient`` for every request)."""
        if self._agent is None or self._closed:
            raise VMError("the VM is not running")
        return self._agent

    def serial_log(self) -> str:
        return _tail(self.run_dir / self.files.serial_log, 1 << 20)

    def rss_bytes(self) -> int:
        """Resident memory of the QEMU process."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def close(self) -> None:
        """Kill QEMU and remove the run directory. Idempotent. Caller-owned overlays are left in place."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        kill_and_wait(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for client in (self._agent, self._qmp):
            if client is not None:
                client.close()
        os.close(self._dirfd)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> MicroVM:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- guest work ----

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
        """Run a command in the guest (see ``AgentClient.exec``)."""
        return self.agent.exec(argv, shell=shell, env=env, cwd=cwd, user=user, stdin=stdin, timeout=timeout,
                               on_stdout=on_stdout, on_stderr=on_stderr, on_start=on_start)

    def checkpoint_disk(self, new_overlay: Path) -> DiskChain:
        """Freeze the guest's root filesystem, put a fresh overlay at ``new_overlay`` on top of the disk,
        thaw, and return the chain that now ends with the previous overlay — an immutable layer from here
        on, safe to hash, share and boot other VMs from while this VM keeps running on ``new_overlay``.

        The VM must have been booted with ``overlay=`` (or checkpointed before) so the finished layer is a
        file the caller owns; a run-directory overlay would vanish with the VM.
        """
        new_overlay = new_overlay.resolve()
        if self.overlay.parent == self.run_dir:
            raise VMError("checkpoint_disk needs a caller-owned overlay: boot with overlay=<path>")
        if new_overlay.exists():
            raise VMError(f"checkpoint_disk: {new_overlay} already exists")
        with self._lock:
            size = virtual_size(self.chain.top)
            create_overlay(self.overlay, DiskFormat.QCOW2, new_overlay, size)
            node = f"top{self._checkpoints + 1}"
            self.agent.sync(SyncMode.FREEZE)
            try:
                self.qmp.execute("blockdev-add", driver="qcow2", **{"node-name": node},
                                 file={"driver": "file", "filename": str(new_overlay)}, backing=None)
                self.qmp.execute("blockdev-snapshot", node=self._top_node, overlay=node)
            except QMPError as e:
                new_overlay.unlink(missing_ok=True)
                raise VMError(f"checkpoint_disk failed: {e}") from None
            finally:
                self.agent.sync(SyncMode.THAW)
            self._checkpoints += 1
            self._top_node = node
            self.chain = self.chain.plus(self.overlay)
            self.overlay = new_overlay
            return self.chain

    def snapshot(self, out_dir: Path, progress: Progress | None = None,
                 on_stopped: Callable[[], None] | None = None) -> TemplateArtifact:
        """Write a template artifact to ``out_dir`` (must not exist) and end this VM.

        Sequence: guest sync → (``zeroes_freed_memory``: the agent port's receive buffers overwritten,
        ``AgentClient.scrub_transport``) → QMP stop →
        migrate device state (and, for the RAM backend, all memory) to ``state.bin`` with the bandwidth cap
        lifted and ``x-ignore-shared`` for file-backed memory → quit → the memory file (``zeroes_freed_memory``:
        zero blocks dug back into holes) and the disk chain (layers hard-linked when possible, else copied) move
        into the artifact,
        with ``machine.json`` and a checksummed ``manifest.json``. ``on_stopped`` runs while the guest is
        stopped and its state captured (what it sent before is all it sent: see ``AgentClient.wait_drained``).
        On error the VM is closed and nothing is left at ``out_dir``.
        """
        out_dir = out_dir.resolve()
        if out_dir.exists():
            raise SnapshotError(f"snapshot target {out_dir} already exists")
        staging = staging_name(out_dir, self.run_dir)
        staging.mkdir(parents=True)
        try:
            try:
                self.agent.sync()
                if self.zeroes_freed_memory:  # it carried build-only values: none may stay in port buffers
                    self.agent.scrub_transport()
            except AgentError as e:
                raise SnapshotError(f"guest sync before snapshot failed: {e}") from None
            state = staging / "state.bin"
            started = time.monotonic()
            with self.agent.quiesce():  # no request half-received by the guest goes into the snapshot
                self._migrate_to(state)
                if on_stopped is not None:
                    on_stopped()
            snapshot_seconds = time.monotonic() - started
            with contextlib.suppress(QMPError):
                self.qmp.execute("quit")
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_and_wait(self.process.pid)
            artifact = write_artifact(
                staging, out_dir, description=self.description, kernel=self.files.kernel,
                initramfs=self.files.initramfs, memory_file=self.files.memory_file,
                memory_shared=self.files.share_memory, chain=self.chain, overlay=self.overlay, run_dir=self.run_dir,
                snapshot_seconds=snapshot_seconds, progress=progress, known_sha256=self.known_sha256,
                sparsify_memory=self.zeroes_freed_memory,
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            self.close()
            raise
        self.close()
        return artifact

    def live_snapshot(self, out_dir: Path, next_overlay: Path,
                      on_stopped: Callable[[], None] | None = None) -> TemplateArtifact:
        """Write a template artifact of this VM as it is now to ``out_dir`` (must not exist); the VM keeps running.

        Only for VMs with private memory (restores): a shared memory file keeps changing under a snapshot.
        Sequence: guest sync → (agent quiesced) QMP stop → a fresh overlay at ``next_overlay`` goes on top of the
        disk (``blockdev-snapshot``), freezing the previous overlay at this instant → migrate device state and guest
        memory (all of it: it is private) to ``state.bin`` → ``cont``. The guest is paused only for the migration
        (``artifact.snapshot_seconds``). Afterwards the VM writes to ``next_overlay``; the frozen overlay is
        hard-linked into the artifact and stays a read-only layer of this VM's chain. ``on_stopped`` runs while the
        guest is still stopped (as for ``snapshot``). On failure the VM runs on
        (``cont``) when it still can, nothing is left at ``out_dir`` and ``next_overlay`` is removed.
        """
        if self.files.share_memory:
            raise SnapshotError("a live snapshot needs private guest memory (a restored VM)")
        out_dir, next_overlay = out_dir.resolve(), next_overlay.resolve()
        if out_dir.exists() or next_overlay.exists():
            raise SnapshotError(f"live snapshot target {out_dir} or overlay {next_overlay} already exists")
        staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{self.run_dir.name}")
        staging.mkdir(parents=True)
        with self._lock:
            try:
                create_overlay(self.overlay, DiskFormat.QCOW2, next_overlay, virtual_size(self.chain.top))
                try:
                    self.agent.sync()
                except AgentError as e:
                    raise SnapshotError(f"guest sync before snapshot failed: {e}") from None
                node = f"top{self._checkpoints + 1}"
                qmp = self.qmp
                with self.agent.quiesce():
                    started = time.monotonic()
                    try:
                        qmp.execute("stop")
                        qmp.execute("blockdev-add", driver="qcow2", **{"node-name": node},
                                    file={"driver": "file", "filename": str(next_overlay)}, backing=None)
                        qmp.execute("blockdev-snapshot", node=self._top_node, overlay=node)
                        frozen, chain = self.overlay, self.chain
                        self._checkpoints += 1
                        self._top_node = node
                        self.chain = self.chain.plus(frozen)
                        self.overlay = next_overlay
                        qmp.execute("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
                        qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(staging / 'state.bin'))}")
                        wait_migration(qmp, "live snapshot", 600)
                        if on_stopped is not None:
                            on_stopped()
                    except QMPError as e:
                        raise SnapshotError(self.failure(f"live snapshot failed: {e}")) from None
                    finally:
                        with contextlib.suppress(QMPError, VMError):
                            qmp.execute("cont")
                    paused = time.monotonic() - started
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                if self.overlay != next_overlay:
                    next_overlay.unlink(missing_ok=True)
                raise
        try:
            artifact = write_artifact(
                staging, out_dir, description=self.description, kernel=self.files.kernel,
                initramfs=self.files.initramfs, memory_file=self.files.memory_file,
                memory_shared=self.files.share_memory, chain=chain, overlay=frozen, run_dir=None,
                snapshot_seconds=paused, known_sha256=self.known_sha256)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        top = artifact.chain.top.path.relative_to(artifact.directory).as_posix()
        self.known_sha256[frozen] = artifact.files[top].sha256  # the frozen overlay stays a layer of this VM
        return artifact

    def _migrate_to(self, state: Path) -> None:
        qmp = self.qmp
        try:
            qmp.execute("stop")
            qmp.execute("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
            if self.description.memory_backend == MemoryBackend.FILE:
                qmp.execute("migrate-set-capabilities",
                            capabilities=[{"capability": "x-ignore-shared", "state": True}])
            qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(state))}")
            wait_migration(qmp, "snapshot", 600)
        except QMPError as e:
            raise SnapshotError(self.failure(f"snapshot failed: {e}")) from None


def wait_migration(qmp: QMPClient, what: str, timeout: float) -> None:
    """Poll ``query-migrate`` until completed; raise on failure or timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise QMPError(f"{what} migration {status}: {info.get('error-desc', 'no details')}")
        if time.monotonic() > deadline:
            raise QMPError(f"{what} migration still {status} after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
