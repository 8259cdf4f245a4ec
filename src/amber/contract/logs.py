"""The build log's vocabulary (templates-models.md § 7): entry kinds, levels, phases, cache events, and
``LogEvent``, one line as the pipeline (native or BuildKit) reports it. Pure.

The service adds ``build_id``, ``offset``, ``timestamp`` and ``attempt`` when it stores an event; ``start`` and the
terminal kinds (``end``, ``error``, ``cancelled``) are written only by the service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum


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


Emit = Callable[[LogEvent], Awaitable[None]]

_PLURAL = {CacheStatus.HIT: "hits", CacheStatus.MISS: "misses", CacheStatus.STORED: "stores",
           CacheStatus.BYPASS: "bypasses"}


def cache_summary_key(kind: CacheKind, status: CacheStatus) -> str:
    """The TemplateBuildCacheSummary counter a cache event adds to (``layer_hits``, ``file_blob_bypasses``, …)."""
    return f"{kind.value}_{_PLURAL[status]}"


CACHE_SUMMARY_KEYS: tuple[str, ...] = tuple(cache_summary_key(k, s) for k in CacheKind for s in CacheStatus)
