"""One build attempt as the phases see it: ``Attempt`` (what every phase reads, and the state the cleanup needs)
and ``Chain`` (the stored plan over the base disk this attempt got: keys, decisions, runtime defaults).

The phases (``amber.builds.pipeline.phases``) run in order over one ``Attempt``; ``NativeExecutor`` makes it,
runs them and cleans up after it whatever happened: the VM stopped, output pumps drained, every held cache entry
released, the work directory removed, and the artifact directory too unless the attempt finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber.builds.executor import BuildJob
from amber.builds.pipeline.events import BuildLog, OutputPump
from amber.builds.pipeline.runner import CachedRunner
from amber.builds.pipeline.store import EntryHold
from amber.builds.planning.build_plan import BuildPlan
from amber.builds.planning.cache import CacheDecision
from amber.builds.planning.runtime import ImageDefaults, RuntimeDefaults, image_env, map_healthcheck
from amber.contract.logs import CacheReason
from amber.vm import Driver, Machine


@dataclass(frozen=True)
class BaseImage:
    """A root disk to start from, plus the image config the runtime defaults come from (``phases.base``)."""

    chain: tuple[Path, ...]  # bottom first: a raw root disk, then (for a template base) its qcow2 layers
    defaults: ImageDefaults
    key: str  # cache key of the disk (the step chain's root)
    oci_metadata: dict[str, Any] | None = None
    hold: EntryHold | None = None  # the held cache entry of the disk; None: private (nothing over it is cached)
    uncacheable: CacheReason | None = None  # set: neither step layers nor the final artifact are cached, why


@dataclass(frozen=True)
class Chain:
    """The plan over ``base``: what this attempt caches under which key, and the template's runtime defaults."""

    plan: BuildPlan
    base: BaseImage
    keys: list[str]  # chain key per step
    decisions: list[CacheDecision]  # per step
    final_key: str
    final_decision: CacheDecision
    runtime: RuntimeDefaults
    user: str  # ``runtime.user`` and ``.workdir``, known: a booted base's image config is complete
    workdir: str
    step_env: dict[str, str]  # image env + build_envs: what steps see (never the start command)
    oci_metadata: dict[str, Any] | None  # the base's, with the readiness its HEALTHCHECK maps to (R38)

    @classmethod
    def over(cls, plan: BuildPlan, base: BaseImage, guest_fingerprint: str) -> Chain:
        _, decisions, final = plan.cache_decisions()
        if base.uncacheable is not None:
            decisions = [CacheDecision(base.uncacheable) for _ in plan.steps]
            final = CacheDecision(base.uncacheable)
        keys = plan.step_keys(base.key)
        runtime = plan.runtime_defaults(base.defaults)
        assert runtime.user is not None and runtime.workdir is not None, "a booted base's image config is complete"
        return cls(
            plan=plan,
            base=base,
            keys=keys,
            decisions=decisions,
            final_key=plan.final_key(keys[-1] if keys else base.key, runtime, guest_fingerprint),
            final_decision=final,
            runtime=runtime,
            user=runtime.user,
            workdir=runtime.workdir,
            step_env=image_env(base.defaults) | dict(plan.build_envs),
            oci_metadata=_with_mapped_readiness(base.oci_metadata, base.defaults),
        )


def _with_mapped_readiness(metadata: dict[str, Any] | None, defaults: ImageDefaults) -> dict[str, Any] | None:
    """OCI metadata whose ``healthcheck.mapped_readiness`` is the probe this pipeline derives from it (R38)."""
    if not metadata or "healthcheck" not in metadata:
        return metadata
    health = dict(metadata["healthcheck"])
    mapped = map_healthcheck(defaults.healthcheck)
    if mapped is None:
        health.pop("mapped_readiness", None)
    else:
        health["mapped_readiness"] = mapped.to_json()
    return {**metadata, "healthcheck": health}


@dataclass
class Attempt:
    job: BuildJob
    log: BuildLog
    cache: CachedRunner
    vm: Driver
    cancel: asyncio.Event
    data_dir: Path
    layer_cache: Path  # ``amber.oci``'s shared image-layer cache
    git_local_roots: Sequence[Path]
    work_dir: Path  # ``<data_dir>/builds/<build_id>``: private files, removed when the attempt ends
    artifact_dir: Path  # ``<data_dir>/artifacts/<build_id>``: the template artifact
    fingerprint: str = ""  # the build VM's (kernel, initramfs, agent, QEMU, accelerator): part of the keys
    holds: list[EntryHold] = field(default_factory=list)  # cache entries this attempt created or uses
    layers: list[Path] = field(default_factory=list)  # cached step layers over the base, in order
    machine: Machine | None = None
    booting: asyncio.Future[Machine] | None = None
    pumps: list[OutputPump] = field(default_factory=list)
    done: bool = False  # the artifact directory is the result: keep it

    @property
    def plan(self) -> BuildPlan:
        return self.job.plan
