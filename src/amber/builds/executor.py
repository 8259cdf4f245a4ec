"""The seam between the service (queue, workers, log bus) and the build pipeline.

The service hands a ``BuildJob`` to a ``BuildExecutor``; the executor reports progress as ``LogEvent``s
through the ``emit`` callback and returns a ``BuildArtifact`` or raises ``BuildFailed``. The service owns
offsets, timestamps and persistence of log entries; the executor owns everything that touches images,
disks and VMs. Secrets and registry credentials travel only inside the ``BuildJob``, in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol


class LogKind(StrEnum):
    START = "start"
    MESSAGE = "message"
    CACHE = "cache"
    RETRY = "retry"
    WARNING = "warning"
    ERROR = "error"
    CANCELLED = "cancelled"
    END = "end"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


class LogPhase(StrEnum):
    """The contract's documented log ``phase`` values."""

    CACHE = "cache"
    PREPARING = "preparing"
    VM_CREATE = "vm_create"
    STEP = "step"
    SYNC = "sync"
    STARTUP = "startup"
    READINESS = "readiness"
    SNAPSHOT = "snapshot"
    FINALIZE = "finalize"
    CLEANUP = "cleanup"
    RETRY = "retry"


class FailurePhase(StrEnum):
    """TemplateFailurePhase: where a build failed (a different vocabulary from LogPhase)."""

    AUTH = "auth"
    PREFLIGHT = "preflight"
    BLOB_UPLOAD = "blob_upload"
    PREPARE = "prepare"
    BUILD_STEP = "build_step"
    READINESS = "readiness"
    SNAPSHOT = "snapshot"
    FINALIZE = "finalize"
    INTERRUPTED = "interrupted"


class CacheKind(StrEnum):
    FILE_BLOB = "file_blob"
    LAYER = "layer"
    FINAL_ARTIFACT = "final_artifact"


class CacheStatus(StrEnum):
    HIT = "hit"
    MISS = "miss"
    STORED = "stored"
    BYPASS = "bypass"


class CacheReason(StrEnum):
    WHOLE_BUILD_SKIP_CACHE = "whole_build_skip_cache"
    BUILDER_CACHE_BOUNDARY = "builder_cache_boundary"
    FORCE_UPLOAD = "force_upload"
    MISSING_OR_INCOMPATIBLE = "missing_or_incompatible"


@dataclass(frozen=True)
class LogEvent:
    """One build log line as the pipeline reports it; the service adds build_id, offset and timestamp."""

    kind: LogKind
    message: str
    level: LogLevel = LogLevel.INFO
    phase: LogPhase | None = None
    step_index: int | None = None  # 1-based
    total_steps: int | None = None
    cache_kind: CacheKind | None = None
    cache_status: CacheStatus | None = None
    cache_reason: CacheReason | None = None
    cache_subject: str | None = None


class BuildFailed(Exception):
    """A build failure the user can act on. ``code`` is the contract's failure code (normally build_error)."""

    def __init__(
        self,
        message: str,
        *,
        phase: FailurePhase,
        code: str = "build_error",
        step_index: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.phase = phase
        self.code = code
        self.step_index = step_index
        self.details = details  # phase-specific ``error_detail.details`` keys (e.g. ``command``), never secrets


@dataclass
class BuildJob:
    """Everything one build attempt needs. ``secrets`` and ``registry_credentials`` are memory-only."""

    build_id: str
    template_id: str
    request: Any  # amber.api.schemas.requests.CreateTemplateRequest (validated)
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


Emit = Callable[[LogEvent], Awaitable[None]]


class BuildExecutor(Protocol):
    async def run(self, job: BuildJob, emit: Emit, cancel: asyncio.Event) -> BuildArtifact:
        """Run one build attempt. Must stop promptly (and clean up VMs and mounts) once ``cancel`` is set,
        raising ``asyncio.CancelledError``; raise ``BuildFailed`` for user-facing failures."""
        ...
