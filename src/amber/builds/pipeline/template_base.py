"""Building on an existing template (``base_image`` names a template, ``source_type`` ``template_base``).

The child build boots the parent's *disk* (its whole chain, frozen at the parent's snapshot) with a fresh
overlay; the parent's running processes are not carried over. The parent's runtime defaults (user, workdir,
env incl. ``default_envs`` values, R56) are the child's image defaults, and its start command and readiness
probe are the child's unless the child sets a ``start_cmd`` (as a Docker image's CMD and HEALTHCHECK), so
the child's snapshot runs the parent's service again. The parent's disk files are hard-linked into the build
cache on first use, keyed by the parent artifact's manifest, so cached child layers survive the parent's
deletion.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.builds.pipeline.events import BuildLog
from amber.builds.pipeline.store import CacheStore, EntryHold
from amber.builds.planning.cache import CacheDecision
from amber.builds.planning.digests import digest_json
from amber.builds.planning.runtime import ImageDefaults, inherited_defaults
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, CacheReason, CacheStatus
from amber.vm.artifact import TemplateArtifact
from amber.vm.errors import VMError

ARTIFACT_MANIFEST = "amber-artifact.json"  # written by the pipeline next to the VM artifact's manifest.json


@dataclass(frozen=True)
class TemplateBase:
    chain: tuple[Path, ...]
    defaults: ImageDefaults
    key: str
    oci_metadata: dict[str, Any] | None
    entry: EntryHold | None = None  # the held cache entry of the chain; None when the chain is private


def _defaults(meta: dict[str, Any]) -> ImageDefaults:
    return inherited_defaults(meta.get("runtime_defaults"), meta.get("runtime_env"))


def _link_chain(chain: list[Path], target: Path) -> list[Path]:
    target.mkdir(parents=True)
    linked = []
    for i, path in enumerate(chain):
        dest = target / f"{i:02d}-{path.name}"
        os.link(path, dest)
        linked.append(dest)
    return linked


def _cached_chain(directory: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in directory.iterdir() if p.is_file()))


async def prepare_template_base(
    ref: str,
    artifact_dir: Path | None,
    *,
    decision: CacheDecision,
    log: BuildLog,
    store: CacheStore,
    work_dir: Path,
    claims: list[EntryHold],
) -> TemplateBase:
    if artifact_dir is None:
        raise BuildFailed(f"base_image {ref!r} names a template whose artifact is not available on this server",
                          phase=FailurePhase.PREPARE)  # fmt: skip
    try:
        artifact = await asyncio.to_thread(TemplateArtifact.load, artifact_dir)
        manifest_bytes = (artifact_dir / "manifest.json").read_bytes()
        meta = json.loads((artifact_dir / ARTIFACT_MANIFEST).read_text())
    except (VMError, OSError, ValueError) as exc:
        raise BuildFailed(f"base template {ref!r} cannot be used: {exc}", phase=FailurePhase.PREPARE) from None
    key = digest_json({"kind": "template-base", "manifest": hashlib.sha256(manifest_bytes).hexdigest()})
    chain = [layer.path for layer in artifact.chain.layers]
    defaults = _defaults(meta)
    metadata = meta.get("oci_metadata")
    subject = f"base template {ref}"
    path = store.template_base_path(key)
    use = store.use(path) if decision.lookup else None
    if use is not None:
        claims.append(use)
        await log.cache(CacheKind.LAYER, CacheStatus.HIT, subject, f"base disk cached for {subject}")
        return TemplateBase(_cached_chain(path), defaults, key, metadata, use)
    claim = store.claim(path) if decision.lookup else None
    if claim is None:
        status = CacheStatus.MISS if decision.lookup else CacheStatus.BYPASS
        reason = CacheReason.MISSING_OR_INCOMPATIBLE if decision.lookup else decision.reason
        await log.cache(CacheKind.LAYER, status, subject, f"using {subject} directly", reason=reason)
        linked = await asyncio.to_thread(_link_chain, chain, work_dir / "template-base")
        return TemplateBase(tuple(linked), defaults, key, metadata)
    claims.append(claim)
    await log.cache(CacheKind.LAYER, CacheStatus.MISS, subject, f"base disk not cached for {subject}",
                    reason=CacheReason.MISSING_OR_INCOMPATIBLE)  # fmt: skip
    linked = await asyncio.to_thread(_link_chain, chain, claim.path)
    await asyncio.to_thread(claim.publish)
    await log.cache(CacheKind.LAYER, CacheStatus.STORED, subject, f"base disk stored for {subject}")
    return TemplateBase(tuple(linked), defaults, key, metadata, claim)
