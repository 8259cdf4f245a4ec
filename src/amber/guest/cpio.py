"""A writer for the cpio "newc" format the Linux kernel unpacks as an initramfs.

Hand-written (40 lines) rather than staging a tree for the cpio tool: the initramfs needs a device node
(/dev/console) that only root could create on disk, and the output must be byte-reproducible.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CpioEntry:
    name: str  # relative path, no leading slash
    mode: int  # including the file type bits
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0

    @classmethod
    def file(cls, name: str, data: bytes, perm: int) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def char_device(cls, name: str, perm: int, major: int, minor: int) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, b"", major, minor)


def _pad4(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _record(ino: int, entry: CpioEntry) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, entry.rdev_major, entry.rdev_minor, len(name), 0)
    header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    return header + name + _pad4(len(header) + len(name)) + entry.data + _pad4(len(entry.data))


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialize entries (uid/gid 0, mtime 0) followed by the TRAILER!!! record."""
    out = [_record(i + 1, e) for i, e in enumerate(entries)]
    out.append(_record(0, CpioEntry("TRAILER!!!", 0)))
    return b"".join(out)
