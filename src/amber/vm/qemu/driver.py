"""The ``Driver`` on QEMU ``microvm``: ``boot`` and ``restore`` (one start path), ``describe``, ``fingerprint``.

``boot`` starts a fresh guest from a disk chain; ``restore`` starts QEMU waiting for an incoming migration and
feeds it a template artifact's state. Both check everything they can before a process exists (guest image,
machine description, overlay path), then go through ``_start``: a run directory, a fresh overlay, QEMU spawned
confined and QMP connected (``MicroVM.start``), then either the agent's ping (boot) or migrate-incoming, ``cont``
and the agent's post-restore duties (restore). On any failure nothing is left behind. ``QemuDriver`` binds a data
directory and accelerator choice to these functions for callers that take a ``Driver``.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from amber.guest.install import GuestImage, GuestMissing, load_guest
from amber.settings import get_settings
from amber.vm.artifact import TemplateArtifact
from amber.vm.errors import BootError, GuestHung, MachineMismatch, VMError
from amber.vm.machine import Accel, DiskChain, MachineDescription, MemoryBackend, virtual_size
from amber.vm.qemu import host
from amber.vm.qemu.argv import MachineFiles, kernel_cmdline
from amber.vm.qemu.microvm import MicroVM, create_overlay, wait_migration
from amber.vm.qemu.process import create_run_dir, sweep_stale
from amber.vm.qemu.qmp import QMPError

_swept: set[Path] = set()
_sweep_lock = threading.Lock()

log = logging.getLogger("amber.vm")


def sweep_once(data_dir: Path) -> None:
    """Run ``sweep_stale`` the first time this process touches ``data_dir``."""
    with _sweep_lock:
        if data_dir not in _swept:
            sweep_stale(data_dir)
            _swept.add(data_dir)


def resolve_accel(accel: Accel | str | None) -> Accel:
    """Explicit argument, else ``Settings.accel`` (AMBER_ACCEL), else KVM only with vmx/svm, else TCG."""
    chosen = accel or get_settings().accel
    if chosen:
        try:
            return Accel(chosen)
        except ValueError:
            raise VMError(f"accel must be 'kvm' or 'tcg', got {chosen!r}") from None
    return host.detect_accel()


def describe(
    guest: GuestImage,
    *,
    cpus: int,
    memory_mib: int,
    network: bool,
    memory_backend: MemoryBackend,
    accel: Accel | str | None,
    hostname: str | None = None,
    zero_freed_memory: bool = False,
) -> MachineDescription:
    """The machine a boot on this host would get (reads host facts: accel, TSC, QEMU version). ``network``
    is the NIC's presence (every new VM has one; artifacts from before may not)."""
    if not 1 <= cpus <= 64:
        raise VMError(f"cpus must be 1..64, got {cpus}")
    if not 64 <= memory_mib <= 1 << 20:
        raise VMError(f"memory_mib must be at least 64, got {memory_mib}")
    chosen = resolve_accel(accel)
    return MachineDescription(
        qemu_version=host.qemu_version(),
        accel=chosen,
        cpu_model="max" if chosen == Accel.TCG else "host",
        cpus=cpus,
        memory_mib=memory_mib,
        memory_backend=memory_backend,
        network=network,
        kernel_release=guest.kernel_release,
        kernel_sha256=guest.vmlinux_sha256,
        initramfs_sha256=guest.initramfs_sha256,
        kernel_cmdline=kernel_cmdline(tsc_khz=host.tsc_khz(), lpj=host.lpj(), network=network, hostname=hostname,
                                      zero_freed_memory=zero_freed_memory),
    )


def load_guest_or_fail(data_dir: Path) -> GuestImage:
    try:
        return load_guest(data_dir)
    except GuestMissing as e:
        raise BootError(str(e)) from None


def new_boot_id() -> str:
    return str(uuid.uuid4())


