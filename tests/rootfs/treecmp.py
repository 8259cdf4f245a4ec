"""Compare file trees entry by entry, and read ext4 images through a read-only loop mount.

``snapshot`` records, per path: type, mode (incl. set-id/sticky), uid, gid, size, content hash, symlink
target and xattrs; plus the hard-link groups (paths sharing an inode). ``diff`` lists every difference.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str | None
    link: str | None
    xattrs: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Snapshot:
    entries: dict[str, Entry]
    hardlink_groups: frozenset[frozenset[str]]


def _type(mode: int) -> str:
    for check, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink")):
        if check(mode):
            return name
    return f"other({stat.S_IFMT(mode):o})"


def snapshot(root: Path, *, ignore: tuple[str, ...] = ("lost+found",)) -> Snapshot:
    entries: dict[str, Entry] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in ignore]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            kind = _type(st.st_mode)
            xattrs = tuple(sorted(
                (k, os.getxattr(path, k, follow_symlinks=False)) for k in os.listxattr(path, follow_symlinks=False)
            ))
            digest = None
            if kind == "file":
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, set()).add(rel)
            entries[rel] = Entry(
                kind,
                stat.S_IMODE(st.st_mode) if kind != "symlink" else 0,
                st.st_uid,
                st.st_gid,
                st.st_size if kind != "dir" else 0,
                digest,
                os.readlink(path) if kind == "symlink" else None,
                xattrs,
            )
    groups = frozenset(frozenset(g) for g in inodes.values() if len(g) > 1)
    return Snapshot(entries, groups)


def diff(expected: Snapshot, actual: Snapshot) -> list[str]:
    problems = []
    for path in sorted(set(expected.entries) | set(actual.entries)):
        want, got = expected.entries.get(path), actual.entries.get(path)
        if want is None:
            problems.append(f"unexpected {path}: {got}")
        elif got is None:
            problems.append(f"missing {path}: {want}")
        elif want != got:
            fields = [f for f in Entry.__dataclass_fields__ if getattr(want, f) != getattr(got, f)]
            problems.append(
                f"{path}: " + ", ".join(f"{f} expected {getattr(want, f)!r} got {getattr(got, f)!r}" for f in fields)
            )
    if expected.hardlink_groups != actual.hardlink_groups:
        problems.append(f"hard links: expected {sorted(map(sorted, expected.hardlink_groups))} "
                        f"got {sorted(map(sorted, actual.hardlink_groups))}")
    return problems


@contextmanager
def mounted_ro(disk: Path) -> Iterator[Path]:
    """Mount an ext4 image read-only (loop, no journal replay); always unmounted and removed on exit."""
    mountpoint = Path(tempfile.mkdtemp(prefix="amber-ext4-ro-"))
    try:
        subprocess.run(["mount", "-t", "ext4", "-o", "ro,loop,noload", str(disk), str(mountpoint)], check=True,
                       capture_output=True, timeout=60)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True, timeout=60)
    finally:
        mountpoint.rmdir()


def fsck_clean(disk: Path) -> str:
    """Run ``e2fsck -fn``; return its output if it found problems, else ""."""
    result = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True, timeout=120)
    return "" if result.returncode == 0 else result.stdout + result.stderr
