"""Content-addressed blob files on the local disk (build-context uploads).

Files live at ``<root>/sha256/<2 hex>/<64 hex>``; an upload streams into ``<root>/tmp`` while being hashed
and is renamed into place only when its SHA-256 and size match what preflight promised, so a reader never
sees a partial or wrong file. Same bytes from several namespaces are stored once. A stored file is never
replaced: a repeated upload is only compared with it (``same_bytes``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

_MIN_FREE_BYTES = 256 * 1024**2  # refuse uploads that would leave less than this on the disk
_COMPARE_SLACK = 8 * 1024**2  # a repeated upload longer than its blob is read this far past it, then refused


@dataclass
class UploadRejected(Exception):
    """An upload the client can fix; ``reason`` is an UploadFailureReason value."""

    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    async def same_bytes(self, chunks: AsyncIterator[bytes], *, sha256: str, size_bytes: int) -> bool:
        """Read a whole stream (storing nothing) and say whether it is exactly ``size_bytes`` bytes with digest
        ``sha256``: a stored blob is immutable, so a repeated upload is only ever compared with it."""
        digest = hashlib.sha256()
        received = 0
        async for chunk in chunks:
            received += len(chunk)
            if received > size_bytes + _COMPARE_SLACK:
                return False  # too long to be the same; stop reading
            if received <= size_bytes:
                digest.update(chunk)
        return received == size_bytes and digest.hexdigest() == sha256

    async def ingest(self, chunks: AsyncIterator[bytes], *, sha256: str, size_bytes: int, max_bytes: int) -> Path:
        """Store a stream whose digest and size must equal ``sha256``/``size_bytes``. Raises ``UploadRejected``."""
        if size_bytes > max_bytes:
            raise UploadRejected("size_limit_exceeded", f"file is {size_bytes} bytes; the limit is {max_bytes}",
                                 {"size_limit_bytes": max_bytes})
        if shutil.disk_usage(self.root).free < size_bytes + _MIN_FREE_BYTES:
            raise UploadRejected("insufficient_staging_space", "not enough free disk space on the server for this file")
        tmp = self.root / "tmp" / secrets.token_hex(8)
        digest = hashlib.sha256()
        received = 0
        try:
            async with await anyio.open_file(tmp, "wb") as out:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > size_bytes:
                        raise UploadRejected(
                            "part_size_mismatch",
                            f"upload is larger than the {size_bytes} bytes declared at preflight",
                            {"expected_size_bytes": size_bytes, "actual_size_bytes_at_least": received},
                        )
                    digest.update(chunk)
                    await out.write(chunk)
            if received != size_bytes:
                raise UploadRejected(
                    "part_size_mismatch",
                    f"upload has {received} bytes but preflight declared {size_bytes}",
                    {"expected_size_bytes": size_bytes, "actual_size_bytes": received},
                )
            actual = digest.hexdigest()
            if actual != sha256:
                raise UploadRejected(
                    "whole_checksum_mismatch",
                    f"upload has sha256 {actual} but preflight declared {sha256}",
                    {"expected_sha256": sha256, "actual_sha256": actual},
                )
            final = self.path_for(sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o600)  # users' files: readable by the server only
            os.replace(tmp, final)
            return final
        finally:
            tmp.unlink(missing_ok=True)
