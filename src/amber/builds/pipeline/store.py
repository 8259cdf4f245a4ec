"""The build cache on disk: base disks, step layers and final artifacts, content-addressed by planning keys.

Layout under ``<data_dir>/cache``::

    base/<key>.raw            ext4 root disk of an imported image (read-only once published)
    base/<key>.chain/         a parent template's disk chain (hard links), for builds on a template
    layers/<key>.qcow2        one step's disk changes over its parent (the VM driver links the chain
                              explicitly, so header backing paths do not matter)
    final/<key>/              a finished artifact (hard links), restorable as is

Guarantees: an entry is visible only once complete — ``<path>.ok`` is written (and fsynced) after the entry is
frozen; readers trust nothing without it. Entries are immutable and never replaced, because later layers and
artifacts reference them by path. A build that wants to create an entry first takes ``<path>.lock``
(``flock``, released on process death); a leftover entry without ``.ok`` and without a lock holder is debris
from a killed build and is removed. No eviction yet: the cache grows until an operator clears it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import IO


def _hex(key: str) -> str:
    return key.removeprefix("sha256:")


class CacheStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("base", "layers", "final"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def base_path(self, key: str) -> Path:
        return self.root / "base" / f"{_hex(key)}.raw"

    def template_base_path(self, key: str) -> Path:
        return self.root / "base" / f"{_hex(key)}.chain"

    def layer_path(self, key: str) -> Path:
        return self.root / "layers" / f"{_hex(key)}.qcow2"

    def final_path(self, key: str) -> Path:
        return self.root / "final" / _hex(key)

    @staticmethod
    def is_complete(path: Path) -> bool:
        return Path(f"{path}.ok").exists() and path.exists()

    @staticmethod
    def mark_complete(path: Path) -> None:
        marker = Path(f"{path}.ok")
        with marker.open("w") as handle:
            handle.write("ok\n")
            handle.flush()
            os.fsync(handle.fileno())

    def claim(self, path: Path) -> EntryClaim | None:
        """Lock ``path`` for creation. None when another live build holds it; debris is removed first."""
        lock = Path(f"{path}.lock").open("a+")  # noqa: SIM115 - held open by the EntryClaim until release()
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        if self.is_complete(path):
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            lock.close()
            return None
        _remove(path)
        return EntryClaim(path, lock)


class EntryClaim:
    """The right to create one cache entry. ``publish()`` makes it visible; ``release()`` (always call it)
    drops the lock and removes an unpublished entry."""

    def __init__(self, path: Path, lock: IO[str]) -> None:
        self.path = path
        self._lock = lock
        self.published = False

    def publish(self) -> None:
        CacheStore.mark_complete(self.path)
        self.published = True

    def release(self) -> None:
        if self._lock.closed:
            return
        if not self.published:
            _remove(self.path)
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        self._lock.close()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    Path(f"{path}.ok").unlink(missing_ok=True)