def boot(
    disk: DiskChain | Path,
    *,
    data_dir: Path,
    cpus: int = 1,
    memory_mib: int = 512,
    internet: bool = False,
    memory_backend: MemoryBackend = MemoryBackend.FILE,
    accel: Accel | str | None = None,
    overlay: Path | None = None,
    hostname: str | None = None,
    boot_timeout: float = 120.0,
    nic: bool = True,
    zero_freed_memory: bool = False,
) -> MicroVM:
    """Boot a microVM from ``disk`` (one image path, or a ``DiskChain``) and wait for its agent.

    The chain is read-only; the guest writes to ``overlay`` (created fresh; it must not exist) or, by
    default, to a private overlay in the run directory. Every VM has a user-mode NIC (guest 10.0.2.15,
    gateway 10.0.2.2, DNS 10.0.2.3); ``internet`` is a runtime choice, not part of the machine: on, the
    guest reaches the outside world only (never the host's loopback or addresses, nor other guests); off,
    nothing at all (``amber.isolation``). ``nic=False`` leaves the NIC out (measurements and compatibility
    tests only: the NIC's presence is part of the machine, so its snapshots can never have network).
    ``zero_freed_memory``: the guest zeroes every page it frees (``init_on_free=1``), so values that commands
    held (build-only envs) are not in a later snapshot's memory; costs zeroing all RAM once at boot.
    ``accel`` overrides the choice of KVM/TCG. ``hostname`` defaults to the image's /etc/hostname, else
    "amber". A guest that hangs while booting (``GuestHung``: QEMU runs, the agent never answers) is booted
    once more. Raises ``BootError`` (with the console tail) if the agent does not answer within
    ``boot_timeout`` seconds (twice, for a hung guest), or if the host cannot isolate the network as asked;
    nothing is left behind then.
    """
    data_dir = data_dir.resolve()
    sweep_once(data_dir)
    chain = disk if isinstance(disk, DiskChain) else DiskChain.of(disk)
    for layer in chain.layers:
        if not layer.path.is_file():
            raise BootError(f"disk layer {layer.path} does not exist")
    guest = load_guest_or_fail(data_dir)
    try:
        desc = describe(guest, cpus=cpus, memory_mib=memory_mib, network=nic, memory_backend=memory_backend,
                        accel=accel, hostname=hostname, zero_freed_memory=zero_freed_memory)
    except ValueError as e:
        raise BootError(str(e)) from None
    try:
        return _start(data_dir, desc, kernel=guest.vmlinux, initramfs=guest.initramfs, chain=chain,
                      overlay=overlay, internet=internet, timeout=boot_timeout, incoming=None)
    except GuestHung as hung:  # nothing of the first attempt is left (_start cleans up): boot afresh, once
        log.warning("a guest hung while booting; booting it once more: %s", str(hung).splitlines()[0])
    return _start(data_dir, desc, kernel=guest.vmlinux, initramfs=guest.initramfs, chain=chain, overlay=overlay,
                  internet=internet, timeout=boot_timeout, incoming=None)


def restore(
    artifact: Path | TemplateArtifact,
    *,
    data_dir: Path,
    cpus: int | None = None,
    memory_mib: int | None = None,
    internet: bool = False,
    accel: str | None = None,
    overlay: Path | None = None,
    hostname: str | None = None,
    verify_checksums: bool = False,
    timeout: float = 60.0,
    first_request_id: int | None = None,
    attach: Iterable[int] = (),
) -> MicroVM:
    """Start a new VM from a template artifact and return it once its agent has answered.

    Arguments left as None take the artifact's values; any that differ from it (and any host fact that
    differs: QEMU version, accelerator, kernel) raise ``MachineMismatch`` before QEMU starts, as does a
    missing or resized file (``ArtifactError``). After ``cont`` the agent sets the guest clock to the
    host's, reseeds the guest RNG with fresh host entropy and gives the guest a new boot_id, so restores
    from one template never share clocks or random streams. The VM writes to a fresh overlay (in its run
    directory, or ``overlay``). ``attach`` = agent request ids of jobs running in the guest when the
    artifact was taken: their frames are kept for ``vm.agent.attach(id)``; ``first_request_id`` seeds the
    agent client's request ids above every id the guest may still hold. ``internet`` is this restore's own
    choice (restores of one artifact may differ): on, the guest reaches only the outside world; off, nothing
    (see ``boot``). An artifact taken without a NIC (before every VM had one) restores without network.
    """
    data_dir = data_dir.resolve()
    sweep_once(data_dir)
    art = artifact if isinstance(artifact, TemplateArtifact) else TemplateArtifact.load(
        artifact, verify_checksums=verify_checksums)
    saved = art.description
    guest = load_guest_or_fail(data_dir)
    wanted = describe(
        guest,
        cpus=saved.cpus if cpus is None else cpus,
        memory_mib=saved.memory_mib if memory_mib is None else memory_mib,
        network=saved.network,
        memory_backend=saved.memory_backend,
        accel=accel or saved.accel,
    )
    # The kernel is the artifact's own copy, so only the host-dependent and caller-chosen fields compare.
    wanted = replace(wanted, kernel_release=saved.kernel_release, kernel_sha256=saved.kernel_sha256,
                     initramfs_sha256=saved.initramfs_sha256, kernel_cmdline=saved.kernel_cmdline)
    diffs = saved.differences(wanted)
    if diffs:
        raise MachineMismatch(f"cannot restore {art.directory}: the machine differs from the snapshot's "
                              f"({'; '.join(d.replace(' != ', ' in the artifact, requested ') for d in diffs)})")
    return _start(data_dir, saved, kernel=art.kernel, initramfs=art.initramfs, chain=art.chain, overlay=overlay,
                  internet=internet, timeout=timeout,
                  incoming=_Incoming(art, hostname, first_request_id, tuple(attach)))


@dataclass(frozen=True)
class _Incoming:
    """What makes a start a restore: the artifact whose state QEMU takes in, and the agent client's settings
    for a guest that still holds request ids from before the snapshot."""

    artifact: TemplateArtifact
    hostname: str | None
    first_request_id: int | None
    attach: tuple[int, ...]


