"""The content-addressed layer cache shared by all builds: ``<root>/sha256/<hex>`` holds verified blobs.

``root`` is ``<data_dir>/cache/layers``. A blob enters the cache only after its size and digest were
checked (downloads land in ``<root>/tmp`` and are renamed into place atomically), so a present file of the
right size is trusted without re-hashing. Concurrent writers of the same digest are harmless: the last
atomic rename wins and both wrote identical bytes.
"""

from __future__ import annotations

import os
import uuid
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
