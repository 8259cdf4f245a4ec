"""The build context on the host, and Docker COPY semantics turned into guest file operations.

``BuildContextFiles`` maps every context path (listed or implied parent) to where its bytes are: an uploaded
blob file (``BuildJob.blob_paths``) or inline ``content_base64``. ``copy_operations`` is pure: a ``CopyOp`` →
the directories and files to create in the guest, following Docker's COPY rules: a file source lands at
``dst`` (or ``dst/<name>`` when ``dst`` ends with ``/`` or there are several sources), a directory source's
*contents* land in ``dst``; ``--chmod`` applies to everything copied, ``--chown`` (default root) likewise.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from amber.builds.planning.steps import CopyOp, copy_destination
from amber.contract.sources import BuildContextFile

DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755


class ContextError(ValueError):
    """A copy names something the build context cannot provide (missing blob, unknown path)."""


@dataclass(frozen=True)
class ContextEntry:
    path: str
    is_dir: bool
    mode: int | None
    blob: Path | None = None
    inline: bytes | None = None

    def read(self) -> bytes:
        if self.inline is not None:
            return self.inline
        if self.blob is not None:
            return self.blob.read_bytes()
        return b""

    def sha256(self) -> str:
        if self.inline is not None:
            return "sha256:" + hashlib.sha256(self.inline).hexdigest()
        digest = hashlib.sha256()
        if self.blob is not None:
            with self.blob.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return "sha256:" + digest.hexdigest()


class BuildContextFiles:
    """All context entries by normalised path; parents missing from the list are implied directories."""

    def __init__(self, files: Sequence[BuildContextFile], blob_paths: Mapping[str, Path]) -> None:
        self.entries: dict[str, ContextEntry] = {}
        for f in files:
            path = f.path.rstrip("/")
            mode = int(f.mode, 8) if f.mode else None
            if f.entry_type == "dir":
                self.entries[path] = ContextEntry(path, True, mode)
                continue
            if f.content_base64 is not None:
                entry = ContextEntry(path, False, mode, inline=base64.b64decode(f.content_base64))
            else:
                blob = blob_paths.get(f.blob_id or "")
                if blob is None:
                    raise ContextError(f"build_context file {f.path!r}: blob {f.blob_id!r} was not uploaded")
                entry = ContextEntry(path, False, mode, blob=blob)
            self.entries[path] = entry
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                self.entries.setdefault(parent, ContextEntry(parent, True, None))

    def below(self, path: str) -> list[ContextEntry]:
        """Entries strictly inside directory ``path``, parents before children."""
        prefix = path + "/"
        return sorted((e for p, e in self.entries.items() if p.startswith(prefix)), key=lambda e: e.path)

    def get(self, path: str) -> ContextEntry:
        entry = self.entries.get(path.rstrip("/"))
        if entry is None:
            raise ContextError(f"{path!r} is not in build_context.files")
        return entry


@dataclass(frozen=True)
class GuestDir:
    path: str
    mode: int
    owner: str | None


@dataclass(frozen=True)
class GuestFile:
    path: str
    source: ContextEntry
    mode: int
    owner: str | None


def _mode(op: CopyOp, entry: ContextEntry) -> int:
    """``--chmod`` wins, then the context entry's own mode, then Docker's defaults."""
    if op.mode is not None:
        return op.mode
    if entry.mode is not None:
        return entry.mode
    return DEFAULT_DIR_MODE if entry.is_dir else DEFAULT_FILE_MODE


def copy_operations(op: CopyOp, context: BuildContextFiles, workdir: str) -> list[GuestDir | GuestFile]:
    """The guest operations for one COPY, in an order that creates parents first."""
    dst = copy_destination(workdir, op.dst)
    into_dir = dst.endswith("/") or len(op.sources) > 1
    base = dst.rstrip("/") or "/"
    out: list[GuestDir | GuestFile] = []
    for source in op.sources:
        entry = context.get(source)
        if not entry.is_dir:
            target = posixpath.join(base, posixpath.basename(entry.path)) if into_dir else base
            out.append(GuestFile(target, entry, _mode(op, entry), op.user))
            continue
        out.append(GuestDir(base, _mode(op, entry), op.user))
        for child in context.below(entry.path):
            target = posixpath.join(base, child.path[len(entry.path) + 1 :])
            mode = _mode(op, child)
            out.append(GuestDir(target, mode, op.user) if child.is_dir else GuestFile(target, child, mode, op.user))
    return out
