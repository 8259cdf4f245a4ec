"""Import an image reference into an ext4 root disk: resolve, pull (cached), unpack, mkfs. One call.

This is the single composition point of ``amber.oci`` (registry side) and ``amber.rootfs`` (disk side: layers
and a target in, a tree and a disk out), used by ``amber image import`` and by the build pipeline. It adds the
disk cache (one ext4 image per manifest digest) and the staging-area choice. All paths are parameters; nothing
reads settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from amber.contract.images import ImageReference
from amber.oci import cache_locks
from amber.oci.config import ImageConfig
from amber.oci.credentials import RegistryCredentials
from amber.oci.errors import RootDiskError
from amber.oci.platform import Platform
from amber.oci.progress import ImportProgress
from amber.oci.pull import LayerFile, ResolvedImage, pulling
from amber.rootfs.ext4 import DEFAULT_MIN_SIZE_MIB, copy_disk, make_ext4
from amber.rootfs.unpack import StagingFullError, UnpackStats, apply_dir_mtimes, unpack_layer


@dataclass(frozen=True)
class ImportResult:
    """What an import produced. ``manifest_digest`` identifies the image exactly (use it as a cache key)."""

    resolved: ResolvedImage
    disk: Path
    disk_size_bytes: int
    layer_count: int
    compressed_bytes: int
    downloaded_bytes: int
    unpacked_bytes: int
    seconds: float
    disk_cached: bool = False  # True when the disk came from the disk cache (no unpack, no mkfs)

    @property
    def manifest_digest(self) -> str:
        return self.resolved.manifest_digest

    @property
    def config(self) -> ImageConfig:
        return self.resolved.config

    def summary(self) -> str:
        """One line for humans: reference, digest, layers, sizes, time."""
        mib = 1024 * 1024
        files = "disk from the disk cache" if self.disk_cached else f"{self.unpacked_bytes / mib:.1f} MiB of files"
        return (
            f"imported {self.resolved.reference} ({self.resolved.platform}) {self.manifest_digest}: "
            f"{self.layer_count} layers, {self.compressed_bytes / mib:.1f} MiB compressed "
            f"({self.downloaded_bytes / mib:.1f} MiB downloaded), {files} "
            f"→ {self.disk} ({self.disk_size_bytes // mib} MiB) in {self.seconds:.2f} s"
        )


T = TypeVar("T")

# Bump when the tree → disk transformation changes, so cached disks of older Amber versions are not reused.
DISK_FORMAT = "v1"
_SHM = Path("/dev/shm")
_SHM_RESERVE = 512 * 1024 * 1024
_DISK_RESERVE = 1024 * 1024 * 1024


def disk_cache_path(disk_cache_dir: Path, manifest_digest: str, min_size_mib: int) -> Path:
    """Where the root disk of an image is cached: keyed by manifest digest, never by tag."""
    return disk_cache_dir / f"{manifest_digest.removeprefix('sha256:')}-{min_size_mib}m-{DISK_FORMAT}.ext4"


def disk_lock_path(cached_disk: Path) -> Path:
    """Held shared by every import that reads or writes ``cached_disk``; the evictor needs it exclusively."""
    return cached_disk.with_name(f"{cached_disk.name}.lock")


def _touch(path: Path) -> None:
    now = time.time()
    with contextlib.suppress(OSError):
        os.utime(path, (now, now))  # the last use, for LRU eviction


def staging_area(work_dir: Path | None, output_disk: Path, compressed_bytes: int) -> tuple[Path, int | None]:
    """Where to unpack, and how many bytes the tree may take there (None: no cap).

    ``work_dir`` if given; else tmpfs (/dev/shm) when room for 4x the compressed size plus 512 MiB is free,
    capped at half of what is free minus the reserve, so a decompression bomb cannot eat the host's memory
    (the import then moves to disk); else next to the output, capped by :func:`disk_budget`. The tree is
    transient, so memory is the fastest place for it.
    """
    if work_dir is not None:
        return work_dir, None
    free = _free_bytes(_SHM)
    if free is not None and free > 4 * compressed_bytes + _SHM_RESERVE:
        return _SHM, (free - _SHM_RESERVE) // 2
    return output_disk.parent, disk_budget(output_disk.parent)


def _free_bytes(path: Path) -> int | None:
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def disk_budget(directory: Path) -> int | None:
    """Bytes a tree staged on disk in ``directory`` may take: half the free space (the disk image needs the
    other half) less 1 GiB, so a decompression bomb fails clearly instead of filling the disk."""
    free = _free_bytes(directory)
    return None if free is None else max(0, free - _DISK_RESERVE) // 2


async def _blocking(fn: Callable[..., T], *args: Any, stop: threading.Event | None = None) -> T:
    """Run ``fn`` in a worker thread. If we are cancelled, ask it to ``stop`` and wait for it to end, so the
    cleanup that follows never races a thread still writing into the staging tree."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        await asyncio.wait([future])
        raise


