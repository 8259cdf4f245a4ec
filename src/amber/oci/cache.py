"""The content-addressed layer cache shared by all builds: ``<root>/sha256/<hex>`` holds verified blobs.

``root`` is ``<data_dir>/cache/layers``. A blob enters the cache only after its size and digest were
checked (downloads land in ``<root>/tmp`` and are renamed into place atomically), so a present file of the
right size is trusted without re-hashing. One download per digest at a time, across tasks and processes:
``locked`` holds an flock on ``<root>/locks/<hex>.lock`` (released when its holder dies), so a second
build wanting the same layer waits and then finds it cached.

Eviction (``amber.builds.pipeline.prune``): a pull session holds a shared lock on ``<root>/locks/<hex>.use``
for each of its layers until it ends, and a hit refreshes the blob's mtime (its last use). The evictor removes
a blob only while holding both locks exclusively, so a blob is never removed under a running import.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from amber.oci import cache_locks
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
            if path.stat().st_size != descriptor.size:
                return None
            now = time.time()
            os.utime(path, (now, now))  # the last use, for LRU eviction
            return path
        except FileNotFoundError:
            return None

    def lock_path(self, digest: str) -> Path:
        """The download lock of ``digest`` (one download per digest at a time)."""
        return self.root / "locks" / f"{self.path(digest).name}.lock"

    def use_path(self, digest: str) -> Path:
        """Held shared by every pull session that uses ``digest``; the evictor needs it exclusively."""
        return self.root / "locks" / f"{self.path(digest).name}.use"

    @contextlib.asynccontextmanager
    async def locked(self, digest: str) -> AsyncIterator[None]:
        """Hold the download lock of ``digest`` (polled without blocking the event loop; cancel-safe)."""
        path = self.lock_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = await cache_locks.lock(path)
        try:
            yield
        finally:
            cache_locks.unlock(fd)

    async def use(self, digest: str) -> int:
        """Mark ``digest`` as in use until the returned descriptor is released (``cache_locks.unlock``)."""
        path = self.use_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        return await cache_locks.lock(path, shared=True)

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
