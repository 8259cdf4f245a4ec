"""The root disk of a ``dockerfile`` source: BuildKit (``amber.buildkit``) builds the target as an image, its tree
becomes an ext4 disk cached by *what BuildKit produced*. The rest of the build (VM, start command, readiness,
snapshot) and the final-artifact cache are the native ones.

Guarantees:
- the pull access check for every imported image runs first, on every build (inside ``amber.buildkit``), so a
  cached disk is never handed to a caller who could not pull its base;
- the base disk is keyed by ``dockerfile_base_key(image ID, disk size, guest)``: the image ID is the config
  digest BuildKit produced, which covers every layer's diff_id — equal ID, equal tree. Equal Dockerfile text is
  not enough (``RUN date``), so the Dockerfile is always solved (from BuildKit's cache when nothing changed);
  a hit skips the tree export and ``mkfs``; a miss exports, writes the disk into the cache entry, publishes;
- a build with secrets or ``skip_cache`` neither reads nor writes this cache (nor, through ``BaseImage``, the
  final-artifact cache): BuildKit runs it with a per-build nonce, and its disk stays in the work directory;
- the entry protocol is ``CacheStore``'s (claim, publish, shared hold while used), as for OCI base disks, so
  eviction (``prune.py``) treats both alike.
Secrets and registry credentials go to ``amber.buildkit`` in memory only; they are never key inputs.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.buildkit.build import DockerfileBuildRequest, build_dockerfile_rootfs
from amber.buildkit.daemon import managed_dockerd
from amber.builds.executor import BuildInputs
from amber.builds.pipeline.credentials import to_registry_credentials
from amber.builds.pipeline.events import BuildLog
from amber.builds.pipeline.store import CacheStore, EntryClaim, EntryHold
from amber.builds.planning.build_plan import BuildPlan
from amber.builds.planning.cache import CacheDecision, dockerfile_base_key
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, CacheReason, CacheStatus, Emit, LogPhase
from amber.oci.config import ImageConfig
from amber.oci.credentials import BasicCredentials, exchange_credentials
from amber.oci.errors import ImageImportError
from amber.rootfs.ext4 import DEFAULT_MIN_SIZE_MIB, make_ext4


def _basic(value: Any) -> BasicCredentials | None:
    credentials = to_registry_credentials(value)
    return exchange_credentials(credentials) if credentials is not None else None


def dockerfile_cache_decision(plan: BuildPlan, decision: CacheDecision) -> CacheDecision:
    """The base decision for a ``dockerfile`` source: ``skip_cache`` as for any build, and a build with secrets
    never reads or writes the cache (BuildKit gives it keys of its own; reason ``whole_build_skip_cache``)."""
    if decision.lookup and plan.uses_secrets:
        return CacheDecision(CacheReason.WHOLE_BUILD_SKIP_CACHE)
    return decision


@dataclass(frozen=True)
class DockerfileDisk:
    disk: Path
    image_config: ImageConfig
    image_id: str
    key: str | None  # the base key; None when the cache was bypassed
    entry: EntryHold | None  # the held cache entry; None: the disk is private to this build


async def build_dockerfile_disk(
    plan: BuildPlan,
    inputs: BuildInputs,
    *,
    data_dir: Path,
    work_dir: Path,
    blob_paths: Mapping[str, Path],
    emit: Emit,
    log: BuildLog,
    cancel: asyncio.Event,
    store: CacheStore,
    decision: CacheDecision,
    claims: list[EntryHold],
    guest_fingerprint: str,
) -> DockerfileDisk:
    """The root disk of the Dockerfile's target (cached by image ID) and its image config. Raises
    ``BuildFailed``. Entries this build holds are appended to ``claims`` (the caller releases them)."""
    source = plan.dockerfile_source
    assert source is not None, "a dockerfile source's plan"
    disk_mb = plan.vm.disk_mb
    request = DockerfileBuildRequest(
        dockerfile=plan.dockerfile,
        dockerfile_path=source.dockerfile_path,
        context_files=plan.context_files(inputs.inline_files),
        blob_paths=blob_paths,
        build_args=dict(source.build_args),
        build_target=source.build_target,
        internet_access=plan.vm.internet_access,
        skip_cache=plan.skip_cache,
        build_envs=dict(plan.build_envs),  # build_envs reach the Dockerfile's RUN steps, never the image (R56)
    )
    try:
        credentials = {host: c for host, v in inputs.registry_credentials.items() if (c := _basic(v)) is not None}
        base_credential = _basic(inputs.base_image_credentials)
    except (ImageImportError, ValueError) as exc:
        raise BuildFailed(f"registry credentials: {exc}", phase=FailurePhase.AUTH) from None
    tree, staging = work_dir / "tree", work_dir / "buildkit"
    found: dict[str, Any] = {}  # image id, key, the hit or claim (set by want_tree)

    async def want_tree(image_id: str, _config: ImageConfig) -> bool:
        """Called between the image solve and the tree export: a cached disk for this image → no export."""
        subject = f"Dockerfile image {image_id}"
        if not decision.lookup:
            why = "skip_cache is set" if plan.skip_cache else "the build uses secrets"
            await log.cache(CacheKind.LAYER, CacheStatus.BYPASS, subject, f"base disk rebuilt ({why}): {subject}",
                            reason=decision.reason)  # fmt: skip
            return True
        key = dockerfile_base_key(image_id, disk_mb=disk_mb, guest_fingerprint=guest_fingerprint)
        found["key"] = key
        path = store.base_path(key)
        use = store.use(path)
        if use is not None:
            claims.append(use)
            found["hold"] = use
            await log.cache(CacheKind.LAYER, CacheStatus.HIT, subject, f"base disk cached for {subject}")
            return False
        claim = store.claim(path)  # None: another build is writing it; this one writes a private disk
        if claim is not None:
            claims.append(claim)
            found["hold"] = claim
        await log.cache(CacheKind.LAYER, CacheStatus.MISS, subject, f"base disk not cached: exporting {subject}",
                        reason=CacheReason.MISSING_OR_INCOMPATIBLE)  # fmt: skip
        return True

    await log.info(LogPhase.PREPARING, "building the Dockerfile with BuildKit")
    try:
        result = await build_dockerfile_rootfs(
            request,
            dockerd=managed_dockerd(data_dir),
            target_dir=tree,
            staging_dir=staging,
            emit=emit,
            cancel=cancel,
            secrets=inputs.secrets,
            registry_credentials=credentials,
            base_image_credential=base_credential,
            want_tree=want_tree,
        )
        hold: EntryHold | None = found.get("hold")
        key: str | None = found.get("key")
        if result.tree is None:  # a hit
            assert hold is not None and key is not None
            return DockerfileDisk(hold.path, result.image_config, result.image_id, key, hold)
        claim = hold if isinstance(hold, EntryClaim) else None
        if claim is not None and not result.tree_is_image:
            # The export re-ran steps (a base tag moved between the two solves): not that image's tree.
            await log.info(LogPhase.PREPARING, "the exported tree differs from the solved image: not cached")
            claims.remove(claim)
            claim.release()
            claim = None
        disk = claim.path if claim is not None else work_dir / "base.raw"
        await log.info(LogPhase.PREPARING, "writing the root disk")
        min_size = max(disk_mb or 0, DEFAULT_MIN_SIZE_MIB)
        try:
            await asyncio.to_thread(make_ext4, result.tree, disk, min_size)
        except ImageImportError as exc:
            raise BuildFailed(f"writing the root disk failed: {exc}", phase=FailurePhase.PREPARE) from None
        if claim is None:
            return DockerfileDisk(disk, result.image_config, result.image_id, None, None)
        await asyncio.to_thread(claim.publish)
        subject = f"Dockerfile image {result.image_id}"
        await log.cache(CacheKind.LAYER, CacheStatus.STORED, subject, f"base disk stored for {subject}")
        return DockerfileDisk(disk, result.image_config, result.image_id, key, claim)
    finally:
        await asyncio.to_thread(shutil.rmtree, tree, True)
        await asyncio.to_thread(shutil.rmtree, staging, True)
