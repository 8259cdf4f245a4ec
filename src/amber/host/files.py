"""Removing what a dead process left: a file, a symlink or a whole tree, reporting what stayed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def remove(path: Path) -> str | None:
    """Remove ``path`` (a tree, never following symlinks out of it); None once it is gone, else why not."""
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
