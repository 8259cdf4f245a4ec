"""A ``dockerfile`` source's root disk: BuildKit (``amber.buildkit``) builds the target as an image, its tree becomes
an ext4 disk cached by *what BuildKit produced*. The rest of the build (VM, start command, readiness, snapshot)
and the final-artifact cache are the native ones.

Guarantees:
- the pull access check for every imported image runs first, on every build (inside ``amber.buildkit``), so a
  cached disk is never handed to a caller who could not pull its base;
- the base disk is keyed by ``dockerfile_base_key(image ID, disk size, guest)``: the image ID is the config
  digest BuildKit produced, which covers every layer's diff_id — equal ID, equal tree. Equal Dockerfile text is
  not enough (``RUN date``), so the Dockerfile is always solved (from BuildKit's cache when nothing changed);
  the lookup runs between the image solve and the tree export, so a hit skips the export and ``mkfs``;
- a build with secrets or ``skip_cache`` neither reads nor writes this cache (nor, through
  ``BaseImage.uncacheable``, the final-artifact cache): BuildKit runs it with a per-build nonce, and its disk
  stays in the work directory; an exported tree that is not the solved image (a base tag moved between the
  two solves) is not stored either.
Secrets and registry credentials go to ``amber.buildkit`` in memory only; they are never key inputs.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from amber.buildkit.build import DockerfileBuildRequest, build_dockerfile_rootfs
from amber.buildkit.daemon import managed_dockerd
from amber.builds.pipeline.attempt import Attempt, BaseImage
from amber.builds.pipeline.credentials import to_registry_credentials
from amber.builds.pipeline.runner import Entry
from amber.builds.pipeline.store import EntryHold
from amber.builds.planning.cache import CacheDecision, dockerfile_base_key
from amber.builds.planning.runtime import image_defaults
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, CacheReason, LogPhase
from amber.oci.config import ImageConfig
from amber.oci.credentials import BasicCredentials, exchange_credentials
from amber.oci.errors import ImageImportError
from amber.rootfs.ext4 import DEFAULT_MIN_SIZE_MIB, make_ext4


def _basic(value: Any) -> BasicCredentials | None:
    credentials = to_registry_credentials(value)
    return exchange_credentials(credentials) if credentials is not None else None


async def dockerfile_base(attempt: Attempt, decision: CacheDecision) -> BaseImage:
    plan, inputs, log = attempt.plan, attempt.job.inputs, attempt.log
    source = plan.dockerfile_source
    assert source is not None, "a dockerfile source's plan"
    if decision.lookup and plan.uses_secrets:  # BuildKit gives a build with secrets keys of its own
        decision = CacheDecision(CacheReason.WHOLE_BUILD_SKIP_CACHE)
    request = DockerfileBuildRequest(
        dockerfile=plan.dockerfile,
        dockerfile_path=source.dockerfile_path,
        context_files=plan.context_files(inputs.inline_files),
        blob_paths=attempt.job.blob_paths,
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
    tree, staging, disk = attempt.work_dir / "tree", attempt.work_dir / "buildkit", attempt.work_dir / "base.raw"
    hits: dict[str, EntryHold | None] = {}  # image id → the held hit, if its lookup found one

    def entry_for(image_id: str) -> tuple[str, Entry]:
        key = dockerfile_base_key(image_id, disk_mb=plan.vm.disk_mb, guest_fingerprint=attempt.fingerprint)
        return key, Entry(CacheKind.LAYER, attempt.cache.store.base_path(key), decision, "base disk",
                          f"Dockerfile image {image_id}", why=None if plan.skip_cache else "the build uses secrets")

    async def want_tree(image_id: str, _config: ImageConfig) -> bool:
        """Between the image solve and the tree export: a cached disk for this image → no export."""
        hits[image_id] = await attempt.cache.lookup(entry_for(image_id)[1])
        return hits[image_id] is None

    await log.info(LogPhase.PREPARING, "building the Dockerfile with BuildKit")
    try:
        result = await build_dockerfile_rootfs(
            request, dockerd=managed_dockerd(attempt.data_dir), target_dir=tree, staging_dir=staging,
            emit=log.forward, cancel=attempt.cancel, secrets=inputs.secrets, registry_credentials=credentials,
            base_image_credential=base_credential, want_tree=want_tree,
        )  # fmt: skip
        key, entry = entry_for(result.image_id)
        hit = hits.get(result.image_id)
        uncacheable = decision.reason if not decision.lookup else None
        defaults, metadata = image_defaults(result.image_config), result.image_config.oci_metadata() or None
        if result.tree is None:  # a hit: ``lookup`` holds it
            assert hit is not None
            return BaseImage((hit.path,), defaults, key, metadata, hold=hit)
        await log.info(LogPhase.PREPARING, "writing the root disk")
        try:
            await asyncio.to_thread(make_ext4, result.tree, disk, max(plan.vm.disk_mb or 0, DEFAULT_MIN_SIZE_MIB))
        except ImageImportError as exc:
            raise BuildFailed(f"writing the root disk failed: {exc}", phase=FailurePhase.PREPARE) from None
        if not result.tree_is_image:
            # The export re-ran steps (a base tag moved between the two solves): not that image's tree.
            await log.info(LogPhase.PREPARING, "the exported tree differs from the solved image: not cached")
            return BaseImage((disk,), defaults, key, metadata, uncacheable=uncacheable)
        stored = await attempt.cache.store_result(entry, disk)
        return BaseImage((disk,), defaults, key, metadata, hold=stored, uncacheable=uncacheable)
    finally:
        await asyncio.to_thread(shutil.rmtree, tree, True)
        await asyncio.to_thread(shutil.rmtree, staging, True)
