"""Size-bounded, least-recently-used eviction of every cache under ``<data_dir>/cache``.

The pool: image layer blobs (``cache/layers/sha256/<hex>``), imported root disks (``cache/disks/*.ext4``) and
the build cache (``cache/build/{base,layers,final}``, see ``store.py``). ``scan`` turns them into
``CacheEntry`` values (files by inode, last use, parent links, whether a lock holder uses them now);
``amber.builds.planning.eviction.plan_eviction`` decides; ``prune`` removes, each entry only while holding its
lock exclusively (so never under a running build or import) and only when it is still what was planned
(same generation, still idle). When an entry cannot be removed, its ancestors are kept too. Template
artifacts (``<data_dir>/artifacts``) are never touched: a file they hard-link is kept alive by them, and
counts as nothing the cache can free.

``prune`` also clears debris: entries without marker and lock holder (killed builds), markers and lock files
without entry, and downloads or disk images abandoned in ``cache/layers/tmp`` or ``cache/disks`` for over an
hour.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from amber.builds.pipeline.store import SUBDIRS, read_marker, remove_entry
from amber.builds.planning.eviction import CacheEntry, CacheFile, EvictionPlan, cache_bytes, plan_eviction
from amber.oci import cache_locks

log = logging.getLogger("amber.cache")

_PARTIAL_MAX_AGE_SECS = 3600.0
_KINDS = ("layer blobs", "root disks", "base disks", "step layers", "final artifacts")


@dataclass(frozen=True)
class ScannedEntry:
    entry: CacheEntry
    kind: str  # one of _KINDS
    path: Path  # the entry (file or directory)
    locks: tuple[Path, ...]  # taken exclusively, in this order, to remove it
    marker: Path | None = None  # the file whose mtime is the last use, when not the entry itself
    generation: str | None = None


@dataclass
class Inventory:
    entries: dict[str, ScannedEntry] = field(default_factory=dict)
    files: dict[Hashable, CacheFile] = field(default_factory=dict)

    def plan_input(self) -> list[CacheEntry]:
        return [s.entry for s in self.entries.values()]


@dataclass(frozen=True)
class KindUsage:
    kind: str
    entries: int
    bytes: int  # freeable bytes of these entries' files (a file shared with an earlier kind counts there)


@dataclass(frozen=True)
class PruneReport:
    max_bytes: int
    bytes_before: int
    bytes_after: int
    evicted: tuple[str, ...]
    skipped: tuple[str, ...]  # planned, but in use by the time they were to be removed
    debris: int
    busy: bool = False  # another prune was running: nothing done

    @property
    def freed_bytes(self) -> int:
        return self.bytes_before - self.bytes_after


# (id, kind, path, locks, marker, parent id, generation, valid)
_Raw = tuple[str, str, Path, tuple[Path, ...], Path | None, str | None, str | None, bool]


def cache_root(data_dir: Path) -> Path:
    return data_dir / "cache"


# --- scanning ---------------------------------------------------------------------------------------------------


def _files_of(path: Path) -> Iterator[os.stat_result]:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if path.is_dir() and not path.is_symlink():
        for dirpath, _dirs, names in os.walk(path):
            for name in names:
                try:
                    sub = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield sub
    else:
        yield st


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def scan(data_dir: Path) -> Inventory:
    """Every complete cache entry with its files, last use, parent and whether it is in use right now."""
    root = cache_root(data_dir)
    raw: list[_Raw] = []

    blobs = root / "layers"
    for blob in sorted((blobs / "sha256").glob("*")) if (blobs / "sha256").is_dir() else []:
        if len(blob.name) != 64:
            continue
        locks: tuple[Path, ...] = (blobs / "locks" / f"{blob.name}.use", blobs / "locks" / f"{blob.name}.lock")
        raw.append((f"blob:{blob.name}", _KINDS[0], blob, locks, None, None, None, True))
    disks = root / "disks"
    for disk in sorted(disks.glob("*.ext4")) if disks.is_dir() else []:
        raw.append((f"disk:{disk.name}", _KINDS[1], disk, (disk.with_name(f"{disk.name}.lock"),), None, None, None,
                    True))  # fmt: skip

    build = root / "build"
    kinds = {"base": _KINDS[2], "layers": _KINDS[3], "final": _KINDS[4]}
    generations: dict[str, str | None] = {}
    pending: list[tuple[str, Path, str, str | None, str | None, bool]] = []
    for sub in SUBDIRS:
        directory = build / sub
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.endswith((".ok", ".lock")):
                continue
            marker = read_marker(path)
            if marker is None:
                continue  # being created, or debris (see clear_debris)
            entry_id = f"{sub}/{path.name}"
            generations[entry_id] = marker.generation
            # Entries from before parents were recorded cannot be checked: layers and finals among them go.
            known = not (marker.legacy and sub != "base")
            pending.append((entry_id, path, sub, marker.parent, marker.parent_generation, known))
    for entry_id, path, sub, parent, parent_generation, known in pending:
        valid = known and (parent is None or (parent in generations and generations[parent] == parent_generation))
        raw.append((f"build:{entry_id}", kinds[sub], path, (Path(f"{path}.lock"),), Path(f"{path}.ok"),
                    f"build:{parent}" if parent is not None else None, generations.get(entry_id), valid))  # fmt: skip

    inventory = Inventory()
    inode_paths: dict[Hashable, int] = {}
    inode_stat: dict[Hashable, os.stat_result] = {}
    entry_files: dict[str, frozenset[Hashable]] = {}
    for entry_id, _kind, path, _locks, _marker, _parent, _gen, _valid in raw:
        keys: set[Hashable] = set()
        for st in _files_of(path):
            key: Hashable = (st.st_dev, st.st_ino)
            keys.add(key)
            inode_paths[key] = inode_paths.get(key, 0) + 1
            inode_stat[key] = st
        entry_files[entry_id] = frozenset(keys)
    for inode, st in inode_stat.items():
        inventory.files[inode] = CacheFile(size=st.st_blocks * 512, linked_outside=st.st_nlink > inode_paths[inode])
    for entry_id, kind, path, locks, marker_path, parent, generation, valid in raw:
        in_use = any(cache_locks.is_locked(lock) for lock in locks)
        last_used = _mtime(marker_path if marker_path is not None else path)
        entry = CacheEntry(entry_id, entry_files[entry_id], last_used, parent, in_use, valid)
        inventory.entries[entry_id] = ScannedEntry(entry, kind, path, locks, marker_path, generation)
    return inventory


def usage(data_dir: Path) -> tuple[int, list[KindUsage]]:
    """(bytes the whole cache could free, per kind: entries and bytes)."""
    inventory = scan(data_dir)
    per_kind = []
    counted: set[Hashable] = set()
    for kind in _KINDS:  # a file several kinds hold (a final artifact links its layers) counts for the first
        entries = [s.entry for s in inventory.entries.values() if s.kind == kind]
        held = set().union(*(e.files for e in entries)) - counted
        counted |= held
        size = sum(inventory.files[f].size for f in held if not inventory.files[f].linked_outside)
        per_kind.append(KindUsage(kind, len(entries), size))
    return cache_bytes(inventory.plan_input(), inventory.files), per_kind


# --- removing ---------------------------------------------------------------------------------------------------


def prune(data_dir: Path, *, max_bytes: int, min_idle_secs: float, now: float | None = None) -> PruneReport:
    """Evict until the cache holds at most ``max_bytes`` (0: only invalid entries and debris go)."""
    root = cache_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    guard = cache_locks.try_lock(root / "prune.lock")
    if guard is None:
        return PruneReport(max_bytes, 0, 0, (), (), 0, busy=True)
    try:
        debris = clear_debris(data_dir)
        inventory = scan(data_dir)
        now = time.time() if now is None else now
        plan = plan_eviction(
            inventory.plan_input(), inventory.files, max_bytes=max_bytes, now=now, min_idle_secs=min_idle_secs
        )
        evicted, skipped = _execute(plan, inventory, min_idle_secs)
        remaining = [s.entry for i, s in inventory.entries.items() if i not in set(evicted)]
        report = PruneReport(max_bytes, plan.bytes_before, cache_bytes(remaining, inventory.files),
                             tuple(evicted), tuple(skipped), debris)  # fmt: skip
    finally:
        cache_locks.unlock(guard)
    if report.evicted or report.debris:
        log.info("cache pruned: %d entries evicted, %d debris removed, %d -> %d bytes (limit %s)",
                 len(report.evicted), report.debris, report.bytes_before, report.bytes_after,
                 max_bytes or "none")  # fmt: skip
    return report


def _execute(plan: EvictionPlan, inventory: Inventory, min_idle_secs: float) -> tuple[list[str], list[str]]:
    children: dict[str, set[str]] = {}
    for scanned in inventory.entries.values():
        if scanned.entry.parent is not None:
            children.setdefault(scanned.entry.parent, set()).add(scanned.entry.id)
    evicted: list[str] = []
    gone: set[str] = set()
    skipped: list[str] = []
    for entry_id in plan.evict:
        scanned = inventory.entries[entry_id]
        if children.get(entry_id, set()) - gone:  # a child could not be removed: its chain stays
            skipped.append(entry_id)
            continue
        if not _remove(scanned, min_idle_secs):
            skipped.append(entry_id)
            continue
        gone.add(entry_id)
        evicted.append(entry_id)
        why = "invalid (its parent is gone or was rebuilt)" if entry_id in plan.invalid else "least recently used"
        log.info("evicted %s %s: %s", scanned.kind, entry_id, why)
    return evicted, skipped


def _remove(scanned: ScannedEntry, min_idle_secs: float) -> bool:
    """Remove one entry while holding all of its locks exclusively, if it is still what was planned."""
    fds: list[int] = []
    try:
        for lock in scanned.locks:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = cache_locks.try_lock(lock)
            if fd is None:
                return False  # in use now
            fds.append(fd)
        if scanned.marker is not None:
            marker = read_marker(scanned.path)
            if marker is None or marker.generation != scanned.generation:
                return False  # replaced since the scan
        last_use = _mtime(scanned.marker if scanned.marker is not None else scanned.path)
        if time.time() - last_use < min_idle_secs:
            return False  # used since the scan
        if scanned.marker is not None:
            remove_entry(scanned.path)
        else:
            scanned.path.unlink(missing_ok=True)
        for lock, fd in zip(scanned.locks, fds, strict=True):
            cache_locks.remove_locked(lock, fd)
        fds.clear()
        return True
    finally:
        for fd in fds:
            cache_locks.unlock(fd)


def clear_debris(data_dir: Path) -> int:
    """Remove what killed builds and downloads left behind (never anything with a live lock holder)."""
    root = cache_root(data_dir)
    removed = 0
    build = root / "build"
    for sub in SUBDIRS:
        directory = build / sub
        if not directory.is_dir():
            continue
        names = {p.name for p in directory.iterdir()}
        bases = {n.removesuffix(".ok").removesuffix(".lock") for n in names}
        for base in sorted(bases):
            path = directory / base
            if base in names and f"{base}.ok" in names:
                continue  # complete
            lock = directory / f"{base}.lock"
            fd = cache_locks.try_lock(lock)
            if fd is None:
                continue  # a live build is creating it
            if read_marker(path) is None:  # not published meanwhile
                if base in names or f"{base}.ok" in names:
                    removed += 1
                remove_entry(path)
                cache_locks.remove_locked(lock, fd)
            else:
                cache_locks.unlock(fd)
    blobs = root / "layers"
    locks = blobs / "locks"
    if locks.is_dir():
        for lock in sorted(locks.iterdir()):
            digest = lock.name.removesuffix(".lock").removesuffix(".use")
            if (blobs / "sha256" / digest).exists():
                continue
            fd = cache_locks.try_lock(lock)
            if fd is not None:
                cache_locks.remove_locked(lock, fd)
    tmp = blobs / "tmp"
    if tmp.is_dir():
        for partial in tmp.glob("*.partial"):
            if time.time() - _mtime(partial) > _PARTIAL_MAX_AGE_SECS:
                partial.unlink(missing_ok=True)
                removed += 1
    disks = root / "disks"
    if disks.is_dir():
        for staged in disks.glob(".*.tmp"):  # mkfs output of a killed import (renamed into place when done)
            if time.time() - _mtime(staged) > _PARTIAL_MAX_AGE_SECS:
                staged.unlink(missing_ok=True)
                removed += 1
        for lock in sorted(disks.glob("*.lock")):
            if lock.with_name(lock.name.removesuffix(".lock")).exists():
                continue
            fd = cache_locks.try_lock(lock)
            if fd is not None:
                cache_locks.remove_locked(lock, fd)
    return removed
