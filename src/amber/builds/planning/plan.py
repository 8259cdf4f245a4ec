"""``plan`` and ``validate`` (templates-api.md § 5): a ``BuildPlan`` rendered as TemplateBuildPlanResponse, and
a request's problems as ValidationResponse.

Pure; nothing is persisted and no executor runs. The plan rendered is the one a build of the same request would
store and execute (``build_plan.make_plan``): the service resolves the template base and the blob digests
first (``PlanInputs``), exactly as it does at accept. Runtime defaults are shown through the one rule
(``runtime.runtime_defaults``) over what is known of the image before the build: a template base's runtime
defaults, a Dockerfile's final stage; what only the image can tell (an OCI image's USER) is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from amber.builds.planning.build_plan import BaseTemplate, BuildPlan, make_plan
from amber.builds.planning.digests import context_manifest_id
from amber.builds.planning.dockerfile_source import DockerfileError, summarise_dockerfile
from amber.builds.planning.runtime import ImageDefaults
from amber.builds.planning.steps import CopyOp, ShellOp, StepPlan, UserOp, WorkdirOp
from amber.contract.errors import InvalidRequest
from amber.contract.plan import (
    TemplateBuildContextManifestSummary,
    TemplateBuildPlan,
    TemplateBuildPlanResponse,
    TemplateBuildValidationError,
    TemplateBuildValidationResponse,
    TemplateIgnoredInstruction,
)
from amber.contract.request import CreateTemplateRequest, parse_create_request, structural_problems
from amber.contract.validation import request_problems, validate_create_request


@dataclass(frozen=True)
class PlanInputs:
    """What only the store knows about a request: its template base and the digests of its uploaded blobs."""

    base_template: BaseTemplate | None = None
    blob_digests: Mapping[str, str] = field(default_factory=dict)


Resolve = Callable[[CreateTemplateRequest], PlanInputs]  # raises ``InvalidRequest`` (e.g. an unknown template)


def _build_step_items(plans: tuple[StepPlan, ...]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for plan in plans:
        for op in plan.ops:
            if isinstance(op, ShellOp):
                run: dict[str, Any] = {"command": op.command, "step_index": plan.index, "action": plan.action}
                if op.user is not None:
                    run["user"] = op.user
                items.append({"Run": run})
            elif isinstance(op, CopyOp):
                copy: dict[str, Any] = {"sources": list(op.sources), "dst": op.dst, "step_index": plan.index}
                if op.user is not None:
                    copy["chown"] = op.user
                if op.mode is not None:
                    copy["chmod"] = format(op.mode, "04o")
                items.append({"Copy": copy})
            elif isinstance(op, WorkdirOp):
                items.append({"Workdir": {"path": op.path, "step_index": plan.index}})
            elif isinstance(op, UserOp):
                items.append({"User": {"user": op.user, "step_index": plan.index}})
            else:
                items.append({"SkipCache": {"step_index": plan.index}})
    return items


def render_plan(plan: BuildPlan, image: ImageDefaults | None = None) -> TemplateBuildPlanResponse:
    """TemplateBuildPlanResponse of ``plan``; runtime defaults over ``image`` (default: what the plan knows of it).
    Raises ``InvalidRequest`` when an inline Dockerfile does not parse."""
    warnings = list(plan.warnings)
    ignored: list[str] = []
    ignored_warnings: list[TemplateIgnoredInstruction] = []
    build_envs = dict(plan.build_envs)
    if plan.dockerfile_source is not None:
        try:
            summary = summarise_dockerfile(plan.dockerfile)
        except DockerfileError as exc:
            raise InvalidRequest("dockerfile", str(exc)) from None
        base_template = summary.base
        run_steps = summary.run_steps
        build_steps = summary.build_steps
        env_assignments = summary.env_assignments
        for instruction, line in summary.ignored:
            ignored.append(instruction)
            ignored_warnings.append(TemplateIgnoredInstruction(instruction=instruction, line=line))
            warnings.append(f"dockerfile line {line}: {instruction.split()[0]} is ignored by the template pipeline")
    else:
        base_template = plan.base_ref
        run_steps = [op.command for p in plan.steps for op in p.ops if isinstance(op, ShellOp)]
        build_steps = _build_step_items(plan.steps)
        env_assignments = [[k, v] for k, v in plan.build_envs]
    runtime = plan.runtime_defaults(image)
    build_plan = TemplateBuildPlan(
        base_template=base_template,
        run_steps=run_steps,
        build_steps=build_steps,
        build_envs=build_envs,
        env_assignments=env_assignments,
        ignored_instructions=ignored,
        start_cmd=runtime.start_cmd,
        default_user=runtime.user,
        default_workdir=runtime.workdir,
        readiness=runtime.readiness.to_json() if runtime.readiness else None,
        ignored_instruction_warnings=ignored_warnings or None,
        dockerfile=plan.dockerfile,
    )
    files = [f for f in plan.context if f.entry_type == "file"]
    return TemplateBuildPlanResponse(
        build_backend=plan.backend,
        source_type=plan.source_type,
        build_plan=build_plan,
        warnings=warnings,
        requires_base_image_auth=plan.requires_base_image_auth,
        source_digest=plan.digests.source_digest,
        context_manifest=(
            TemplateBuildContextManifestSummary(
                context_manifest_id=context_manifest_id(plan.digests.context_digest),
                context_digest=plan.digests.context_digest,
                file_count=len(files),
            )
            if plan.digests.context_digest is not None
            else None
        ),
        dockerfile_digest=plan.digests.dockerfile_digest,
    )


def plan_request(req: CreateTemplateRequest, inputs: PlanInputs | None = None) -> TemplateBuildPlanResponse:
    """The plan of a request already checked by ``validate_create_request``."""
    inputs = inputs or PlanInputs()
    return render_plan(make_plan(req, inputs.base_template, inputs.blob_digests))


def plan_json(data: Any, *, resolve: Resolve | None = None) -> dict[str, Any]:
    """``POST /v1/templates/plan`` in one call: decoded JSON → response JSON. Raises ``InvalidRequest`` (→ 400)."""
    req = validate_create_request(data)
    return plan_request(req, resolve(req) if resolve is not None else None).to_json()


def validate_request(data: Any, *, resolve: Resolve | None = None) -> TemplateBuildValidationResponse:
    """``POST /v1/templates/validate``: every problem reported as data (never raises for bad input)."""
    problems = structural_problems(data)
    warnings: list[str] = []
    if not problems:
        req = parse_create_request(data)
        problems = request_problems(req)
        if not problems:
            try:
                warnings = plan_request(req, resolve(req) if resolve is not None else None).warnings
            except InvalidRequest as exc:
                problems = [exc]
    return TemplateBuildValidationResponse(
        valid=not problems,
        errors=[
            TemplateBuildValidationError(code=p.code, message=str(p), phase="request", field=p.field or None)
            for p in problems
        ],
        warnings=warnings,
    )
