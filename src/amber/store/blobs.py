"""Blob records: preflight hands out per-namespace blob ids; builds may only use complete blobs of their caller.

A caller proves it has the bytes by uploading them once; identical bytes already stored for *another*
namespace still require an upload (no cross-namespace existence oracle). ``force_upload`` always yields a
fresh blob id (R47). The bytes live in a content-addressed store (``amber.blobs``) that these records only
ask, through ``BlobBytes``, whether a digest is there and where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber.contract.sources import context_path_problem
from amber.store import ids
from amber.store.models import Blob, utcnow

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobBytes(Protocol):
    """What the records need of the byte store (``amber.blobs.BlobStore`` is one)."""

    def has(self, sha256: str) -> bool: ...

    def path_for(self, sha256: str) -> Path: ...


@dataclass
class BlobProblem(Exception):
    """A ``file_upload_error``: ``phase`` is ``preflight`` or ``blob_upload``; ``details`` holds ``reason``."""

    phase: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class PreflightFile:
    path: str
    entry_type: str
    mode: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    force_upload: bool = False


def preflight(
    session: Session, store: BlobBytes, namespace_id: str, files: list[PreflightFile], max_bytes: int
) -> list[dict[str, Any]]:
    """One result per descriptor, same order and path (C8). Raises ``BlobProblem`` before writing anything."""
    for index, f in enumerate(files):
        where = f"files[{index}] ({f.path!r})"
        if f.entry_type not in ("file", "dir"):
            raise BlobProblem("preflight", f"{where}: entry_type must be 'file' or 'dir'",
                              {"reason": "invalid_descriptor", "path": f.path})
        path_problem = context_path_problem(f.path)  # the build context's own rule
        if path_problem is not None:
            raise BlobProblem("preflight", f"{where}: {path_problem}",
                              {"reason": "directory_extract_invalid_path", "path": f.path})
        if f.entry_type == "file":
            if f.sha256 is None or not SHA256_RE.fullmatch(f.sha256):
                raise BlobProblem("preflight", f"{where}: sha256 must be 64 lower-case hex digits",
                                  {"reason": "invalid_descriptor", "path": f.path})
            if f.size_bytes is None or isinstance(f.size_bytes, bool) or f.size_bytes < 0:
                raise BlobProblem("preflight", f"{where}: size_bytes must be a non-negative integer",
                                  {"reason": "invalid_descriptor", "path": f.path})
            if f.size_bytes > max_bytes:
                raise BlobProblem("preflight", f"{where}: {f.size_bytes} bytes exceeds the {max_bytes}-byte limit",
                                  {"reason": "size_limit_exceeded", "path": f.path, "size_limit_bytes": max_bytes})
    results: list[dict[str, Any]] = []
    issued: dict[str, Blob] = {}  # sha256 -> blob handed out in this call (one upload serves several paths)
    for f in files:
        if f.entry_type == "dir":
            results.append({"path": f.path, "entry_type": "dir", "missing": False, **_mode(f.mode)})
            continue
        assert f.sha256 is not None and f.size_bytes is not None
        blob = None if f.force_upload else issued.get(f.sha256)
        if blob is None and not f.force_upload:
            candidates = session.scalars(
                select(Blob).where(
                    Blob.namespace_id == namespace_id,
                    Blob.sha256 == f.sha256,
                    Blob.size_bytes == f.size_bytes,
                    Blob.forced.is_(False),
                ).order_by(Blob.complete.desc(), Blob.created_at.desc())
            ).all()
            blob = next((b for b in candidates if not b.complete or store.has(b.sha256)), None)
        if blob is None:
            blob = Blob(id=ids.blob_id(), namespace_id=namespace_id, sha256=f.sha256, size_bytes=f.size_bytes,
                        path=f.path, forced=f.force_upload, complete=False)
            session.add(blob)
        if not f.force_upload:
            issued[f.sha256] = blob
        results.append({
            "path": f.path, "entry_type": "file", "missing": not blob.complete, "blob_id": blob.id, **_mode(f.mode)
        })
    return results


def _mode(mode: str | None) -> dict[str, str]:
    return {"mode": mode} if mode is not None else {}


def blob_for_upload(session: Session, namespace_id: str, blob_id: str) -> Blob:
    blob = session.get(Blob, blob_id)
    if blob is None or blob.namespace_id != namespace_id:
        raise BlobProblem("blob_upload", f"blob {blob_id!r} is unknown or expired; run the preflight again",
                          {"reason": "upload_expired", "blob_id": blob_id})
    return blob


def mark_complete(session: Session, blob_id: str) -> None:
    blob = session.get(Blob, blob_id)
    if blob is not None and not blob.complete:
        blob.complete = True
        blob.completed_at = utcnow()


def resolve_for_build(
    session: Session, store: BlobBytes, namespace_id: str, entries: list[tuple[str, str]]
) -> dict[str, str]:
    """``(path, blob_id)`` pairs of a build context → ``blob_id -> file path``. Every blob must be complete."""
    out: dict[str, str] = {}
    for index, (path, blob_id) in enumerate(entries):
        where = f"build_context.files[{index}] ({path!r})"
        blob = session.get(Blob, blob_id)
        if blob is None or blob.namespace_id != namespace_id:
            raise BlobProblem("blob_upload", f"{where}: blob {blob_id!r} is unknown; run the blob preflight first",
                              {"reason": "upload_expired", "blob_id": blob_id, "path": path})
        if not blob.complete or not store.has(blob.sha256):
            raise BlobProblem("blob_upload", f"{where}: blob {blob_id!r} was never uploaded",
                              {"reason": "missing_parts", "blob_id": blob_id, "path": path})
        out[blob_id] = str(store.path_for(blob.sha256))
    return out


def blob_digests(session: Session, namespace_id: str, blob_ids: list[str]) -> dict[str, str]:
    """``blob_id -> sha256:<hex>`` of the content the preflight announced, for the namespace's blobs among
    ``blob_ids`` (uploaded or not; unknown ids are left out). Blob bytes are stored content-addressed, so an
    uploaded blob's file has exactly this digest."""
    out: dict[str, str] = {}
    for blob_id in blob_ids:
        blob = session.get(Blob, blob_id)
        if blob is not None and blob.namespace_id == namespace_id:
            out[blob_id] = "sha256:" + blob.sha256
    return out
