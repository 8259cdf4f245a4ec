"""Resolve an image reference to one platform's manifest and config, and pull its layers into the cache.

``resolve`` always asks the registry for the manifest with the caller's credentials, even when every layer
is already cached: the manifest fetch is the access check that keeps a private image in the shared cache
from being served to someone who cannot pull it. The manifest digest it returns is the image's cache key.
``pull`` then downloads missing layers concurrently (bounded), streaming each to disk while hashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path

from amber.contract.images import ImageReference, parse_reference
from amber.oci import cache_locks
from amber.oci.cache import LayerCache
from amber.oci.config import ImageConfig
from amber.oci.credentials import RegistryCredentials, exchange_credentials
from amber.oci.errors import DigestMismatchError, PlatformError, TruncatedDownloadError, UnsupportedMediaTypeError
from amber.oci.manifest import Descriptor, ImageIndex, ImageManifest, parse_manifest
from amber.oci.media_types import Compression, layer_compression
from amber.oci.platform import Platform, check_image_platform, choose_platform, parse_platform
from amber.oci.progress import ImportProgress
from amber.oci.registry import RegistryClient

DEFAULT_CONCURRENCY = 4
_DOWNLOAD_ATTEMPTS = 2


@dataclass(frozen=True)
class ResolvedImage:
    """One platform's image: what ``pull`` fetches. ``manifest_digest`` is the cache key (never the tag)."""

    reference: ImageReference
    manifest_digest: str
    manifest: ImageManifest
    index_digest: str | None
    platform: Platform
    config: ImageConfig
    config_digest: str

    @property
    def pinned_reference(self) -> ImageReference:
        """The reference pinned to this platform's manifest digest."""
        return self.reference.with_digest(self.manifest_digest)


@dataclass(frozen=True)
class LayerFile:
    """A verified layer blob in the cache."""

    descriptor: Descriptor
    path: Path
    compression: Compression
    cached: bool  # True when it was already in the cache before this pull

    @property
    def digest(self) -> str:
        return self.descriptor.digest


@dataclass(frozen=True)
class PulledImage:
    resolved: ResolvedImage
    layers: tuple[LayerFile, ...]
    downloaded_bytes: int
    seconds: float


async def _client(
    reference: ImageReference, credentials: RegistryCredentials | None, insecure_registries: Collection[str]
) -> RegistryClient:
    # ECR / GCP exchanges are blocking network calls: keep them off the event loop.
    basic = await asyncio.to_thread(exchange_credentials, credentials) if credentials is not None else None
    return RegistryClient(
        reference.registry, api_host=reference.api_host, credentials=basic, insecure_registries=insecure_registries
    )


async def _resolve_with(client: RegistryClient, reference: ImageReference, wanted: Platform) -> ResolvedImage:
    fetched = await client.get_manifest(reference.repository, reference.manifest_reference)
    parsed = parse_manifest(fetched.body, fetched.media_type)
    index_digest: str | None = None
    chosen_platform: Platform | None = None
    manifest_digest = fetched.digest
    if isinstance(parsed, ImageIndex):
        index_digest = fetched.digest
        found = [d.platform or Platform("", "") for d in parsed.manifests]
        chosen = parsed.manifests[choose_platform(found, wanted)]
        chosen_platform = chosen.platform
        fetched = await client.get_manifest(reference.repository, chosen.digest)
        parsed = parse_manifest(fetched.body, fetched.media_type)
        manifest_digest = chosen.digest
        if isinstance(parsed, ImageIndex):
            raise UnsupportedMediaTypeError(f"index {index_digest} points at another index {chosen.digest}")
    manifest = parsed
    config_bytes = await client.get_blob_bytes(reference.repository, manifest.config)
    config = ImageConfig.from_json(config_bytes)
    if index_digest is None:
        check_image_platform(config.platform, wanted)
    if config.diff_ids and len(config.diff_ids) != len(manifest.layers):
        raise DigestMismatchError(
            f"image {reference}: config lists {len(config.diff_ids)} layers but the manifest has "
            f"{len(manifest.layers)}"
        )
    # The index entry's platform is authoritative; a lone manifest has only its config (which may omit fields).
    own = chosen_platform or config.platform
    variant = own.variant if own.architecture else wanted.variant
    platform = Platform(own.os or wanted.os, own.architecture or wanted.architecture, variant)
    return ResolvedImage(reference, manifest_digest, manifest, index_digest, platform, config, manifest.config.digest)


def _as_reference(reference: ImageReference | str) -> ImageReference:
    return parse_reference(reference) if isinstance(reference, str) else reference


def _as_platform(platform: Platform | str | None) -> Platform:
    if isinstance(platform, Platform):
        if platform.os != "linux":
            raise PlatformError(f"invalid platform {platform}: only linux images can run in a microVM")
        return platform
    return parse_platform(platform)


async def resolve(
    reference: ImageReference | str,
    *,
    credentials: RegistryCredentials | None = None,
    platform: Platform | str | None = None,
    insecure_registries: Collection[str] = (),
) -> ResolvedImage:
    """Fetch the manifest (choosing from an index by R36) and config of ``reference`` for ``platform``.

    ``platform`` None means this host's architecture. Raises :class:`~amber.oci.errors.ImageImportError`
    subclasses: auth, not found, platform (listing what the index holds), unsupported media type.
    """
    ref = _as_reference(reference)
    wanted = _as_platform(platform)
    async with await _client(ref, credentials, insecure_registries) as client:
        return await _resolve_with(client, ref, wanted)