async def _publish(output: Path, write: Callable[[Path], object], stop: threading.Event | None = None) -> None:
    """Run ``write(pending)`` in a thread, then rename ``pending`` to ``output`` — only if not cancelled, so a
    cancelled import never leaves (or replaces) ``output``."""
    pending = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.importing")
    try:
        await _blocking(write, pending, stop=stop)
        os.replace(pending, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()


def _new_staging(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".amber-rootfs-", dir=parent))
    os.chmod(staging, 0o755)  # the disk's / gets the tree root's mode; mkdtemp makes it 0700
    return staging


async def import_image(
    reference: ImageReference | str,
    output_disk: Path,
    *,
    cache_dir: Path,
    credentials: RegistryCredentials | None = None,
    platform: Platform | str | None = None,
    progress: ImportProgress | None = None,
    min_size_mib: int = DEFAULT_MIN_SIZE_MIB,
    work_dir: Path | None = None,
    disk_cache_dir: Path | None = None,
    insecure_registries: Collection[str] = (),
) -> ImportResult:
    """Import ``reference`` into the ext4 image ``output_disk``.

    Layers come from / go to the layer cache at ``cache_dir`` (``<data_dir>/cache/layers``). The manifest is
    always fetched with ``credentials`` first (the access check), even when everything is cached. With
    ``disk_cache_dir`` (``<data_dir>/cache/disks``) the finished disk is also kept per manifest digest and
    minimum size, and a later import of the same image copies it instead of unpacking again. The tree is
    unpacked in a fresh directory (see :func:`staging_area`) that is removed afterwards; ``output_disk``
    appears only when complete. Raises :class:`~amber.oci.errors.ImageImportError` subclasses.
    """
    started = time.monotonic()
    report = progress or ImportProgress()
    async with pulling(
        reference, cache=cache_dir, credentials=credentials, platform=platform, progress=report,
        insecure_registries=insecure_registries,
    ) as session:
        resolved = session.resolved
        layer_count = len(resolved.manifest.layers)
        compressed = sum(d.size for d in resolved.manifest.layers)
        output_disk.parent.mkdir(parents=True, exist_ok=True)
        cached_disk = None
        use_fd: int | None = None
        if disk_cache_dir is not None:
            disk_cache_dir.mkdir(parents=True, exist_ok=True)
            cached_disk = disk_cache_path(disk_cache_dir, resolved.manifest_digest, min_size_mib)
            use_fd = await cache_locks.lock(disk_lock_path(cached_disk), shared=True)  # never evicted under us
        try:
            if cached_disk is not None and cached_disk.exists():
                _touch(cached_disk)
                report.phase("ext4")
                await _publish(output_disk, lambda pending: copy_disk(cached_disk, pending))
                return ImportResult(resolved, output_disk, cached_disk.stat().st_size, layer_count, compressed,
                                    0, 0, time.monotonic() - started, True)
            parent, budget = staging_area(work_dir, output_disk, compressed)
            staging = _new_staging(parent)
            try:
                stats = UnpackStats(allocation_limit=budget)
                verified: list[LayerFile] = []
                # Each layer is unpacked as soon as it is verified, while later layers still download.
                async for layer in session.layers():
                    report.phase("unpack")
                    verified.append(layer)
                    try:
                        await _blocking(unpack_layer, layer, staging, stats, stop=stats.stop)
                    except StagingFullError:
                        if budget is None or parent == output_disk.parent:
                            raise  # already on disk: the image does not fit
                        # Too big for memory: start over on disk next to the output with what is verified so far.
                        await asyncio.to_thread(shutil.rmtree, staging, True)
                        staging = _new_staging(output_disk.parent)
                        stats = UnpackStats(allocation_limit=disk_budget(output_disk.parent))
                        for earlier in verified:
                            await _blocking(unpack_layer, earlier, staging, stats, stop=stats.stop)
                apply_dir_mtimes(stats)
                report.phase("ext4")
                tree, stop = staging, stats.stop
                if cached_disk is not None:
                    size = await _blocking(functools.partial(make_ext4, stop=stop), tree, cached_disk, min_size_mib,
                                           stop=stop)
                    await _publish(output_disk, lambda pending: copy_disk(cached_disk, pending))
                else:
                    sizes: list[int] = []
                    await _publish(
                        output_disk,
                        lambda pending: sizes.append(make_ext4(tree, pending, min_size_mib, stop=stop)),
                        stop,
                    )
                    size = sizes[0]
            except OSError as exc:
                raise RootDiskError(f"writing the root disk {output_disk} failed: {exc}") from None
            finally:
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, staging, True))
        finally:
            if use_fd is not None:
                cache_locks.unlock(use_fd)
    return ImportResult(
        resolved=resolved,
        disk=output_disk,
        disk_size_bytes=size,
        layer_count=layer_count,
        compressed_bytes=compressed,
        downloaded_bytes=session.downloaded_bytes,
        unpacked_bytes=stats.bytes,
        seconds=time.monotonic() - started,
    )
