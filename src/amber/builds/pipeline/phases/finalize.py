"""Phase ``finalize``: the template artifact, as one ``CachedRunner`` entry (kind ``final_artifact``).

The entry is keyed by the last layer, the start command, readiness, runtime defaults, VM shape and guest
(``cache.final_artifact_key``) and is a delta over the last layer's entry. A hit links the cached artifact into
the build's artifact directory: a fully cached rebuild boots nothing. A miss runs ``sync``, the ``start`` and
``snapshot`` phases into the artifact directory, writes the artifact's metadata
(``amber.builds.artifact_metadata``) and stores the directory as the entry (hard links). Either way the result
is a ``BuildArtifact`` whose runtime defaults are ``Chain.runtime`` — the plan's one rule over the base's image.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from amber.builds.artifact_metadata import ArtifactMetadata, write_artifact_metadata
from amber.builds.executor import BuildArtifact
from amber.builds.pipeline.attempt import Attempt, Chain
from amber.builds.pipeline.phases import steps
from amber.builds.pipeline.phases.snapshot import snapshot
from amber.builds.pipeline.phases.start import start_and_wait
from amber.builds.pipeline.runner import Entry, link_tree, walk_files
from amber.builds.pipeline.store import EntryHold
from amber.contract.logs import CacheKind, LogPhase


def artifact_metadata(chain: Chain) -> ArtifactMetadata:
    """What the template's ``amber-artifact.json`` says: the chain's runtime defaults (env values included)."""
    digests = chain.plan.digests
    return ArtifactMetadata(runtime=chain.runtime, oci_metadata=chain.oci_metadata,
                            source_digest=digests.source_digest, dockerfile_digest=digests.dockerfile_digest,
                            context_digest=digests.context_digest)  # fmt: skip


async def finalize(attempt: Attempt, chain: Chain, top: EntryHold | None) -> BuildArtifact:
    log = attempt.log
    entry = Entry(CacheKind.FINAL_ARTIFACT, attempt.cache.store.final_path(chain.final_key), chain.final_decision,
                  "template artifact", "template artifact", parent=top, chained=True)  # fmt: skip

    async def make(artifact_dir: Path) -> None:
        vm = await steps.machine(attempt, chain)
        await log.info(LogPhase.SYNC, "syncing guest filesystems")
        await asyncio.to_thread(vm.agent.sync)
        await start_and_wait(attempt, vm, chain)
        await snapshot(attempt, vm, artifact_dir)
        await log.info(LogPhase.FINALIZE, "finalizing the template artifact")
        await asyncio.to_thread(write_artifact_metadata, artifact_dir, artifact_metadata(chain))

    result = await attempt.cache.run(entry, attempt.artifact_dir, make, reuse=attempt.machine is None)
    if result.hit:
        await log.info(LogPhase.FINALIZE, "the whole template is cached; reusing its snapshot")
        await asyncio.to_thread(link_tree, result.path, attempt.artifact_dir)
    size = await asyncio.to_thread(_tree_size, attempt.artifact_dir)
    attempt.done = True
    digests = chain.plan.digests
    return BuildArtifact(
        artifact_dir=attempt.artifact_dir,
        runtime_defaults=chain.runtime.to_json(),
        oci_metadata=chain.oci_metadata,
        cache_summary=log.cache_summary(),
        source_digest=digests.source_digest,
        dockerfile_digest=digests.dockerfile_digest,
        context_digest=digests.context_digest,
        size_bytes=size,
    )


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in walk_files(root) if not p.is_symlink())
