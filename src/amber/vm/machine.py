"""What a VM is, as data (pure): its disk chain and the machine description.

``MachineDescription`` holds every setting that must be identical between a snapshot and its restores
(QEMU version, accelerator, CPU model, vCPUs, memory size and backend, devices, kernel and its command
line); ``DiskChain`` is the root disk as immutable layers. The QEMU command line built from them lives in
``amber.vm.qemu.argv``.
"""

from __future__ import annotations

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
