"""``User`` resolution against an image's own files (R35). Pure but for reading the tree.

``resolve_user`` turns ``User`` (``user``, ``uid``, ``user:group``, ``user:gid``, ``uid:group``, ``uid:gid``; empty
= root) into numeric ids using the image's /etc/passwd and /etc/group text: names must exist there, numeric ids
need not (a uid without a passwd entry gets gid 0 and home ``/``, as Docker does). ``resolve_user_in_tree`` reads
those files from an unpacked tree, following symlinks inside the tree only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amber.oci.errors import ImageConfigError
from amber.rootfs.paths import PathEscapeError, host_path, resolve_in_root

_MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class UserSpec:
    """A parsed ``User`` string: each part is a numeric id or a name; ``group`` None = the user's own."""

    user: int | str
    group: int | str | None = None


@dataclass(frozen=True)
class ResolvedUser:
    """Numeric identity to run processes as."""

    uid: int
    gid: int
    name: str | None = None
    home: str = "/"
    supplementary_gids: tuple[int, ...] = ()


def _id_or_name(text: str, what: str, spec: str) -> int | str:
    if not text:
        raise ImageConfigError(f"User {spec!r}: the {what} part is empty")
    if text.isdigit():
        value = int(text)
        if value > _MAX_ID:
            raise ImageConfigError(f"User {spec!r}: {what} id {value} is out of range")
        return value
    if any(c in text for c in ":\n\0") or text.startswith("-"):
        raise ImageConfigError(f"User {spec!r}: invalid {what} name {text!r}")
    return text


def parse_user_spec(text: str) -> UserSpec:
    """Parse the six accepted forms (R35); empty means root."""
    if text == "":
        return UserSpec(0)
    user, sep, group = text.partition(":")
    if sep and ":" in group:
        raise ImageConfigError(f"User {text!r}: expected user, uid, user:group, user:gid, uid:group or uid:gid")
    return UserSpec(_id_or_name(user, "user", text), _id_or_name(group, "group", text) if sep else None)


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


def _passwd_entries(passwd: str) -> list[_PasswdEntry]:
    entries = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        try:
            home = fields[5] if len(fields) > 5 else "/"
            entries.append(_PasswdEntry(fields[0], int(fields[2]), int(fields[3]), home))
        except ValueError:
            continue
    return entries


def _group_entries(group: str) -> list[tuple[str, int, list[str]]]:
    entries = []
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            members = [m for m in fields[3].split(",") if m] if len(fields) > 3 else []
            entries.append((fields[0], int(fields[2]), members))
        except ValueError:
            continue
    return entries


def resolve_user(text: str, passwd: str, group: str) -> ResolvedUser:
    """Resolve ``User`` against the image's /etc/passwd and /etc/group contents."""
    spec = parse_user_spec(text)
    users = _passwd_entries(passwd)
    groups = _group_entries(group)
    entry: _PasswdEntry | None
    if isinstance(spec.user, int):
        entry = next((u for u in users if u.uid == spec.user), None)
        uid = spec.user
    else:
        entry = next((u for u in users if u.name == spec.user), None)
        if entry is None:
            raise ImageConfigError(f"User {text!r}: no user named {spec.user!r} in the image's /etc/passwd")
        uid = entry.uid
    gid = entry.gid if entry is not None else 0
    if isinstance(spec.group, int):
        gid = spec.group
    elif isinstance(spec.group, str):
        found = next((g for g in groups if g[0] == spec.group), None)
        if found is None:
            raise ImageConfigError(f"User {text!r}: no group named {spec.group!r} in the image's /etc/group")
        gid = found[1]
    name = entry.name if entry is not None else None
    supplementary = tuple(sorted({g[1] for g in groups if name is not None and name in g[2] and g[1] != gid}))
    return ResolvedUser(uid, gid, name, entry.home if entry is not None and entry.home else "/", supplementary)


def _read_in_tree(tree: Path, relative: str) -> str:
    """Read a file of the image, following its symlinks inside the tree only; "" when absent."""
    try:
        parts = resolve_in_root(str(tree), relative.split("/"), follow_last=True)
        with open(host_path(str(tree), parts), encoding="utf-8", errors="replace") as f:
            return f.read(16 * 1024 * 1024)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PathEscapeError):
        return ""


def resolve_user_in_tree(text: str, tree: Path) -> ResolvedUser:
    """:func:`resolve_user` with /etc/passwd and /etc/group read from an unpacked image tree."""
    return resolve_user(text, _read_in_tree(tree, "etc/passwd"), _read_in_tree(tree, "etc/group"))
