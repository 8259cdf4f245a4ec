"""The ext4 root disk: ``mkfs.ext4 -d TREE -b 4096`` (e2fsprogs), sized from the tree.

Runs as root so ownership, modes, set-id bits, links and xattrs are copied exactly (fakeroot loses
xattrs). The size is the tree's block usage plus inode tables, 10 % and 64 MiB of headroom (journal,
metadata, room for the guest), at least ``min_size_mib``, rounded up to 4 MiB; if mkfs still runs out of
space the size grows by half and mkfs runs again (twice at most). The image is written to a temporary file
next to ``out`` and renamed into place, so ``out`` is never half-written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from amber.oci.errors import RootDiskError

MKFS = "mkfs.ext4"
BLOCK_SIZE = 4096
INODE_SIZE = 256
MIB = 1024 * 1024
DEFAULT_MIN_SIZE_MIB = 64
HEADROOM_BYTES = 64 * MIB
# Mount points the guest init recreates at boot (R37); present and empty in every disk.
MOUNT_POINTS = ("dev", "proc", "sys", "dev/pts", "dev/shm")
_MKFS_TIMEOUT_S = 600


@dataclass(frozen=True)
class TreeUsage:
    """What a tree needs on ext4 with 4 KiB blocks."""

    blocks: int
    inodes: int


def measure_tree(tree: Path) -> TreeUsage:
    """Blocks and inodes the tree's entries need (hard links counted once; short symlinks are inline)."""
    blocks = 1
    inodes = 1
    seen: set[int] = set()
    for dirpath, dirnames, filenames in os.walk(tree):
        blocks += (len(dirnames) + len(filenames)) * 48 // BLOCK_SIZE  # directory entries beyond the first block
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            inodes += 1
            if stat.S_ISREG(st.st_mode):
                blocks += -(-st.st_size // BLOCK_SIZE) + (1 if st.st_size > 12 * BLOCK_SIZE else 0)
            elif stat.S_ISDIR(st.st_mode) or (stat.S_ISLNK(st.st_mode) and st.st_size >= 60):
                blocks += 1
    return TreeUsage(blocks, inodes)


def disk_size_bytes(usage: TreeUsage, min_size_mib: int) -> tuple[int, int]:
    """(size in bytes, inode count) for a tree with ``usage``. Pure."""
    inode_count = max(int(usage.inodes * 1.25) + 1024, 4096)
    data = usage.blocks * BLOCK_SIZE
    size = int(data * 1.10) + inode_count * INODE_SIZE + HEADROOM_BYTES
    size = max(size, min_size_mib * MIB)
    size = -(-size // (4 * MIB)) * 4 * MIB
    # Never fewer inodes than mkfs would give by default (one per 16 KiB): the guest will create files.
    return size, max(inode_count, size // 16384)


def ensure_mount_points(tree: Path) -> None:
    """Create the empty mount points of R37 (/dev, /proc, /sys, /dev/pts, /dev/shm) if missing.

    An existing non-directory (or symlink) at one of these names is replaced: the guest mounts over it.
    """
    for relative in MOUNT_POINTS:
        path = tree / relative
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        if not path.exists():
            path.mkdir(mode=0o755)
            os.chmod(path, 0o1777 if relative == "dev/shm" else 0o755)
            os.chown(path, 0, 0)


def _run_mkfs(command: list[str], stop: threading.Event | None) -> tuple[int, str]:
    """Run mkfs; kill it (by PID) when ``stop`` is set or it overruns its timeout."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _MKFS_TIMEOUT_S
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                        raise RootDiskError(f"{MKFS} was stopped (cancelled or over {_MKFS_TIMEOUT_S} s)") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        return returncode, err.read().decode(errors="replace")


def make_ext4(
    tree: Path,
    out: Path,
    min_size_mib: int = DEFAULT_MIN_SIZE_MIB,
    *,
    label: str = "rootfs",
    stop: threading.Event | None = None,
) -> int:
    """Write an ext4 image of ``tree`` to ``out`` (replacing it atomically); returns its size in bytes.

    ``tree`` must be a directory whose root Amber owns; the mount points of R37 are created in it first.
    Setting ``stop`` (from another thread) kills mkfs and leaves ``out`` untouched.
    """
    if shutil.which(MKFS) is None:
        raise RootDiskError(f"{MKFS} not found: install the Debian package e2fsprogs")
    if not tree.is_dir():
        raise RootDiskError(f"root tree {tree} is not a directory")
    ensure_mount_points(tree)
    size, inodes = disk_size_bytes(measure_tree(tree), min_size_mib)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for _attempt in range(3):
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            command = [
                MKFS, "-q", "-F", "-t", "ext4", "-b", str(BLOCK_SIZE), "-I", str(INODE_SIZE), "-N", str(inodes),
                "-L", label, "-E", "root_owner=0:0", "-d", str(tree), str(staging), f"{size // 1024}k",
            ]
            returncode, stderr = _run_mkfs(command, stop)
            if returncode == 0:
                os.chmod(staging, 0o600)  # a root disk holds users' files: readable by the server only
                os.replace(staging, out)
                return size
            if "Could not allocate" not in stderr and "No space" not in stderr:
                raise RootDiskError(f"{MKFS} failed ({returncode}): {stderr.strip()[-2000:]}")
            size = -(-(size * 3 // 2) // (4 * MIB)) * 4 * MIB
            inodes = int(inodes * 1.5)
        raise RootDiskError(f"{MKFS} ran out of space three times for {tree} (last size {size // MIB} MiB)")
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()


def copy_disk(source: Path, destination: Path) -> None:
    """Copy a (sparse) disk image, keeping its holes; ``destination`` appears atomically when complete.

    Data extents are found with SEEK_DATA/SEEK_HOLE and copied in the kernel with copy_file_range.
    """
    staging = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with source.open("rb") as src, staging.open("wb") as dst:
            size = os.fstat(src.fileno()).st_size
            dst.truncate(size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole remains
                        break
                    raise
                end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
                position = start
                while position < end:
                    copied = os.copy_file_range(src.fileno(), dst.fileno(), end - position, position, position)
                    if copied == 0:
                        raise RootDiskError(f"copying {source} stopped early at byte {position}")
                    position += copied
                offset = end
        os.replace(staging, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
