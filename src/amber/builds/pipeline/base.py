"""The root disk a build starts from: an OCI image imported once per manifest digest (R33-R38).

``prepare_oci_base`` always resolves the reference against the registry with this build's credentials (the
access check that keeps a private image in the shared cache from anyone who cannot pull it, R49), then looks
the base disk up by ``base_layer_key(manifest digest, disk size, guest)``; a miss imports the image (layers from
``amber.oci``'s shared cache) into the cache entry, a bypass (whole-build ``skip_cache``) into the build's own
work directory.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from amber.builds.image_import import import_image
from amber.builds.pipeline.events import BuildLog
from amber.builds.pipeline.store import CacheStore, EntryHold
from amber.builds.planning.cache import CacheDecision, base_layer_key
from amber.contract.errors import InvalidReferenceError
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, CacheReason, CacheStatus, LogPhase
from amber.oci.credentials import RegistryCredentials
from amber.oci.errors import CredentialsError, ImageImportError, RegistryAuthError
from amber.oci.pull import ResolvedImage, resolve
from amber.rootfs.ext4 import DEFAULT_MIN_SIZE_MIB


async def resolve_base(reference: str, credentials: RegistryCredentials | None) -> ResolvedImage:
    try:
        return await resolve(reference, credentials=credentials)
    except (RegistryAuthError, CredentialsError) as exc:
        raise BuildFailed(f"base image {reference}: {exc}", phase=FailurePhase.AUTH) from None
    except (ImageImportError, InvalidReferenceError) as exc:
        raise BuildFailed(f"base image {reference}: {exc.message}", phase=FailurePhase.PREPARE) from None


async def import_base_disk(
    resolved: ResolvedImage,
    disk: Path,
    *,
    layer_cache: Path,
    credentials: RegistryCredentials | None,
    disk_mb: int | None,
) -> None:
    try:
        await import_image(
            resolved.pinned_reference,
            disk,
            cache_dir=layer_cache,
            credentials=credentials,
            platform=resolved.platform,
            min_size_mib=max(disk_mb or 0, DEFAULT_MIN_SIZE_MIB),
        )
    except (RegistryAuthError, CredentialsError) as exc:
        raise BuildFailed(f"base image {resolved.reference}: {exc}", phase=FailurePhase.AUTH) from None
    except ImageImportError as exc:
        raise BuildFailed(f"base image {resolved.reference}: {exc.message}", phase=FailurePhase.PREPARE) from None


async def prepare_oci_base(
    reference: str,
    *,
    credentials: RegistryCredentials | None,
    decision: CacheDecision,
    disk_mb: int | None,
    log: BuildLog,
    store: CacheStore,
    layer_cache: Path,
    work_dir: Path,
    claims: list[EntryHold],
    guest_fingerprint: str,
) -> tuple[Path, ResolvedImage, str, EntryHold | None]:
    """(base disk, resolved image, base key, the held cache entry or None when the disk is private)."""
    started = time.monotonic()
    resolved = await resolve_base(reference, credentials)
    await log.info(LogPhase.PREPARING, f"resolved {reference} to {resolved.manifest_digest} ({resolved.platform}) "
                                       f"in {time.monotonic() - started:.2f} s")  # fmt: skip
    key = base_layer_key(resolved.manifest_digest, disk_mb=disk_mb, guest_fingerprint=guest_fingerprint)
    subject = f"base image {reference}@{resolved.manifest_digest}"
    path = store.base_path(key)
    use = store.use(path) if decision.lookup else None
    if use is not None:
        claims.append(use)
        await log.cache(CacheKind.LAYER, CacheStatus.HIT, subject, f"base disk cached for {subject}")
        return path, resolved, key, use
    claim = store.claim(path) if decision.lookup else None
    if decision.lookup:
        await log.cache(CacheKind.LAYER, CacheStatus.MISS, subject, f"base disk not cached: importing {subject}",
                        reason=CacheReason.MISSING_OR_INCOMPATIBLE)  # fmt: skip
    else:
        await log.cache(CacheKind.LAYER, CacheStatus.BYPASS, subject, f"base disk rebuilt: {subject}",
                        reason=decision.reason)  # fmt: skip
    target = claim.path if claim is not None else work_dir / "base.raw"
    if claim is not None:
        claims.append(claim)
    await log.info(LogPhase.PREPARING, f"importing {reference} into a root disk")
    started = time.monotonic()
    await import_base_disk(resolved, target, layer_cache=layer_cache, credentials=credentials, disk_mb=disk_mb)
    await log.info(LogPhase.PREPARING, f"imported {reference} in {time.monotonic() - started:.2f} s")
    if claim is not None:
        await asyncio.to_thread(claim.publish)
        await log.cache(CacheKind.LAYER, CacheStatus.STORED, subject, f"base disk stored for {subject}")
    return target, resolved, key, claim
