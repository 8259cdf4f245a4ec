"""Cache keys and cache decisions for native builds. Pure.

Keys form a chain:

* base layer: ``H(format, manifest digest, root-disk parameters, guest fingerprint)`` — the image *manifest
  digest*, never its tag, so a moved tag is a miss; for a ``dockerfile`` source ``H("dockerfile", format, image
  ID BuildKit built, root-disk parameters, guest fingerprint)``;
* step ``i``: ``H(parent key, normalised instruction and ops, content digests of the copied context entries,
  build envs)`` — the parent key carries everything before it;
* final artifact: ``H(last layer key, start command, readiness, runtime defaults, VM shape, guest fingerprint)``
  so a fully cached rebuild restores nothing and boots nothing.

Decisions (R45-R47): top-level ``skip_cache`` bypasses every lookup (reason ``whole_build_skip_cache``);
a ``skip_cache`` step bypasses itself and every later step (``builder_cache_boundary``); a copy with
``force_upload`` bypasses itself (``force_upload``) and every later step. Bypassed layers are never stored
(cache entries are immutable, and a bypassed key already names a stored layer or is bound to be bypassed
again). The final artifact is looked up and stored only when no step was bypassed. Secrets are never inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from amber.builds.planning.digests import ContentDigest, context_entry, digest_json
from amber.builds.planning.runtime import RuntimeDefaults
from amber.builds.planning.steps import CopyOp, StepPlan
from amber.contract.logs import CacheReason
from amber.contract.sources import BuildContextFile

LAYER_FORMAT = "amber-layer-v1"  # bump when the on-disk layout of layers or artifacts changes


def base_layer_key(manifest_digest: str, *, disk_mb: int | None, guest_fingerprint: str) -> str:
    """The root disk of an OCI image: keyed by its manifest digest, never its tag."""
    return _disk_key("base", "manifest", manifest_digest, disk_mb, guest_fingerprint,
                     "base layers are keyed by manifest digest")  # fmt: skip


def dockerfile_base_key(image_id: str, *, disk_mb: int | None, guest_fingerprint: str) -> str:
    """The root disk of a ``dockerfile`` source: keyed by the image BuildKit built (its config digest covers every
    layer's diff_id, so equal IDs mean equal trees), never by the Dockerfile text (``RUN date``)."""
    return _disk_key("dockerfile", "image", image_id, disk_mb, guest_fingerprint,
                     "Dockerfile base disks are keyed by image ID")  # fmt: skip


def _disk_key(kind: str, field: str, digest: str, disk_mb: int | None, guest_fingerprint: str, rule: str) -> str:
    if not digest.startswith("sha256:"):
        raise ValueError(f"{rule}, got {digest!r}")
    return digest_json({"kind": kind, "format": LAYER_FORMAT, field: digest, "disk_mb": disk_mb,
                        "guest": guest_fingerprint})  # fmt: skip


def copied_entries(
    plan: StepPlan, context: Sequence[BuildContextFile], content_digest: ContentDigest
) -> list[tuple[str, str, str, str]]:
    """The context entries a step copies (each source and everything below it), with content digests."""
    sources = [s.rstrip("/") for op in plan.ops if isinstance(op, CopyOp) for s in op.sources]
    if not sources:
        return []
    picked = []
    for entry in context:
        path = entry.path.rstrip("/")
        if any(path == s or path.startswith(s + "/") for s in sources):
            picked.append(context_entry(entry, content_digest))
    return sorted(picked)


def step_key(
    parent_key: str,
    plan: StepPlan,
    copied: Sequence[tuple[str, str, str, str]],
    build_envs: Mapping[str, str],
) -> str:
    ops: list[dict[str, Any]] = [{"op": type(op).__name__, **asdict(op)} for op in plan.ops]
    return digest_json(
        {
            "kind": "step",
            "parent": parent_key,
            "action": plan.action,
            "lines": list(plan.lines),
            "ops": ops,
            "copied": [list(c) for c in copied],
            "build_envs": dict(sorted(build_envs.items())),
        }
    )


def final_artifact_key(
    last_layer_key: str,
    runtime: RuntimeDefaults,
    *,
    vcpus: int,
    memory_mib: int,
    disk_mb: int | None,
    internet_access: bool,
    guest_fingerprint: str,
) -> str:
    return digest_json(
        {
            "kind": "final",
            "format": LAYER_FORMAT,
            "layer": last_layer_key,
            "start_cmd": runtime.start_cmd,
            "readiness": runtime.readiness.to_json() if runtime.readiness else None,
            "user": runtime.user,
            "workdir": runtime.workdir,
            "env": dict(sorted(runtime.env.items())),
            "vm": {"vcpus": vcpus, "memory_mib": memory_mib, "disk_mb": disk_mb, "net": internet_access},
            "guest": guest_fingerprint,
        }
    )


@dataclass(frozen=True)
class CacheDecision:
    """Look the key up (``reason is None``) or bypass the cache for ``reason``."""

    reason: CacheReason | None = None

    @property
    def lookup(self) -> bool:
        return self.reason is None


def layer_decisions(skip_cache: bool, plans: Sequence[StepPlan]) -> tuple[CacheDecision, list[CacheDecision]]:
    """(base decision, one decision per step) per the module rules; ``skip_cache`` is the request's top-level one."""
    if skip_cache:
        bypass = CacheDecision(CacheReason.WHOLE_BUILD_SKIP_CACHE)
        return bypass, [bypass for _ in plans]
    out: list[CacheDecision] = []
    bypassing = False
    for plan in plans:
        if plan.is_cache_boundary:
            bypassing = True
            out.append(CacheDecision(CacheReason.BUILDER_CACHE_BOUNDARY))
        elif plan.force_upload and not bypassing:
            bypassing = True
            out.append(CacheDecision(CacheReason.FORCE_UPLOAD))
        elif bypassing:
            out.append(CacheDecision(CacheReason.BUILDER_CACHE_BOUNDARY))
        else:
            out.append(CacheDecision())
    return CacheDecision(), out


def final_decision(skip_cache: bool, steps: Sequence[CacheDecision]) -> CacheDecision:
    if skip_cache:
        return CacheDecision(CacheReason.WHOLE_BUILD_SKIP_CACHE)
    if any(not d.lookup for d in steps):
        return CacheDecision(CacheReason.BUILDER_CACHE_BOUNDARY)
    return CacheDecision()
