"""What a VM is, as data: the machine description and the QEMU command line built from it (pure).

``MachineDescription`` holds every setting that must be identical between a snapshot and its restores
(QEMU version, accelerator, CPU model, vCPUs, memory size and backend, devices, kernel and its command
line). ``MachineFiles`` holds the paths, which may differ. ``qemu_argv`` turns both into argv, so a
restore with the same description gets the same machine by construction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


class MemoryBackend(StrEnum):
    FILE = "file"  # memory-backend-file: lazy, copy-on-write snapshots (only device state is written)
    RAM = "ram"  # anonymous memory: the snapshot state file carries every non-zero page


class DiskFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


QCOW2_MAGIC = b"QFI\xfb"
AGENT_PORT_NAME = "amber.agent"


@dataclass(frozen=True)
class DiskLayer:
    """One read-only layer of a disk chain: a raw or qcow2 image that no VM ever writes."""

    path: Path
    format: DiskFormat


@dataclass(frozen=True)
class DiskChain:
    """A root disk as immutable layers, bottom first: a raw ext4 (or qcow2) base, then qcow2 layers.

    A VM booted from a chain writes only to its own fresh qcow2 overlay on top; the chain's backing
    links are given to QEMU explicitly, so the backing paths stored inside the qcow2 headers never matter.
    """

    layers: tuple[DiskLayer, ...]

    @classmethod
    def of(cls, *paths: Path) -> DiskChain:
        """A chain from paths, bottom first; each file's format is read from its header."""
        if not paths:
            raise ValueError("a disk chain needs at least one layer")
        return cls(tuple(DiskLayer(Path(p).resolve(), detect_format(Path(p))) for p in paths))

    @property
    def top(self) -> DiskLayer:
        return self.layers[-1]

    def plus(self, path: Path) -> DiskChain:
        return DiskChain((*self.layers, DiskLayer(path.resolve(), DiskFormat.QCOW2)))


def detect_format(path: Path) -> DiskFormat:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise FileNotFoundError(f"disk image {path} does not exist") from None
    return DiskFormat.QCOW2 if head == QCOW2_MAGIC else DiskFormat.RAW


def virtual_size(layer: DiskLayer) -> int:
    """Guest-visible size in bytes: the file size for raw, the header's size field for qcow2."""
    if layer.format == DiskFormat.RAW:
        return layer.path.stat().st_size
    with layer.path.open("rb") as f:
        header = f.read(32)
    return int.from_bytes(header[24:32], "big")


