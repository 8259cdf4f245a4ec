"""Accepting a build: every check that can fail, the plan, then one transaction (template row, consumed claim, build
row with its plan, ``start`` entry) — or nothing at all ("nothing half-created").

What only the store knows about a request is resolved here, once, by the same function for a build, ``plan``
and ``validate`` (``plan_inputs``): the template a ``base_image`` names (visible to the caller, with a built
artifact) and the content digest of every context blob. ``make_plan`` then decides the build; the plan is
stored with the build and executed by whichever worker claims it.

Secrets, credentials and inline context bytes stay in this process's memory (``BuildInputs``); the stored
definition is ``persistable_request`` of the request. A build that needs memory-only inputs is pinned to the
accepting process; if that process dies first, the build ends as ``interrupted``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.orm import Session

from amber.blobs.store import BlobStore
from amber.builds.executor import BuildInputs
from amber.builds.logbus import Published
from amber.builds.planning import BaseTemplate, BuildPlan, PlanInputs, make_plan, plan_json, validate_request
from amber.builds.queue import WorkerIdentity
from amber.builds.service.admission import admission_problems
from amber.builds.service.journal import Journal, build_not_found
from amber.contract.errors import InvalidRequest
from amber.contract.request import CreateTemplateRequest, persistable_request
from amber.contract.runtime import safe_runtime_defaults
from amber.contract.template_refs import classify_base_ref, try_parse_ref
from amber.contract.validation import request_from_definition
from amber.settings import Settings
from amber.store import catalog, ids
from amber.store.blobs import blob_digests, resolve_for_build
from amber.store.errors import NotFound
from amber.store.keys import Caller
from amber.store.models import Build, Template, utcnow


def base_template(session: Session, caller: Caller, req: CreateTemplateRequest) -> BaseTemplate | None:
    """The template ``base_image`` names (None for an OCI image). A template ref must resolve to a template the
    caller can read that has a built artifact; else ``InvalidRequest`` on ``base_image``.

    ``ns/name[:tag]`` without a registry host is always a template ref: when no template of that name is visible
    to the caller it is refused, with the same answer whether the namespace exists or not, never pulled from
    Docker Hub by accident (a Hub image of that name is ``docker.io/ns/name``)."""
    base = req.base_image
    if base is None or req.dockerfile is not None:
        return None
    kind = classify_base_ref(base)
    if kind == "oci":
        return None
    ref = try_parse_ref(base)
    hub = f"; a Docker Hub image of that name is written docker.io/{base}" if kind == "ambiguous" else ""
    if ref is None:
        raise InvalidRequest("base_image", f"{base!r} is not a valid template ref{hub}")
    try:
        resolved = catalog.resolve_base_template(session, caller, ref)
    except NotFound:
        raise InvalidRequest("base_image",
                             f"template {base!r} not found (or not visible to this API key){hub}") from None
    if resolved.artifact is None:
        raise InvalidRequest("base_image", f"template {base!r} has no built artifact yet")
    runtime = safe_runtime_defaults(resolved.artifact.runtime_defaults)
    return BaseTemplate(ref=base, artifact_id=resolved.artifact.id, runtime_defaults=runtime)


def plan_inputs(
    session: Session, blobs: BlobStore, caller: Caller, req: CreateTemplateRequest, *, uploaded: bool
) -> PlanInputs:
    """What the store knows about ``req`` (module docstring). ``uploaded``: every blob must be complete (a build;
    else ``BlobProblem``); a plan may name blobs announced by the preflight but not uploaded yet."""
    files = req.build_context.files if req.build_context else []
    entries = [(f.path, f.blob_id) for f in files if f.blob_id is not None]
    if uploaded:
        resolve_for_build(session, blobs, caller.namespace_id, entries)
    template = base_template(session, caller, req)
    return PlanInputs(template, blob_digests(session, caller.namespace_id, [blob_id for _, blob_id in entries]))


def stored_plan(session: Session, build: Build) -> BuildPlan:
    """The plan a build executes: the one stored at accept; for a build accepted before plans were stored, the
    plan of its stored definition (credential stubs dropped: their values were in memory only). Raises
    ``InvalidRequest`` when neither reads back."""
    if build.plan is not None:
        try:
            return BuildPlan.from_json(build.plan)
        except ValueError as exc:
            raise InvalidRequest("", f"the stored build plan cannot be read: {exc}") from None
    req = request_from_definition(build.definition)
    base = BaseTemplate(req.base_image or "", build.base_artifact_id) if build.base_artifact_id else None
    files = req.build_context.files if req.build_context else []
    digests = blob_digests(session, build.namespace_id, [f.blob_id for f in files if f.blob_id is not None])
    return make_plan(req, base, digests)


class Accepting(Journal):
    settings: Settings
    blobs: BlobStore
    identity: WorkerIdentity
    memory: dict[str, BuildInputs]
    work_available: asyncio.Event

    async def plan(self, caller: Caller, data: Any) -> dict[str, Any]:
        """``POST /v1/templates/plan``: the plan a build of ``data`` would store, as TemplateBuildPlanResponse JSON.
        Raises ``InvalidRequest``."""
        return await self.db.read(lambda s: plan_json(data, resolve=lambda req: self._plan_inputs(s, caller, req)))

    async def validate(self, caller: Caller, data: Any) -> dict[str, Any]:
        """``POST /v1/templates/validate``: every problem as data (TemplateBuildValidationResponse JSON)."""
        return await self.db.read(
            lambda s: validate_request(data, resolve=lambda req: self._plan_inputs(s, caller, req)).to_json())

    def _plan_inputs(self, session: Session, caller: Caller, req: CreateTemplateRequest) -> PlanInputs:
        return plan_inputs(session, self.blobs, caller, req, uploaded=False)

    async def accept(
        self,
        caller: Caller,
        req: CreateTemplateRequest,
        *,
        request_id: str,
        retry_of: Build | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """Create the build (status ``waiting``) with its plan and its ``start`` entry. Returns the TemplateBuild
        JSON. A ``base_image`` naming a template must resolve to an artifact the caller can read (else
        ``InvalidRequest``); every context blob must be uploaded (else ``BlobProblem``)."""
        problems = admission_problems(req, self.settings)
        if problems:
            raise problems[0]
        definition = persistable_request(req)
        inputs = BuildInputs.of(req)
        build_tags = tags if tags is not None else req.effective_tags
        build_config = definition.get("build_config", {})  # declared fields only, like the definition

        def write(session: Session) -> tuple[dict[str, Any], Published | None]:
            known = plan_inputs(session, self.blobs, caller, req, uploaded=True)
            plan = make_plan(req, known.base_template, known.blob_digests)
            if retry_of is not None:
                template = session.get(Template, retry_of.template_id)
                if template is None:
                    raise build_not_found(retry_of.id)
            else:
                name = req.name if req.name is not None else req.alias
                template = catalog.build_target(session, caller, name, req.claim_token)
            now = utcnow()
            build = Build(
                id=ids.build_id(),
                namespace_id=caller.namespace_id,
                template_id=template.id,
                artifact_id=ids.artifact_id(),
                status="waiting",
                build_backend=plan.backend,
                source_type=plan.source_type,
                tags=build_tags,
                definition=definition,
                plan=plan.stored().to_json(),  # build_envs values stay in memory (BuildInputs)
                base_image_auth_kind=req.base_image_auth.kind if req.base_image_auth else None,
                registry_auth_hosts=[r.registry for r in req.registry_auth or []],
                secret_ids=[s.id for s in req.build_secrets or []],
                inline_context=bool(inputs.inline_files),
                base_artifact_id=plan.base_template.artifact_id if plan.base_template else None,
                pinned_worker=str(self.identity) if inputs.needed else None,
                build_config=build_config,
                triggered_by=caller.key_id,
                attempt=(retry_of.attempt + 1) if retry_of else 1,
                retry_of_build_id=retry_of.id if retry_of else None,
                original_build_id=(retry_of.original_build_id or retry_of.id) if retry_of else None,
                created_at=now,
                updated_at=now,
                queued_at=now,
            )
            session.add(build)
            session.flush()
            message = f"build {build.id} accepted for {template.name} ({plan.source_type}, {plan.backend})"
            if retry_of is not None:
                message += f"; retry of {retry_of.id}"
            item = self._append(session, build, "start", message, fields={"attempt": build.attempt})
            return self._view(session, build), item

        view, item = await self.db.run(write)
        if inputs.needed:  # anything else the worker finds in the stored plan, whichever worker claims it
            self.memory[view["build_id"]] = inputs
        self._publish(view["build_id"], item)
        self.work_available.set()
        return view
