"""A template as the root disk (``base_image`` names a template; ``source_type`` ``template_base``).

The child build boots the parent's *disk* (its whole chain, frozen at the parent's snapshot) with a fresh
overlay; the parent's running processes are not carried over. The parent's runtime defaults (user, workdir,
env incl. ``default_envs`` values, R56; read through ``amber.builds.artifact_metadata``) are the child's image
defaults, and its start command and readiness probe are the child's unless the child sets a ``start_cmd`` (as a
Docker image's CMD and HEALTHCHECK). The parent's disk files are hard-linked into the build cache on first use,
keyed by the parent artifact's manifest, so cached child layers survive the parent's deletion.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from amber.builds.artifact_metadata import ArtifactMetadataError, read_artifact_metadata
from amber.builds.pipeline.attempt import Attempt, BaseImage
from amber.builds.pipeline.runner import Entry
from amber.builds.planning.cache import CacheDecision
from amber.builds.planning.digests import digest_json
from amber.builds.planning.runtime import inherited_defaults
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, LogPhase
from amber.vm import TemplateArtifact, VMError


async def template_base(attempt: Attempt, decision: CacheDecision) -> BaseImage:
    ref, artifact_dir = attempt.plan.base_ref, attempt.job.base_template_artifact
    await attempt.log.info(LogPhase.PREPARING, f"preparing base template {ref}")
    if artifact_dir is None:
        raise BuildFailed(f"base_image {ref!r} names a template whose artifact is not available on this server",
                          phase=FailurePhase.PREPARE)  # fmt: skip
    try:
        artifact = await asyncio.to_thread(TemplateArtifact.load, artifact_dir)
        manifest = await asyncio.to_thread((artifact_dir / "manifest.json").read_bytes)
        metadata = await asyncio.to_thread(read_artifact_metadata, artifact_dir)
    except (VMError, OSError, ArtifactMetadataError) as exc:
        raise BuildFailed(f"base template {ref!r} cannot be used: {exc}", phase=FailurePhase.PREPARE) from None
    key = digest_json({"kind": "template-base", "manifest": hashlib.sha256(manifest).hexdigest()})
    chain = [layer.path for layer in artifact.chain.layers]
    entry = Entry(CacheKind.LAYER, attempt.cache.store.template_base_path(key), decision, "base disk",
                  f"base template {ref}")  # fmt: skip
    result = await attempt.cache.run(entry, attempt.work_dir / "template-base",
                                     lambda target: asyncio.to_thread(_link_chain, chain, target))  # fmt: skip
    linked = tuple(sorted(p for p in result.path.iterdir() if p.is_file()))  # named in chain order
    return BaseImage(linked, inherited_defaults(metadata.runtime), key, metadata.oci_metadata, hold=result.hold)


def _link_chain(chain: list[Path], target: Path) -> None:
    target.mkdir(parents=True)
    for i, path in enumerate(chain):
        os.link(path, target / f"{i:02d}-{path.name}")
