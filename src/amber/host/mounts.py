"""Mount points under a directory (``/proc/self/mountinfo``, this process's mount namespace) and unmounting them.
Bind mounts of the same file system count as mount points (``os.path.ismount`` misses those)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [_unescape(line.split()[4]) for line in info if len(line.split()) > 4]


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` (resolved), deepest first: the order to unmount them in."""
    root = str(directory.resolve())
    found = {p for p in mount_points() if p == root or p.startswith(root + "/")}
    return [Path(p) for p in sorted(found, key=lambda p: (p.count("/"), p), reverse=True)]


def is_mount_point(path: Path) -> bool:
    return str(path.resolve()) in set(mount_points())


def unmount(path: Path) -> str | None:
    """Unmount ``path`` (every mount stacked on it); if it is busy, detach it lazily. Returns None when it is no
    longer a mount point, else why not."""
    error = ""
    for _ in range(16):
        if not is_mount_point(path):
            return None
        result = subprocess.run(["umount", str(path)], check=False, capture_output=True, text=True)
        if result.returncode != 0:
            error = result.stderr.strip()
            lazy = subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, text=True)
            if lazy.returncode != 0:
                return lazy.stderr.strip() or error or f"umount exited with {lazy.returncode}"
    return None if not is_mount_point(path) else f"still mounted after 16 unmounts ({error or 'stacked mounts'})"
