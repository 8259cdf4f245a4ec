"""What the pipeline needs from a build VM, as a narrow protocol, and its implementation on ``amber.vm``.

A build machine boots a disk chain (raw base ← frozen step layers) with a writable overlay at a path the
pipeline chooses, exposes the guest agent, can freeze the overlay into an immutable layer while it keeps
running (``checkpoint``), and is snapshotted once into an artifact directory. ``close()`` stops QEMU and removes
its run directory; it is safe at any time, from any thread, more than once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from amber.guest.install import load_guest
from amber.vm import host
from amber.vm.agent import AgentClient
from amber.vm.machine import DiskChain
from amber.vm.microvm import MicroVM, boot, resolve_accel


@dataclass(frozen=True)
class MachineSpec:
    chain: tuple[Path, ...]  # bottom first: base disk, then cached step layers
    overlay: Path  # where the guest's writes go first (must not exist)
    cpus: int
    memory_mib: int
    network: bool  # internet access (a runtime choice: every build VM has a NIC)
    zero_freed_memory: bool = False  # the build has build-only values: the guest zeroes what it frees


class BuildMachine(Protocol):
    @property
    def agent(self) -> AgentClient: ...

    def checkpoint(self, next_overlay: Path) -> None:
        """Freeze the current overlay into an immutable layer (at the path it already has) and continue on a
        fresh overlay at ``next_overlay``."""
        ...

    def snapshot(self, artifact_dir: Path) -> None:
        """Pause, save memory/device state and the disk chain into ``artifact_dir`` (must not exist), stop."""
        ...

    def close(self) -> None: ...


class VmBackend(Protocol):
    def fingerprint(self) -> str:
        """Identity of what a snapshot depends on besides the disk (kernel, initramfs, agent, QEMU, accel)."""
        ...

    def boot(self, spec: MachineSpec) -> BuildMachine: ...


class _MicroVmMachine:
    def __init__(self, vm: MicroVM) -> None:
        self._vm = vm

    @property
    def agent(self) -> AgentClient:
        return self._vm.agent

    def checkpoint(self, next_overlay: Path) -> None:
        self._vm.checkpoint_disk(next_overlay)

    def snapshot(self, artifact_dir: Path) -> None:
        self._vm.snapshot(artifact_dir)

    def close(self) -> None:
        self._vm.close()


class MicroVmBackend:
    """Build machines on ``amber.vm`` (QEMU microvm; KVM where the host has it, else TCG)."""

    def __init__(self, data_dir: Path, *, accel: str | None = None) -> None:
        self.data_dir = data_dir
        self.accel = accel

    def fingerprint(self) -> str:
        guest = load_guest(self.data_dir)
        parts = [guest.vmlinux_sha256, guest.initramfs_sha256, guest.agent_sha256, host.qemu_version(),
                 str(resolve_accel(self.accel))]  # fmt: skip
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def boot(self, spec: MachineSpec) -> BuildMachine:
        vm = boot(
            DiskChain.of(*spec.chain),
            data_dir=self.data_dir,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            internet=spec.network,
            zero_freed_memory=spec.zero_freed_memory,
            accel=self.accel,
            overlay=spec.overlay,
        )
        return _MicroVmMachine(vm)
