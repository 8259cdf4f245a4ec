"""``flock`` on lock files that may be removed: the locks every Amber cache uses (layers, disks, build cache).

A lock file is only removed by a holder of its exclusive lock (the cache evictor, after removing the entry).
Someone who opened the file just before that would otherwise hold a lock on an unlinked inode that nobody
else sees, so every acquisition checks, once locked, that the path still names the inode it locked, and
retries otherwise. Locks are released when their descriptor is closed or the holder dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

_POLL_SECS = 0.05


def try_lock(path: Path, *, shared: bool = False) -> int | None:
    """Lock ``path`` (created if missing) without waiting: the descriptor, or None when another holder's lock
    conflicts. Close the descriptor (``unlock``) to release."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # removed (and maybe recreated) while we waited: lock the current file instead


async def lock(path: Path, *, shared: bool = False) -> int:
    """Lock ``path``, polling without blocking the event loop (cancel-safe: nothing is held on cancel)."""
    while True:
        fd = try_lock(path, shared=shared)
        if fd is not None:
            return fd
        await asyncio.sleep(_POLL_SECS)


def unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether anyone holds a lock on ``path`` (a momentary answer; the evictor re-checks by locking)."""
    if not path.exists():
        return False
    fd = try_lock(path)
    if fd is None:
        return True
    unlock(fd)
    return False


def remove_locked(path: Path, fd: int) -> None:
    """Remove the lock file ``path`` while holding its exclusive lock ``fd``, then release it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    unlock(fd)
