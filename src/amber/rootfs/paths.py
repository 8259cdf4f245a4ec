"""Path resolution inside a root directory, as a chroot would see it (the core of layer-unpacking safety).

Symlinks met while walking are followed *within* the root: an absolute target restarts at the root and
``..`` never climbs above it, so no resolved path can leave the tree. The functions assume nothing else
modifies the tree concurrently (Amber owns its unpack targets).
"""

from __future__ import annotations

import os
import stat

_MAX_SYMLINKS = 40


class PathEscapeError(ValueError):
    """A name cannot be interpreted inside the root (kept internal; callers turn it into a layer error)."""


def split_relative(name: str) -> list[str]:
    """Components of a tar member name relative to the root: ``./`` and leading ``/`` dropped.

    Raises :class:`PathEscapeError` when a ``..`` component would climb above the root lexically.
    """
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathEscapeError(name)
            parts.pop()
            continue
        parts.append(part)
    return parts


def resolve_in_root(
    root: str, parts: list[str], *, follow_last: bool, known_dirs: set[str] | None = None
) -> list[str]:
    """The real components (no symlinks, except the last unless ``follow_last``) of ``parts`` under ``root``.

    Missing components are kept as they are (the caller may create them). Symlink loops raise
    :class:`PathEscapeError`. ``known_dirs`` (host paths known to be real directories, not symlinks) saves
    an lstat per component; it is extended with what this walk finds, and is valid only while the caller
    keeps it in step with its own changes to the tree.
    """
    resolved: list[str] = []
    pending = list(reversed(parts))
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        if not pending and not follow_last:
            resolved.append(part)
            break
        candidate = root + "/" + "/".join([*resolved, part])
        if known_dirs is not None and candidate in known_dirs:
            resolved.append(part)
            continue
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise PathEscapeError("too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending.extend(reversed(target.split("/")))
            continue
        if known_dirs is not None and stat.S_ISDIR(st.st_mode):
            known_dirs.add(candidate)
        resolved.append(part)
    return resolved


def host_path(root: str, parts: list[str]) -> str:
    """The host path of resolved ``parts`` (spelled exactly as ``resolve_in_root`` spells its candidates)."""
    return root + "/" + "/".join(parts) if parts else root
