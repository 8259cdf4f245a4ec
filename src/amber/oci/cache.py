"""The content-addressed layer cache shared by all builds: ``<root>/sha256/<hex>`` holds verified blobs.

``root`` is ``<data_dir>/cache/layers``. A blob enters the cache only after its size and digest were
checked (downloads land in ``<root>/tmp`` and are renamed into place atomically), so a present file of the
right size is trusted without re-hashing. One download per digest at a time, across tasks and processes:
``locked`` holds an flock on ``<root>/locks/<hex>.lock`` (released when its holder dies), so a second
build wanting the same layer waits and then finds it cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from amber.oci.manifest import Descriptor


def layer_cache_dir(data_dir: Path) -> Path:
    """Where the layer cache lives inside Amber's data directory."""
    return data_dir / "cache" / "layers"


class LayerCache:
    """Verified layer blobs on disk, addressed by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64 or not all(c in "0123456789abcdef" for c in hex_digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / "sha256" / hex_digest

    def lookup(self, descriptor: Descriptor) -> Path | None:
        """The cached file for ``descriptor`` if present with the declared size."""
        path = self.path(descriptor.digest)
        try:
            return path if path.stat().st_size == descriptor.size else None
        except FileNotFoundError:
            return None

    @contextlib.asynccontextmanager
    async def locked(self, digest: str) -> AsyncIterator[None]:
        """Hold the download lock of ``digest`` (polled without blocking the event loop; cancel-safe)."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{self.path(digest).name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def staging_path(self) -> Path:
        """A fresh file name for a download in progress (same file system as the cache)."""
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{uuid.uuid4().hex}.partial"

    def commit(self, staged: Path, digest: str) -> Path:
        """Move a verified download into place atomically and return its cache path."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return final
