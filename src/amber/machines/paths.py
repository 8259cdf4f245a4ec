"""Machine file paths (pure): the path rules and the FileInfo view of what the agent reports.

Path rules (machines-api.md §5.11): an absolute path is used as given (normalised: ``.``/``..`` folded, no
trailing slash); a relative one resolves from the machine's cwd when set, else from the user's home when a
``user`` is given, else from ``/workspace`` (or the template's workdir when the image has no ``/workspace``).
The agent resolves symlinks inside the guest's root, as that user, so no path reaches outside the guest.

FileInfo (M4) carries exactly ``name, path, is_dir, size, type, mode, permissions, owner, group, modified_time,
symlink_target``, and ``type`` is ``"dir"`` for directories.
"""

from __future__ import annotations

import errno
import posixpath
import stat as stat_bits
from typing import Any

from amber.contract.errors import InvalidRequest
from amber.machines.errors import FileProblem, MachineProblem, NotFoundProblem
from amber.vm import AgentError, FileStat, FileType

WORKSPACE = "/workspace"
MAX_LIST_DEPTH = 16


def resolve_path(path: str, *, cwd: str | None, home: str | None, fallback: str, field: str = "path") -> str:
    """The absolute, normalised guest path a request's ``path`` names (see the module docstring)."""
    if not isinstance(path, str) or path == "":
        raise InvalidRequest(field, "must be a non-empty path")
    if "\0" in path:
        raise InvalidRequest(field, "contains a NUL character")
    if not path.startswith("/"):
        base = cwd or home or fallback
        path = posixpath.join(base, path)
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/")


def home_of(user: str | None) -> str | None:
    """The conventional home of a named user (the agent's passwd lookup decides for exec; files use this)."""
    if not user:
        return None
    return "/root" if user in ("root", "0") else f"/home/{user.split(':', 1)[0]}"


def permissions_text(mode: int, kind: FileType) -> str:
    """``drwxr-xr-x``-style text."""
    type_bits = {FileType.DIR: stat_bits.S_IFDIR, FileType.SYMLINK: stat_bits.S_IFLNK}.get(kind, stat_bits.S_IFREG)
    return stat_bits.filemode(type_bits | (mode & 0o7777))


def file_info(entry: FileStat) -> dict[str, Any]:
    """The contract's FileInfo of one guest path (exactly its 11 keys)."""
    kind = entry.type if entry.type != FileType.OTHER else FileType.FILE
    return {
        "name": entry.name,
        "path": entry.path,
        "is_dir": entry.type == FileType.DIR,
        "size": entry.size,
        "type": str(kind),
        "mode": format(entry.mode & 0o7777, "04o"),
        "permissions": permissions_text(entry.mode, entry.type),
        "owner": entry.user if entry.user is not None else str(entry.uid),
        "group": entry.group if entry.group is not None else str(entry.gid),
        "modified_time": entry.mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "symlink_target": entry.symlink_target,
    }


def problem_of(exc: AgentError, what: str, path: str) -> MachineProblem:
    """The API answer to a refused file operation: a missing path is 404 ``not_found``, the rest 400."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and "user" not in str(exc).split(":", 1)[0]:
        return NotFoundProblem(f"{what} {path}: no such file or directory")
    reasons = {
        errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.EISDIR: "is a directory",
        errno.EEXIST: "already exists", errno.ENOTEMPTY: "directory not empty", errno.EXDEV: "crosses filesystems",
        errno.E2BIG: "too many entries", errno.EINVAL: "invalid argument", errno.ENOSPC: "no space left on device",
        errno.EROFS: "read-only file system", errno.EBUSY: "busy (a mount point)", errno.ELOOP: "too many symlinks",
        errno.ENAMETOOLONG: "name too long",
    }
    reason = reasons.get(exc.errno or 0) or str(exc)
    return FileProblem(f"{what} {path}: {reason}")
