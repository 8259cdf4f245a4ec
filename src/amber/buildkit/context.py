"""The build context BuildKit receives: one GNU-format tar assembled from the request's context entries.

BuildKit decides whether an upload is a tar from its first 1024 bytes, and Python's default PAX format puts a
pax header there that it then reads as a Dockerfile; GNU format avoids that. Guarantees: entries are written
in sorted order with numeric owner 0:0, a fixed mtime (so identical inputs give identical bytes and BuildKit
cache hits), implicit parent directories, and the requested modes. Paths must be relative without ``..``.
The inline Dockerfile goes in at ``dockerfile_path`` when given, else under a random name that is appended to
``.dockerignore`` (as the Docker CLI does for ``-f -``) so ``COPY . .`` does not pick it up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import posixpath
import secrets
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from amber.contract.dockerfile import DockerfileProblem, DockerfileRequestError

CONTEXT_MTIME = 946684800  # 2000-01-01: fixed for reproducible context bytes, old enough to never look "new"
_CHUNK = 1 << 20


class ContextFileLike(Protocol):
    """The shape of a request's ``build_context.files[i]`` (the API's pydantic model fits it)."""

    @property
    def path(self) -> str: ...
    @property
    def entry_type(self) -> str: ...
    @property
    def blob_id(self) -> str | None: ...
    @property
    def mode(self) -> str | None: ...


@dataclass(frozen=True)
class ContextEntry:
    """One file or directory of the context; a file has ``content`` or ``source`` (a blob on disk)."""

    path: str
    is_dir: bool
    mode: int
    content: bytes | None = None
    source: Path | None = None


@dataclass(frozen=True)
class BuildContextTar:
    path: Path
    dockerfile_name: str  # what to pass as ``dockerfile=`` to /build
    dockerfile_digest: str  # sha256 of the Dockerfile text
    size: int


def _normalise(path: str, field: str) -> str:
    if not path or path.startswith("/") or "\\" in path:
        raise DockerfileRequestError([DockerfileProblem(field, f"{path!r} must be a relative path with '/'")])
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise DockerfileRequestError([DockerfileProblem(field, f"{path!r} must stay inside the context (no '..')")])
    return "/".join(parts)


def context_entries(files: Sequence[ContextFileLike], blob_paths: Mapping[str, Path]) -> list[ContextEntry]:
    """Turn request entries into context entries; raises ``DockerfileRequestError`` naming the entry."""
    entries: list[ContextEntry] = []
    for i, item in enumerate(files):
        field = f"build_context.files[{i}]"
        path = _normalise(item.path, f"{field}.path")
        is_dir = item.entry_type == "dir"
        try:
            mode = int(item.mode, 8) if item.mode else (0o755 if is_dir else 0o644)
        except ValueError:
            raise DockerfileRequestError([DockerfileProblem(f"{field}.mode", f"{item.mode!r} is not octal")]) from None
        if is_dir:
            entries.append(ContextEntry(path, True, mode))
            continue
        inline = getattr(item, "content_base64", None)
        if isinstance(inline, str):
            try:
                content = base64.b64decode(inline, validate=True)
            except (binascii.Error, ValueError):
                raise DockerfileRequestError(
                    [DockerfileProblem(f"{field}.content_base64", "is not valid base64")]
                ) from None
            entries.append(ContextEntry(path, False, mode, content=content))
        elif item.blob_id is not None:
            blob = blob_paths.get(item.blob_id)
            if blob is None or not blob.is_file():
                raise DockerfileRequestError(
                    [DockerfileProblem(f"{field}.blob_id", f"blob {item.blob_id} is not uploaded")]
                )
            entries.append(ContextEntry(path, False, mode, source=blob))
        else:
            raise DockerfileRequestError([DockerfileProblem(field, "a file needs content_base64 or blob_id")])
    return entries


def _info(name: str, *, is_dir: bool, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = mode
    info.size = size
    info.mtime = CONTEXT_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_context_tar(
    destination: Path,
    entries: Sequence[ContextEntry],
    *,
    dockerfile: str | None,
    dockerfile_path: str | None,
) -> BuildContextTar:
    """Write the context tar to ``destination``; the Dockerfile comes inline or from the context at
    ``dockerfile_path``. Raises ``DockerfileRequestError`` when neither is usable."""
    by_path: dict[str, ContextEntry] = {}
    for entry in entries:
        by_path[entry.path] = entry
    name: str
    if dockerfile_path is not None:
        name = _normalise(dockerfile_path, "dockerfile_path")
    if dockerfile is not None:
        if dockerfile_path is None:
            name = f".dockerfile.{secrets.token_hex(10)}"
            ignore = by_path.get(".dockerignore")
            previous = _read(ignore) if ignore is not None and not ignore.is_dir else b""
            extra = f"\n{name}\n" + ("" if ignore is not None else ".dockerignore\n")
            by_path[".dockerignore"] = ContextEntry(".dockerignore", False, 0o644, content=previous + extra.encode())
        by_path[name] = ContextEntry(name, False, 0o644, content=dockerfile.encode())
        text = dockerfile.encode()
    else:
        if dockerfile_path is None:
            raise DockerfileRequestError([DockerfileProblem("dockerfile", "is required (or dockerfile_path)")])
        found = by_path.get(name)
        if found is None or found.is_dir:
            raise DockerfileRequestError(
                [DockerfileProblem("dockerfile_path", f"{dockerfile_path!r} is not a file in build_context")]
            )
        text = _read(found)
    # Parents that were not listed are created implicitly (the SDK does not list them).
    for path in list(by_path):
        parent = posixpath.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = ContextEntry(parent, True, 0o755)
            parent = posixpath.dirname(parent)
    for path, entry in by_path.items():
        parent = posixpath.dirname(path)
        if parent and not by_path[parent].is_dir:
            raise DockerfileRequestError(
                [DockerfileProblem("build_context.files", f"{path!r} lies below {parent!r}, which is a file")]
            )
        del entry
    with tarfile.open(destination, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(by_path):
            entry = by_path[path]
            if entry.is_dir:
                tar.addfile(_info(path, is_dir=True, mode=entry.mode))
            elif entry.content is not None:
                tar.addfile(
                    _info(path, is_dir=False, mode=entry.mode, size=len(entry.content)), io.BytesIO(entry.content)
                )
            else:
                assert entry.source is not None
                with entry.source.open("rb") as handle:
                    size = entry.source.stat().st_size
                    tar.addfile(_info(path, is_dir=False, mode=entry.mode, size=size), handle)
    return BuildContextTar(destination, name, "sha256:" + hashlib.sha256(text).hexdigest(), destination.stat().st_size)


def _read(entry: ContextEntry) -> bytes:
    if entry.content is not None:
        return entry.content
    assert entry.source is not None
    return entry.source.read_bytes()
