"""Removing what a dead process left: a file, a symlink or a whole tree, reporting what stayed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from amber.host.mounts import mounts_under, unmount


def remove(path: Path) -> str | None:
    """Remove ``path``; None once it is gone, else why not. A tree is unmounted first, deepest mount first (a dead
    owner's mounts are debris too, and deleting through a bind mount would delete what it shows); symlinks are
    removed, never followed."""
    if path.is_dir() and not path.is_symlink():
        for mount in mounts_under(path):
            problem = unmount(mount)
            if problem is not None:
                return f"{mount} cannot be unmounted: {problem}"
    errors: list[str] = []

    def failed(_function: object, where: str, info: tuple[type[BaseException], BaseException, object]) -> None:
        errors.append(f"{where}: {info[1]}")

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=failed)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            errors.append(str(error))
    if not os.path.lexists(path):
        return None
    return errors[0] if errors else "still there"
