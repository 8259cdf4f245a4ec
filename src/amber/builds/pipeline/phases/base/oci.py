"""An OCI image as the root disk (R33-R38).

The reference is always resolved against the registry with this build's credentials (the access check that
keeps a private image in the shared cache from anyone who cannot pull it, R49); the disk is then looked up by
``base_layer_key(manifest digest, disk size, guest)``. A miss imports the image (layers from ``amber.oci``'s
shared cache) into the build's work directory and stores it as the cache entry.
"""

from __future__ import annotations

import time
from pathlib import Path

from amber.builds.image_import import import_image
from amber.builds.pipeline.attempt import Attempt, BaseImage
from amber.builds.pipeline.credentials import base_image_credentials
from amber.builds.pipeline.runner import Entry
from amber.builds.planning.cache import CacheDecision, base_layer_key
from amber.builds.planning.runtime import image_defaults
from amber.contract.errors import InvalidReferenceError
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, LogPhase
from amber.oci.credentials import RegistryCredentials
from amber.oci.errors import CredentialsError, ImageImportError, RegistryAuthError
from amber.oci.pull import ResolvedImage, resolve
from amber.rootfs.ext4 import DEFAULT_MIN_SIZE_MIB


async def oci_base(attempt: Attempt, decision: CacheDecision) -> BaseImage:
    plan, log = attempt.plan, attempt.log
    reference = plan.base_ref
    await log.info(LogPhase.PREPARING, f"preparing base image {reference}")
    try:
        credentials = base_image_credentials(reference, attempt.job.inputs)
    except (ValueError, ImageImportError) as exc:
        raise BuildFailed(f"base_image_auth: {exc}", phase=FailurePhase.AUTH) from None
    started = time.monotonic()
    resolved = await _resolve(reference, credentials)
    await log.info(LogPhase.PREPARING, f"resolved {reference} to {resolved.manifest_digest} ({resolved.platform}) "
                                       f"in {time.monotonic() - started:.2f} s")  # fmt: skip
    key = base_layer_key(resolved.manifest_digest, disk_mb=plan.vm.disk_mb, guest_fingerprint=attempt.fingerprint)
    entry = Entry(CacheKind.LAYER, attempt.cache.store.base_path(key), decision, "base disk",
                  f"base image {reference}@{resolved.manifest_digest}")  # fmt: skip

    async def make(disk: Path) -> None:
        await log.info(LogPhase.PREPARING, f"importing {reference} into a root disk")
        began = time.monotonic()
        await _import(resolved, disk, layer_cache=attempt.layer_cache, credentials=credentials,
                      disk_mb=plan.vm.disk_mb)  # fmt: skip
        await log.info(LogPhase.PREPARING, f"imported {reference} in {time.monotonic() - began:.2f} s")

    result = await attempt.cache.run(entry, attempt.work_dir / "base.raw", make)
    return BaseImage((result.path,), image_defaults(resolved.config), key, resolved.config.oci_metadata() or None,
                     hold=result.hold)  # fmt: skip


async def _resolve(reference: str, credentials: RegistryCredentials | None) -> ResolvedImage:
    try:
        return await resolve(reference, credentials=credentials)
    except (RegistryAuthError, CredentialsError) as exc:
        raise BuildFailed(f"base image {reference}: {exc}", phase=FailurePhase.AUTH) from None
    except (ImageImportError, InvalidReferenceError) as exc:
        raise BuildFailed(f"base image {reference}: {exc.message}", phase=FailurePhase.PREPARE) from None


async def _import(
    resolved: ResolvedImage, disk: Path, *, layer_cache: Path, credentials: RegistryCredentials | None,
    disk_mb: int | None,
) -> None:  # fmt: skip
    try:
        await import_image(resolved.pinned_reference, disk, cache_dir=layer_cache, credentials=credentials,
                           platform=resolved.platform, min_size_mib=max(disk_mb or 0, DEFAULT_MIN_SIZE_MIB))
    except (RegistryAuthError, CredentialsError) as exc:
        raise BuildFailed(f"base image {resolved.reference}: {exc}", phase=FailurePhase.AUTH) from None
    except ImageImportError as exc:
        raise BuildFailed(f"base image {resolved.reference}: {exc.message}", phase=FailurePhase.PREPARE) from None