async def _fetch_layer(
    client: RegistryClient,
    repository: str,
    descriptor: Descriptor,
    cache: LayerCache,
    progress: ImportProgress,
    limit: asyncio.Semaphore,
    holds: list[int],
) -> tuple[LayerFile, int]:
    compression = layer_compression(descriptor.media_type)
    if compression is None:  # parse_manifest already refuses these; kept for callers building descriptors
        raise UnsupportedMediaTypeError(f"layer {descriptor.digest} has unsupported media type {descriptor.media_type}")
    holds.append(await cache.use(descriptor.digest))  # not evicted while this session runs
    cached = cache.lookup(descriptor)
    if cached is not None:
        progress.layer_started(descriptor, cached=True)
        progress.layer_finished(descriptor)
        return LayerFile(descriptor, cached, compression, True), 0
    async with limit, cache.locked(descriptor.digest):
        cached = cache.lookup(descriptor)  # another build may have fetched it while we waited
        if cached is not None:
            progress.layer_started(descriptor, cached=True)
            progress.layer_finished(descriptor)
            return LayerFile(descriptor, cached, compression, True), 0
        for attempt in range(1, _DOWNLOAD_ATTEMPTS + 1):
            progress.layer_started(descriptor, cached=False)
            staged = cache.staging_path()
            try:
                await client.download_blob(
                    repository, descriptor, staged, lambda n: progress.layer_advanced(descriptor, n)
                )
                path = cache.commit(staged, descriptor.digest)
                break
            except TruncatedDownloadError:
                # A dropped connection is worth one more try; wrong bytes (digest mismatch) never are.
                if attempt == _DOWNLOAD_ATTEMPTS:
                    raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()
        progress.layer_finished(descriptor)
        return LayerFile(descriptor, path, compression, False), descriptor.size


class PullSession:
    """A pull in progress: ``resolved`` is known; :meth:`layers` yields verified layers in order.

    Downloads start on the first iteration of :meth:`layers` (so a caller that finds what it needs elsewhere,
    e.g. a cached disk, downloads nothing) and run concurrently; layer *i* is yielded as soon as it and all
    layers before it are verified, so callers can unpack while later layers are still downloading.
    """

    def __init__(
        self, client: RegistryClient, resolved: ResolvedImage, cache: LayerCache, progress: ImportProgress,
        concurrency: int,
    ) -> None:
        self.resolved = resolved
        self.downloaded_bytes = 0
        self._client = client
        self._cache = cache
        self._progress = progress
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._tasks: list[asyncio.Future[tuple[LayerFile, int]]] = []
        self._holds: list[int] = []  # shared use locks on this session's blobs (see LayerCache.use)

    async def layers(self) -> AsyncIterator[LayerFile]:
        if not self._tasks:
            self._progress.phase("pull")
            repository = self.resolved.reference.repository
            self._tasks = [
                asyncio.ensure_future(_fetch_layer(self._client, repository, d, self._cache, self._progress,
                                                   self._limit, self._holds))
                for d in self.resolved.manifest.layers
            ]
        for task in self._tasks:
            layer, downloaded = await task
            self.downloaded_bytes += downloaded
            yield layer

    async def _cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fd in self._holds:
            cache_locks.unlock(fd)
        self._holds.clear()


@contextlib.asynccontextmanager
async def pulling(
    reference: ImageReference | str,
    *,
    cache: LayerCache | Path,
    credentials: RegistryCredentials | None = None,
    platform: Platform | str | None = None,
    progress: ImportProgress | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    insecure_registries: Collection[str] = (),
) -> AsyncIterator[PullSession]:
    """Resolve ``reference`` and hand back a :class:`PullSession`; unfinished downloads are cancelled on exit."""
    ref = _as_reference(reference)
    wanted = _as_platform(platform)
    layer_cache = cache if isinstance(cache, LayerCache) else LayerCache(cache)
    report = progress or ImportProgress()
    async with await _client(ref, credentials, insecure_registries) as client:
        report.phase("resolve")
        resolved = await _resolve_with(client, ref, wanted)
        session = PullSession(client, resolved, layer_cache, report, concurrency)
        try:
            yield session
        finally:
            await session._cancel()


async def pull(
    reference: ImageReference | str,
    *,
    cache: LayerCache | Path,
    credentials: RegistryCredentials | None = None,
    platform: Platform | str | None = None,
    progress: ImportProgress | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    insecure_registries: Collection[str] = (),
) -> PulledImage:
    """Resolve ``reference`` and make every layer a verified file in ``cache`` (downloading what is missing).

    ``cache`` is a :class:`LayerCache` or its root (``<data_dir>/cache/layers``). At most ``concurrency``
    layers download at once. Nothing unverified ever enters the cache; a failed pull leaves no partial file.
    """
    started = time.monotonic()
    async with pulling(
        reference, cache=cache, credentials=credentials, platform=platform, progress=progress,
        concurrency=concurrency, insecure_registries=insecure_registries,
    ) as session:
        layers = tuple([layer async for layer in session.layers()])
    return PulledImage(session.resolved, layers, session.downloaded_bytes, time.monotonic() - started)
