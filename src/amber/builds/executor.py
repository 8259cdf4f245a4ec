"""The seam between the service (queue, workers, log bus) and the build pipeline.

The service hands a ``BuildJob`` to a ``BuildExecutor``; the executor reports progress as ``LogEvent``s
through the ``emit`` callback and returns a ``BuildArtifact`` or raises ``BuildFailed``. The service owns
offsets, timestamps and persistence of log entries; the executor owns everything that touches images,
disks and VMs. Secrets and registry credentials travel only inside the ``BuildJob``, in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from amber.contract.logs import Emit


@dataclass
class BuildJob:
    """Everything one build attempt needs. ``secrets`` and ``registry_credentials`` are memory-only."""

    build_id: str
    template_id: str
    request: Any  # amber.contract.request.CreateTemplateRequest (validated)
    data_dir: Path
    secrets: Mapping[str, str] = field(default_factory=dict)  # build_secrets id -> value
    registry_credentials: Mapping[str, Any] = field(default_factory=dict)  # host -> credentials
    base_image_credentials: Any = None  # resolved base_image_auth, if any
    blob_paths: Mapping[str, Path] = field(default_factory=dict)  # blob id (sha256 digest) -> file
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
