"""Response models of the template API (``templates-models.md`` §5-§10), exactly as the SDK parses them.

All models are open (``extra="allow"``); optional fields are *omitted* when unset (serialise with
``exclude_none=True``), because the generated SDK models reject ``null``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer

from amber.contract.catalog import Visibility
from amber.contract.failures import FailurePhase
from amber.contract.sources import Backend, SourceType
from amber.contract.status import BuildStatus


def format_timestamp(value: datetime) -> str:
    """RFC 3339, UTC, ``Z`` suffix, microseconds (parses with Python 3.11 ``fromisoformat``)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", use_enum_values=True)

    @field_serializer("*", when_used="json")
    def _timestamps(self, value: Any) -> Any:
        return format_timestamp(value) if isinstance(value, datetime) else value


class NamespaceKind(StrEnum):
    SYSTEM = "system"
    USER = "user"
    DEPLOYMENT = "deployment"


class RuntimeDefaults(_Model):
    default_env_keys: list[str] | None = None
    start_cmd: str | None = None
    default_user: str | None = None
    default_workdir: str | None = None
    readiness: dict[str, Any] | None = None


class TemplateInfo(_Model):
    id: str
    name: str
    description: str
    builtin: bool
    canonical_ref: str
    namespace_slug: str
    visibility: Visibility
    tags: list[str] | None = None
    default_tag: str | None = None
    runtime_defaults: RuntimeDefaults | None = None


class TemplateTagInfo(_Model):
    tag: str
    build_id: str
    created_at: datetime


class TemplateAliasInfo(_Model):
    alias_ref: str
    created_at: datetime


class TemplateNameClaim(_Model):
    claim_token: str
    canonical_ref: str
    expires_at: datetime


class TemplateNamespaceInfo(_Model):
    slug: str
    kind: NamespaceKind
    is_default: bool


class TemplateFailureDetail(_Model):
    """Exactly the SDK's key set: an HTTP error body with any other key inside makes the SDK fail."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    code: str
    message: str
    phase: FailurePhase
    retryable: bool
    suggested_action: str
    step_index: int | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    cache_subject: str | None = None
    build_id: str | None = None
    request_id: str | None = None
    details: dict[str, Any] | None = None


class ArtifactAvailability(_Model):
    status: str
    reason: str | None = None


class Promotability(_Model):
    status: str
    promotable: bool
    reason: str | None = None


class TemplateBuildSummary(_Model):
    build_id: str
    template_id: str
    name: str
    tags: list[str]
    status: BuildStatus
    build_backend: Backend
    source_type: SourceType
    created_at: datetime
    updated_at: datetime
    source_digest: str | None = None
    context_digest: str | None = None
    dockerfile_digest: str | None = None
    triggered_by: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    failure_phase: str | None = None
    cache_summary: dict[str, int] | None = None
    artifact_availability: ArtifactAvailability | None = None
    promotability: Promotability | None = None
    retention_expires_at: datetime | None = None
    artifact_ids: list[str] | None = None
    build_config: dict[str, Any] | None = None
    runtime_defaults: RuntimeDefaults | None = None
    oci_metadata: dict[str, Any] | None = None
    retry_of_build_id: str | None = None
    original_build_id: str | None = None
    cancel_requested_at: datetime | None = None
    cancel_requested_by: str | None = None
    cancellation_reason: str | None = None


class TemplateBuild(TemplateBuildSummary):
    canonical_ref: str
    namespace_slug: str
    visibility: Visibility
    error: str | None = None
    error_detail: TemplateFailureDetail | None = None


class TemplateBuildListResponse(_Model):
    builds: list[TemplateBuildSummary]
    next_cursor: str | None = None


class TemplateBuildLogEntry(_Model):
    build_id: str
    template_id: str
    offset: int
    timestamp: datetime
    kind: str
    level: str
    message: str
    error_detail: TemplateFailureDetail | None = None
    result: TemplateInfo | None = None
    result_metadata: dict[str, Any] | None = None
    phase: str | None = None
    step_index: int | None = None
    total_steps: int | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    cache_kind: str | None = None
    cache_status: str | None = None
    cache_reason: str | None = None
    cache_subject: str | None = None


class TemplateBuildStatusSnapshot(_Model):
    build: TemplateBuild
    entries: list[TemplateBuildLogEntry]
    next_offset: int


class TemplateBlobPreflightResult(_Model):
    path: str
    entry_type: str
    missing: bool
    mode: str | None = None
    blob_id: str | None = None


class TemplateBlobPreflightResponse(_Model):
    files: list[TemplateBlobPreflightResult]


class ErrorResponse(_Model):
    error: str
    code: str
    error_detail: TemplateFailureDetail | None = None
    request_id: str | None = None
    build_id: str | None = None
    retryable: bool | None = None
    suggested_action: str | None = None
