"""Request bodies of the template management endpoints (``templates-api.md``: tags, rename, visibility, name
claims, build cancel/retry/promote, blob preflight) and the ``Visibility`` of a template.

Open to unknown keys (``extra="ignore"``: the SDK's generated client may send more), which are dropped and never
stored; the build request itself is ``amber.contract.request``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Visibility(StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


class AssignTagsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tags: list[str] = Field(description="Non-empty list of tags to attach to (move onto) the resolved artifact.")


class RenameTemplateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    new_name: str


class UpdateTemplateVisibilityRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    visibility: Visibility


class ReserveTemplateNameRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    template_ref: str


class CancelTemplateBuildRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: str | None = None


class PromoteTemplateBuildRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tag: str | None = None
    tags: list[str] | None = None


class RetryTemplateBuildRequest(BaseModel):
    """Fresh, memory-only inputs for a retry; values are validated by the build request model."""

    model_config = ConfigDict(extra="ignore")
    tags: list[str] | None = None
    base_image_auth: dict[str, Any] | None = None
    registry_auth: list[dict[str, Any]] | None = None
    build_secrets: list[dict[str, Any]] | None = None


class TemplateBlobPreflightFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    path: str
    entry_type: str
    mode: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    force_upload: bool | None = None


class TemplateBlobPreflightRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    files: list[TemplateBlobPreflightFile]
