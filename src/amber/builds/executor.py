"""The seam between the service (queue, workers, log bus) and the build pipeline.

The service hands a ``BuildJob`` to a ``BuildExecutor``: the ``BuildPlan`` decided at accept, the memory-only
``BuildInputs`` and where the store keeps the blobs and the base template. The executor reports progress as
``LogEvent``s through the ``emit`` callback and returns a ``BuildArtifact`` or raises ``BuildFailed``. The
service owns offsets, timestamps and persistence of log entries; the executor owns everything that touches
images, disks and VMs. Secrets, registry credentials, inline context bytes and ``build_envs`` values travel only
in ``BuildInputs``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from amber.builds.planning.build_plan import BuildPlan
from amber.contract.credentials import BaseImageAuth
from amber.contract.logs import Emit
from amber.contract.request import CreateTemplateRequest


@dataclass(frozen=True)
class BuildInputs:
    """What a build needs that is never persisted: held in the accepting process's memory, never logged."""

    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)  # build_secrets id -> value
    registry_credentials: Mapping[str, BaseImageAuth] = field(default_factory=dict, repr=False)  # host -> auth
    base_image_credentials: BaseImageAuth | None = field(default=None, repr=False)  # ``base_image_auth``
    inline_files: Mapping[str, str] = field(default_factory=dict, repr=False)  # context path -> content_base64
    build_envs: Mapping[str, str] = field(default_factory=dict, repr=False)  # build-only values (R56), never stored

    @classmethod
    def of(cls, req: CreateTemplateRequest) -> BuildInputs:
        files = req.build_context.files if req.build_context else []
        return cls(
            secrets={s.id: s.value.get_secret_value() for s in req.build_secrets or []},
            registry_credentials={r.registry: r.auth for r in req.registry_auth or []},
            base_image_credentials=req.base_image_auth,
            inline_files={f.path: f.content_base64 for f in files if f.content_base64 is not None},
            build_envs=dict(req.build_envs or {}),
        )

    @property
    def needed(self) -> bool:
        """Does the build depend on any of them (then only the accepting process can run it)?"""
        return bool(self.secrets or self.registry_credentials or self.base_image_credentials or self.inline_files
                    or self.build_envs)


@dataclass
class BuildJob:
    """Everything one build attempt needs."""

    build_id: str
    template_id: str
    plan: BuildPlan
    data_dir: Path
    inputs: BuildInputs = field(default_factory=BuildInputs)
    blob_paths: Mapping[str, Path] = field(default_factory=dict)  # blob id -> its file in the blob store
    base_template_artifact: Path | None = None  # artifact dir of the template ``base_image`` names, if it does


@dataclass
class BuildArtifact:
    """What a finished build produced: a directory holding disk, memory, state and manifest."""

    artifact_dir: Path
    runtime_defaults: dict[str, Any]  # TemplateRuntimeDefaults JSON
    oci_metadata: dict[str, Any] | None = None  # TemplateOciImageMetadata JSON
    cache_summary: dict[str, int] = field(default_factory=dict)  # TemplateBuildCacheSummary JSON
    source_digest: str | None = None
    dockerfile_digest: str | None = None
    context_digest: str | None = None
    size_bytes: int = 0


class BuildExecutor(Protocol):
    async def run(self, job: BuildJob, emit: Emit, cancel: asyncio.Event) -> BuildArtifact:
        """Run one build attempt. Must stop promptly (and clean up VMs and mounts) once ``cancel`` is set,
        raising ``asyncio.CancelledError``; raise ``BuildFailed`` for user-facing failures."""
        ...
