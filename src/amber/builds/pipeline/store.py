"""The build cache on disk: base disks, step layers and final artifacts, content-addressed by planning keys.

Layout under ``<data_dir>/cache/build``::

    base/<key>.raw            ext4 root disk of an imported image (read-only once published)
    base/<key>.chain/         a parent template's disk chain (hard links), for builds on a template
    layers/<key>.qcow2        one step's disk changes over its parent (the VM driver links the chain
                              explicitly, so header backing paths do not matter)
    final/<key>/              a finished artifact (hard links), restorable as is

Guarantees: an entry is visible only once complete — ``<path>.ok`` is written (and fsynced) after the entry is
frozen; readers trust nothing without it. The marker records the entry's *generation* (random, new for every
publication), its *parent* entry (the file it is a delta over: the previous step's layer or the base; for a
final artifact the last layer) and the parent's generation. An entry is valid only while its parent exists
with that same generation: a layer is a qcow2 delta over the exact ancestor files it was built on, so after its
parent was evicted and rebuilt (same key, other bytes) it is stale and is treated as a miss and replaced.

Locks: ``<path>.lock`` (``flock``, released on process death). A build creating an entry holds it exclusively
(``claim``) until it publishes, then shared until the build ends; a build using a hit holds it shared
(``use``). The evictor (``amber.builds.pipeline.prune``) removes an entry only while holding it exclusively, so
nothing a running build creates or uses is ever removed. A leftover entry without ``.ok`` and without a lock
holder is debris from a killed build and is removed by the next claimant (or the evictor). ``use`` refreshes the
marker's mtime: that is the entry's last use for least-recently-used eviction.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from amber.oci import cache_locks

SUBDIRS = ("base", "layers", "final")


def _hex(key: str) -> str:
    return key.removeprefix("sha256:")


@dataclass(frozen=True)
class Marker:
    """What ``<entry>.ok`` records. ``legacy``: written before parents were recorded (``ok``)."""

    generation: str | None
    parent: str | None  # entry id (path relative to the cache root), None for a base
    parent_generation: str | None
    legacy: bool = False

    def to_json(self) -> str:
        data = {"generation": self.generation, "parent": self.parent, "parent_generation": self.parent_generation}
        return json.dumps(data, sort_keys=True) + "\n"


def read_marker(path: Path) -> Marker | None:
    """The marker of entry ``path``, or None when the entry is not complete."""
    try:
        text = Path(f"{path}.ok").read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not path.exists():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return Marker(None, None, None, legacy=True)
    return Marker(data.get("generation"), data.get("parent"), data.get("parent_generation"))


class CacheStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in SUBDIRS:
            (root / sub).mkdir(parents=True, exist_ok=True)

    def base_path(self, key: str) -> Path:
        return self.root / "base" / f"{_hex(key)}.raw"

    def template_base_path(self, key: str) -> Path:
        return self.root / "base" / f"{_hex(key)}.chain"

    def layer_path(self, key: str) -> Path:
        return self.root / "layers" / f"{_hex(key)}.qcow2"

    def final_path(self, key: str) -> Path:
        return self.root / "final" / _hex(key)

    def entry_id(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    @staticmethod
    def is_complete(path: Path) -> bool:
        return read_marker(path) is not None

    def is_valid(self, path: Path, parent: EntryHold | None) -> bool:
        """Complete, and built on exactly ``parent`` (None: a base, built on nothing)."""
        marker = read_marker(path)
        if marker is None:
            return False
        if parent is None:
            return marker.parent is None
        return (
            not marker.legacy
            and marker.parent == self.entry_id(parent.path)
            and marker.parent_generation == parent.generation
        )

    def use(self, path: Path, parent: EntryHold | None = None) -> EntryUse | None:
        """A hit: hold ``path`` (shared) for as long as this build uses it, or None when it is not a valid entry
        over ``parent`` (missing, being created, or stale). Refreshes the entry's last use."""
        if not self.is_valid(path, parent):
            return None
        fd = cache_locks.try_lock(Path(f"{path}.lock"), shared=True)
        if fd is None:
            return None  # being created (or removed) right now
        marker = read_marker(path)  # checked again under the lock: it may have been evicted meanwhile
        if marker is None or not self.is_valid(path, parent):
            cache_locks.unlock(fd)
            return None
        touch_marker(path)
        return EntryUse(path, marker.generation, fd)

    def claim(self, path: Path, parent: EntryHold | None = None) -> EntryClaim | None:
        """Lock ``path`` for creation over ``parent``. None when another live build holds it or a valid entry
        exists; debris and stale entries (built over another parent) are removed first."""
        fd = cache_locks.try_lock(Path(f"{path}.lock"))
        if fd is None:
            return None
        if self.is_valid(path, parent):
            cache_locks.unlock(fd)
            return None
        remove_entry(path)
        parent_id = self.entry_id(parent.path) if parent is not None else None
        marker = Marker(uuid.uuid4().hex, parent_id, parent.generation if parent is not None else None)
        return EntryClaim(path, marker, fd)


class EntryHold:
    """A lock on one cache entry held by a running build; ``release()`` (always call it) drops it."""

    def __init__(self, path: Path, generation: str | None, fd: int) -> None:
        self.path = path
        self.generation = generation
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            cache_locks.unlock(fd)


class EntryUse(EntryHold):
    """A valid entry this build reads (a hit)."""


class EntryClaim(EntryHold):
    """The right to create one cache entry. ``publish()`` makes it visible; ``release()`` drops the lock and
    removes an unpublished entry."""

    def __init__(self, path: Path, marker: Marker, fd: int) -> None:
        super().__init__(path, marker.generation, fd)
        self.marker = marker
        self.published = False

    def publish(self) -> None:
        marker = Path(f"{self.path}.ok")
        with marker.open("w") as handle:
            handle.write(self.marker.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        self.published = True
        if self._fd is not None:  # other builds may use it now; the evictor still may not
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None and not self.published:
            remove_entry(self.path)
        super().release()


def touch_marker(path: Path) -> None:
    now = time.time()
    with contextlib.suppress(OSError):
        os.utime(f"{path}.ok", (now, now))


def remove_entry(path: Path) -> None:
    """Remove an entry and its marker (the marker first: a reader never sees a complete-looking half entry)."""
    Path(f"{path}.ok").unlink(missing_ok=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
