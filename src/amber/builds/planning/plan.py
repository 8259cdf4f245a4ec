"""``plan`` and ``validate`` (templates-api.md § 5): a request → TemplateBuildPlanResponse / ValidationResponse.

Pure; nothing is persisted and no executor runs. The service passes ``template_exists`` (its template lookup)
to settle whether an ``ns/name`` base is a template; without it such refs count as OCI images. With
``template_runtime`` (a template ref → its TemplateRuntimeDefaults JSON) a template base's inherited start
command, readiness probe, user and workdir show in the plan (``runtime.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from amber.builds.planning.digests import context_manifest, dockerfile_digest, plan_content_digest, source_digest
from amber.builds.planning.dockerfile_source import DockerfileError, summarise_dockerfile
from amber.builds.planning.runtime import ImageDefaults, inherited_defaults, runtime_defaults, step_state
from amber.builds.planning.source import resolve_source
from amber.builds.planning.steps import CopyOp, ShellOp, StepPlan, UserOp, WorkdirOp, plan_steps, render_dockerfile
from amber.contract.errors import InvalidRequest
from amber.contract.images import canonical_host, registry_host
from amber.contract.plan import (
    TemplateBuildContextManifestSummary,
    TemplateBuildPlan,
    TemplateBuildPlanResponse,
    TemplateBuildValidationError,
    TemplateBuildValidationResponse,
    TemplateIgnoredInstruction,
)
from amber.contract.request import CreateTemplateRequest, parse_create_request, structural_problems
from amber.contract.steps import AptInstallStep, BunInstallStep, GitCloneStep, NpmInstallStep, PipInstallStep
from amber.contract.validation import request_problems, validate_create_request

TemplateExists = Callable[[str], bool]
TemplateRuntime = Callable[[str], Mapping[str, Any] | None]


def _build_step_items(plans: list[StepPlan]) -> list[dict[str, Any]]:
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


def _warnings(req: CreateTemplateRequest, base: ImageDefaults) -> list[str]:
    out: list[str] = []
    if req.tags is not None and len(set(req.tags)) != len(req.tags):
        out.append("tags: duplicate tags were collapsed")
    if req.skip_cache:
        out.append("skip_cache: every cache is bypassed for this build")
    if any(s.action == "skip_cache" for s in req.step_list):
        out.append("steps: steps from the first skip_cache step on are rebuilt on every build")
    rc = req.runtime_config
    if rc is not None and rc.readiness is not None and not req.start_cmd and not base.start_cmd:
        out.append("runtime_config.readiness: set without start_cmd; the probe checks a service nothing starts")
    offline = req.build_config is not None and req.build_config.internet_access is False
    needs_net = (AptInstallStep, PipInstallStep, NpmInstallStep, BunInstallStep, GitCloneStep)
    if offline and any(isinstance(s, needs_net) for s in req.step_list):
        out.append("build_config.internet_access: false, but package installs and git clones usually need it")
    return out


def plan_request(
    req: CreateTemplateRequest,
    *,
    template_exists: TemplateExists | None = None,
    template_runtime: TemplateRuntime | None = None,
) -> TemplateBuildPlanResponse:
    """The plan of a request already checked by ``validate_create_request``. Raises ``InvalidRequest`` when an
    inline Dockerfile does not parse."""
    source = resolve_source(req, template_exists=template_exists)
    base = ImageDefaults()
    if source.base_is_template and template_runtime is not None:
        base = inherited_defaults(template_runtime(source.base_ref))
    manifest = context_manifest(req.build_context.files, plan_content_digest) if req.build_context is not None else None
    context_digest = manifest.digest if manifest is not None else None
    build_envs = dict(req.build_envs or {})
    warnings = _warnings(req, base)
    ignored: list[str] = []
    ignored_warnings: list[TemplateIgnoredInstruction] = []
    if req.dockerfile is not None:
        try:
            summary = summarise_dockerfile(req.dockerfile)
        except DockerfileError as exc:
            raise InvalidRequest("dockerfile", str(exc)) from None
        text = req.dockerfile
        base_template = summary.base
        run_steps = summary.run_steps
        build_steps = summary.build_steps
        env_assignments = summary.env_assignments
        for instruction, line in summary.ignored:
            ignored.append(instruction)
            ignored_warnings.append(TemplateIgnoredInstruction(instruction=instruction, line=line))
            warnings.append(f"dockerfile line {line}: {instruction.split()[0]} is ignored by the template pipeline")
        plans: list[StepPlan] = []
    else:
        plans = plan_steps(req.step_list)
        text = render_dockerfile(source.base_ref, plans, build_envs, req.start_cmd)
        base_template = source.base_ref
        run_steps = [op.command for p in plans for op in p.ops if isinstance(op, ShellOp)]
        build_steps = _build_step_items(plans)
        env_assignments = [[k, v] for k, v in build_envs.items()]
    runtime = runtime_defaults(req, plans, base)
    rc = req.runtime_config
    build_plan = TemplateBuildPlan(
        base_template=base_template,
        run_steps=run_steps,
        build_steps=build_steps,
        build_envs=build_envs,
        env_assignments=env_assignments,
        ignored_instructions=ignored,
        start_cmd=runtime.start_cmd,
        default_user=(rc.default_user if rc and rc.default_user else None) or _last_user(plans) or base.user,
        default_workdir=(rc.default_workdir if rc and rc.default_workdir else None)
        or _last_workdir(plans, base)
        or base.workdir,
        readiness=runtime.readiness.to_json() if runtime.readiness else None,
        ignored_instruction_warnings=ignored_warnings or None,
        dockerfile=text,
    )
    base_host = registry_host(req.base_image) if req.base_image is not None else None
    requires_auth = req.base_image_auth is not None or any(
        canonical_host(r.registry) == base_host for r in req.registry_auth or []
    )
    return TemplateBuildPlanResponse(
        build_backend=source.backend,
        source_type=source.source_type,
        build_plan=build_plan,
        warnings=warnings,
        requires_base_image_auth=requires_auth,
        source_digest=source_digest(req, context_digest),
        context_manifest=(
            TemplateBuildContextManifestSummary(
                context_manifest_id=manifest.manifest_id, context_digest=manifest.digest, file_count=manifest.file_count
            )
            if manifest is not None
            else None
        ),
        dockerfile_digest=dockerfile_digest(text),
    )


def _last_user(plans: list[StepPlan]) -> str | None:
    users = [op.user for p in plans for op in p.ops if isinstance(op, UserOp)]
    return users[-1] if users else None


def _last_workdir(plans: list[StepPlan], base: ImageDefaults) -> str | None:
    if not any(isinstance(op, WorkdirOp) for p in plans for op in p.ops):
        return None
    return step_state(plans, base)[1]


def plan_json(
    data: Any, *, template_exists: TemplateExists | None = None, template_runtime: TemplateRuntime | None = None
) -> dict[str, Any]:
    """``POST /v1/templates/plan`` in one call: decoded JSON → response JSON. Raises ``InvalidRequest`` (→ 400)."""
    req = validate_create_request(data)
    return plan_request(req, template_exists=template_exists, template_runtime=template_runtime).to_json()


def validate_request(
    data: Any, *, template_exists: TemplateExists | None = None, template_runtime: TemplateRuntime | None = None
) -> TemplateBuildValidationResponse:
    """``POST /v1/templates/validate``: every problem reported as data (never raises for bad input)."""
    problems = structural_problems(data)
    warnings: list[str] = []
    if not problems:
        req = parse_create_request(data)
        problems = request_problems(req)
        if not problems:
            try:
                warnings = plan_request(
                    req, template_exists=template_exists, template_runtime=template_runtime
                ).warnings
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