@dataclass(frozen=True)
class MachineDescription:
    """Everything that must match between a snapshot and a restore (paths excluded)."""

    qemu_version: str
    accel: Accel
    cpu_model: str
    cpus: int
    memory_mib: int
    memory_backend: MemoryBackend
    network: bool
    kernel_release: str
    kernel_sha256: str
    initramfs_sha256: str
    kernel_cmdline: str

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MachineDescription:
        names = {f.name for f in fields(cls)}
        missing = names - raw.keys()
        if missing:
            raise ValueError(f"machine description lacks {sorted(missing)}")
        values = {k: raw[k] for k in names}
        values["accel"] = Accel(values["accel"])
        values["memory_backend"] = MemoryBackend(values["memory_backend"])
        return cls(**values)

    def differences(self, other: MachineDescription) -> list[str]:
        """Human-readable ``field: this != other`` lines, empty when identical."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def kernel_cmdline(*, tsc_khz: int, lpj: int, network: bool, hostname: str | None = None,
                   zero_freed_memory: bool = False) -> str:
    """The guest kernel command line. ``tsc_early_khz``/``lpj`` skip TSC calibration, which hangs about
    one TCG boot in five; ``amber.*`` keys are read by the agent (no hostname: the image's /etc/hostname,
    else "amber"); ``zero_freed_memory`` adds ``init_on_free=1``."""
    # tsc=reliable: under TCG the clocksource watchdog otherwise declares the TSC unstable and the guest
    # falls back to the 4 ms jiffies clocksource. init_on_free=1: freed pages are zeroed, so what a finished
    # command held in memory (build-only env values) is not in the snapshot's memory; it also zeroes all RAM
    # once at boot (~2.5 s per 512 MiB under TCG, ~50 ms per GiB with KVM), hence only when asked.
    parts = ["console=ttyS0", "panic=-1", "quiet", f"tsc_early_khz={tsc_khz}", f"lpj={lpj}", "tsc=reliable",
             *(["init_on_free=1"] if zero_freed_memory else []), f"amber.port={AGENT_PORT_NAME}"]
    if hostname:
        if not hostname.replace("-", "").replace(".", "").isalnum() or len(hostname) > 64:
            raise ValueError(f"hostname {hostname!r} is not a valid host name")
        parts.append(f"amber.hostname={hostname}")
    if network:
        parts.append("amber.net=1")
    return " ".join(parts)


@dataclass(frozen=True)
class MachineFiles:
    """The paths of one QEMU process. Sockets, pidfile and log are relative to the run directory (QEMU's
    cwd), which keeps unix socket paths short whatever the data directory."""

    kernel: Path
    initramfs: Path
    chain: DiskChain
    overlay: Path  # the only writable disk file
    memory_file: Path | None  # MemoryBackend.FILE only
    share_memory: bool  # True: guest writes reach memory_file (template VM); False: private copy-on-write
    incoming: bool = False  # start paused, waiting for migrate-incoming
    qmp_socket: str = "qmp.sock"
    agent_socket: str = "agent.sock"
    serial_log: str = "serial.log"
    pidfile: str = "qemu.pid"


def _blockdev(spec: dict[str, Any]) -> list[str]:
    return ["-blockdev", json.dumps(spec, separators=(",", ":"))]


def disk_args(chain: DiskChain, overlay: Path) -> list[str]:
    """-blockdev nodes d0..dN for the read-only chain and node ``root`` for the writable overlay."""
    args: list[str] = []
    below: str | None = None
    for i, layer in enumerate(chain.layers):
        node: dict[str, Any] = {
            "driver": str(layer.format),
            "node-name": f"d{i}",
            "read-only": True,
            "file": {"driver": "file", "filename": str(layer.path), "read-only": True},
        }
        if layer.format == DiskFormat.QCOW2:
            node["backing"] = below  # None → JSON null: no backing, whatever the header says
        args += _blockdev(node)
        below = f"d{i}"
    args += _blockdev({
        "driver": "qcow2",
        "node-name": "root",
        "file": {"driver": "file", "filename": str(overlay)},
        "backing": below,
    })
    return args


def qemu_argv(qemu: str, desc: MachineDescription, files: MachineFiles) -> list[str]:
    """The full QEMU command line (pure). Device order and ids are fixed: they are part of the machine."""
    argv = [
        qemu, "-M", "microvm", "-accel", str(desc.accel), "-cpu", desc.cpu_model,
        "-smp", str(desc.cpus), "-m", f"{desc.memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(files.kernel), "-initrd", str(files.initramfs), "-append", desc.kernel_cmdline,
        "-chardev", f"file,id=ser0,path={files.serial_log}", "-serial", "chardev:ser0",
        "-qmp", f"unix:{files.qmp_socket},server=on,wait=off",
        "-pidfile", files.pidfile,
    ]
    if desc.memory_backend == MemoryBackend.FILE:
        if files.memory_file is None:
            raise ValueError("a file-backed machine needs a memory file")
        share = "on" if files.share_memory else "off"
        argv += ["-object", f"memory-backend-file,id=mem,size={desc.memory_mib}M,"
                            f"mem-path={_escape(str(files.memory_file))},share={share}"]
    else:
        argv += ["-object", f"memory-backend-ram,id=mem,size={desc.memory_mib}M"]
    argv += ["-machine", "memory-backend=mem"]
    argv += disk_args(files.chain, files.overlay)
    argv += ["-device", "virtio-blk-device,drive=root,id=disk0"]
    argv += [
        "-device", "virtio-serial-device,id=serial0",
        "-chardev", f"socket,id=agent,path={files.agent_socket},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME},id=port0",
    ]
    if desc.network:
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0,id=nic0"]
    if files.incoming:
        argv += ["-incoming", "defer"]
    return argv


def _escape(value: str) -> str:
    """QEMU option values escape a comma by doubling it."""
    return value.replace(",", ",,")
