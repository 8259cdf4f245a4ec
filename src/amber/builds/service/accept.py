"""Accepting a build: every check that can fail, then one transaction (template row, consumed claim, build row,
``start`` entry) — or nothing at all ("nothing half-created").

Secrets, credentials and inline context bytes stay in this process's memory (``MemoryInputs``); the stored
definition is ``persistable_request`` of the request. A build that needs memory-only inputs is pinned to the
accepting process; if that process dies first, the build ends as ``interrupted``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from amber.blobs.store import BlobStore
from amber.builds.logbus import Published
from amber.builds.planning.source import classify_base_ref, resolve_source
from amber.builds.queue import WorkerIdentity
from amber.builds.service.journal import Journal, build_not_found
from amber.contract.request import CreateTemplateRequest, persistable_request
from amber.contract.template_refs import try_parse_ref
from amber.store import catalog, ids
from amber.store.blobs import resolve_for_build
from amber.store.errors import Invalid, NotFound
from amber.store.keys import Caller
from amber.store.models import Build, Template, utcnow


@dataclass
class MemoryInputs:
    """What a build needs that is never persisted: the full request (secrets, credentials, inline bytes)."""

    request: CreateTemplateRequest


def _is_namespace(session: Session, namespace: str | None) -> bool:
    """Does a ref's first segment name a namespace of this server? Then ``ns/name[:tag]`` means a template there
    (a Docker Hub image of the same name can still be used as ``docker.io/ns/name``)."""
    return namespace is not None and catalog.namespace_by_ref(session, namespace) is not None


def classify(req: CreateTemplateRequest, *, base_is_template: bool) -> tuple[str, str]:
    """(build_backend, source_type) of a validated request (R29, R32), by the planner's rules."""
    source = resolve_source(req, template_exists=lambda _ref: base_is_template)
    return source.backend, source.source_type


class Accepting(Journal):
    blobs: BlobStore
    identity: WorkerIdentity
    memory: dict[str, MemoryInputs]
    work_available: asyncio.Event

    async def accept(
        self,
        caller: Caller,
        req: CreateTemplateRequest,
        *,
        request_id: str,
        retry_of: Build | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """Create the build (status ``waiting``) and its ``start`` entry. Returns the TemplateBuild JSON.
        A ``base_image`` naming a template must resolve to an artifact the caller can read (else ``Invalid``)."""
        definition = persistable_request(req)
        inline = any(f.content_base64 is not None for f in (req.build_context.files if req.build_context else []))
        blob_entries = [
            (f.path, f.blob_id)
            for f in (req.build_context.files if req.build_context else [])
            if f.blob_id is not None
        ]
        needs_memory = bool(req.base_image_auth or req.registry_auth or req.build_secrets or inline)
        build_tags = tags if tags is not None else req.effective_tags
        build_config = definition.get("build_config", {})  # declared fields only, like the definition

        def write(session: Session) -> tuple[dict[str, Any], Published | None]:
            resolve_for_build(session, self.blobs, caller.namespace_id, blob_entries)
            base_artifact = self._base_artifact(session, caller, req)
            backend, source_type = classify(req, base_is_template=base_artifact is not None)
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
                build_backend=backend,
                source_type=source_type,
                tags=build_tags,
                definition=definition,
                base_image_auth_kind=req.base_image_auth.kind if req.base_image_auth else None,
                registry_auth_hosts=[r.registry for r in req.registry_auth or []],
                secret_ids=[s.id for s in req.build_secrets or []],
                inline_context=inline,
                base_artifact_id=base_artifact,
                pinned_worker=str(self.identity) if needs_memory else None,
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
            message = f"build {build.id} accepted for {template.name} ({source_type}, {backend})"
            if retry_of is not None:
                message += f"; retry of {retry_of.id}"
            item = self._append(session, build, "start", message, fields={"attempt": build.attempt})
            return self._view(session, build), item

        view, item = await self.db.run(write)
        if needs_memory:  # anything else is rebuilt from the stored definition by whichever worker claims it
            self.memory[view["build_id"]] = MemoryInputs(request=req)
        self._publish(view["build_id"], item)
        self.work_available.set()
        return view

    def _base_artifact(self, session: Session, caller: Caller, req: CreateTemplateRequest) -> str | None:
        """The artifact a template ``base_image`` names (None for OCI images)."""
        base = req.base_image
        if base is None or req.dockerfile is not None:
            return None
        kind = classify_base_ref(base)
        if kind == "oci":
            return None
        ref = try_parse_ref(base)
        if ref is None:
            if kind == "template" or _is_namespace(session, base.partition("/")[0]):
                raise Invalid(f"base_image: {base!r} is not a valid template ref", field="base_image")
            return None
        try:
            resolved = catalog.resolve_base_template(session, caller, ref)
        except NotFound:
            if kind == "ambiguous" and not _is_namespace(session, ref.namespace):
                return None  # ``ns/name`` that is no template: an OCI image on Docker Hub
            raise Invalid(f"base_image: template {base!r} not found (or not visible to this API key)",
                          field="base_image") from None
        if resolved.artifact is None:
            raise Invalid(f"base_image: template {base!r} has no built artifact yet", field="base_image")
        return resolved.artifact.id