def _start(
    data_dir: Path,
    description: MachineDescription,
    *,
    kernel: Path,
    initramfs: Path,
    chain: DiskChain,
    overlay: Path | None,
    internet: bool,
    timeout: float,
    incoming: _Incoming | None,
) -> MicroVM:
    """The one start path of ``boot`` (``incoming`` None) and ``restore``: a fresh overlay over ``chain`` (at
    ``overlay``, which must not exist, else in the run directory), QEMU spawned and QMP connected; a fresh boot then
    waits for the agent's answer, an incoming migration takes in the artifact's state, continues the guest and has
    the agent do its post-restore duties (clock, RNG, boot_id, hostname). Guest memory: a boot's own file in the run
    directory, shared (the guest writes it); a restore maps the artifact's file private (copy-on-write). On any
    failure QEMU is killed and the run directory and ``overlay`` removed."""
    if overlay is not None:
        overlay = overlay.resolve()
        if overlay.exists():
            raise BootError(f"overlay {overlay} already exists")
    run_dir = create_run_dir(data_dir)
    vm: MicroVM | None = None
    try:
        started = time.monotonic()
        top = overlay or run_dir / "disk.qcow2"
        create_overlay(chain.top.path, chain.top.format, top, virtual_size(chain.top))
        if incoming is None:
            memory_file = run_dir / "memory.bin" if description.memory_backend == MemoryBackend.FILE else None
        else:
            memory_file = incoming.artifact.memory
        files = MachineFiles(kernel=kernel, initramfs=initramfs, chain=chain, overlay=top, memory_file=memory_file,
                             share_memory=incoming is None, incoming=incoming is not None)
        vm = MicroVM.start(run_dir, description, files, internet=internet)
        if incoming is None:
            vm.connect_agent(timeout)
        else:
            vm.known_sha256.update(incoming.artifact.checksums())
            _take_in(vm, incoming, timeout)
        vm.boot_seconds = time.monotonic() - started
        return vm
    except BaseException:
        if vm is not None:
            vm.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        if overlay is not None:
            overlay.unlink(missing_ok=True)
        raise


def _take_in(vm: MicroVM, incoming: _Incoming, timeout: float) -> None:
    """Migrate the artifact's state into the paused QEMU, continue the guest and connect its agent."""
    art = incoming.artifact
    try:
        if art.description.memory_backend == MemoryBackend.FILE:
            vm.qmp.execute("migrate-set-capabilities",
                           capabilities=[{"capability": "x-ignore-shared", "state": True}])
        vm.qmp.execute("migrate-incoming", uri=f"exec:cat {shlex.quote(str(art.state))}")
        wait_migration(vm.qmp, "restore", timeout)
        vm.qmp.execute("cont")
    except QMPError as e:
        raise BootError(vm.failure(f"restore of {art.directory} failed: {e}")) from None
    agent = vm.connect_agent(timeout, ping=False, first_request_id=incoming.first_request_id,
                             attach=incoming.attach)
    try:  # the first request doubles as the readiness check: one round trip instead of two
        agent.post_restore(boot_id=new_boot_id(), hostname=incoming.hostname, timeout=timeout, alive=vm.alive)
    except VMError as e:
        raise BootError(vm.failure(f"post-restore duties failed: {e}")) from None


class QemuDriver:
    """The ``Driver`` of ``amber.vm.driver`` on QEMU: VMs of one data directory (run directories, guest image)
    with one accelerator choice (None: ``resolve_accel``'s)."""

    def __init__(self, data_dir: Path, *, accel: Accel | str | None = None) -> None:
        self.data_dir = data_dir
        self.accel = accel

    def fingerprint(self) -> str:
        guest = load_guest(self.data_dir)
        parts = [guest.vmlinux_sha256, guest.initramfs_sha256, guest.agent_sha256, host.qemu_version(),
                 str(resolve_accel(self.accel))]  # fmt: skip
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def describe(self, *, cpus: int, memory_mib: int, network: bool = True,
                 memory_backend: MemoryBackend = MemoryBackend.FILE) -> MachineDescription:
        return describe(load_guest(self.data_dir), cpus=cpus, memory_mib=memory_mib, network=network,
                        memory_backend=memory_backend, accel=self.accel)

    def boot(
        self,
        disk: DiskChain | Path,
        *,
        overlay: Path | None = None,
        cpus: int = 1,
        memory_mib: int = 512,
        internet: bool = False,
        zero_freed_memory: bool = False,
        hostname: str | None = None,
        timeout: float = 120.0,
    ) -> MicroVM:
        return boot(disk, data_dir=self.data_dir, cpus=cpus, memory_mib=memory_mib, internet=internet,
                    accel=self.accel, overlay=overlay, hostname=hostname, boot_timeout=timeout,
                    zero_freed_memory=zero_freed_memory)

    def restore(
        self,
        artifact: Path | TemplateArtifact,
        *,
        overlay: Path | None = None,
        cpus: int | None = None,
        memory_mib: int | None = None,
        internet: bool = False,
        hostname: str | None = None,
        timeout: float = 60.0,
    ) -> MicroVM:
        return restore(artifact, data_dir=self.data_dir, cpus=cpus, memory_mib=memory_mib, internet=internet,
                       accel=None if self.accel is None else str(self.accel), overlay=overlay, hostname=hostname,
                       timeout=timeout)
