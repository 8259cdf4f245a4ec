"""Plan and validate response models (templates-models.md § 8), serialised exactly as the SDK parses them.

Optional fields are omitted when unset: serialise with ``model.model_dump(mode="json", exclude_none=True)``
(``to_json()`` does that). All models are open, as in the contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from amber.contract.sources import Backend, SourceType


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The JSON body: optional fields omitted rather than ``null``."""
        return self.model_dump(mode="json", exclude_none=True)


class TemplateIgnoredInstruction(_Open):
    instruction: str
    line: int


class TemplateBuildPlan(_Open):
    """The normalised plan. ``build_steps`` items are externally tagged: ``{"Run": {...}}``, ``{"Copy": {...}}``.

    Extra key ``dockerfile`` (allowed: the model is open) carries the Dockerfile text the steps became (R18)."""

    base_template: str
    run_steps: list[str]
    build_steps: list[dict[str, Any]]
    build_envs: dict[str, str]
    env_assignments: list[list[str]]
    ignored_instructions: list[str]
    start_cmd: str | None = None
    default_user: str | None = None
    default_workdir: str | None = None
    readiness: dict[str, Any] | None = None
    ignored_instruction_warnings: list[TemplateIgnoredInstruction] | None = None
    dockerfile: str | None = None


class TemplateBuildContextManifestSummary(_Open):
    context_manifest_id: str
    context_digest: str
    file_count: int


class TemplateBuildPlanResponse(_Open):
    build_backend: Backend
    source_type: SourceType
    build_plan: TemplateBuildPlan
    warnings: list[str] = Field(default_factory=list)
    requires_base_image_auth: bool
    source_digest: str | None = None
    context_manifest: TemplateBuildContextManifestSummary | None = None
    dockerfile_digest: str | None = None


class TemplateBuildValidationError(_Open):
    code: str
    message: str
    phase: str | None = None
    field: str | None = None  # extra (open model): the request field the error is about


class TemplateBuildValidationResponse(_Open):
    valid: bool
    errors: list[TemplateBuildValidationError] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
