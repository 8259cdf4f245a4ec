"""A build's state transitions after acceptance: cancel (R23), retry (R24, R41), promote (R25), and success
(artifact row, tags moved, ``end`` entry carrying TemplateInfo). Failures are ``failures.py``'s.

Every transition is one transaction that appends its log entry with the status change; a transition of a build
that is no longer in the expected state writes nothing.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from amber.builds.executor import BuildArtifact
from amber.builds.logbus import Published
from amber.builds.service.accept import Accepting
from amber.builds.service.failures import cache_summary_so_far
from amber.builds.views import template_info, ts
from amber.contract.runtime import safe_runtime_defaults
from amber.contract.status import ACTIVE_STATUSES
from amber.contract.validation import request_from_definition
from amber.store import catalog
from amber.store.catalog import Resolved
from amber.store.errors import Conflict, Invalid
from amber.store.keys import Caller
from amber.store.models import Artifact, Build, Namespace, Template, utcnow


class Lifecycle(Accepting):
    cancel_events: dict[str, asyncio.Event]

    async def cancel(self, caller: Caller, build_id: str, reason: str | None) -> str:
        """R23: idempotent; an active build becomes ``cancelled`` with a durable ``cancelled`` entry at once."""

        def write(session: Session) -> Published | None:
            build = self._owned_build(session, caller, build_id)
            if build.status not in ACTIVE_STATUSES:
                return None
            now = utcnow()
            message = "build cancelled" + (f": {reason}" if reason else "")
            return self._append(
                session, build, "cancelled", message, level="warn",
                new_status="cancelled",
                status_values={
                    "cancel_requested_at": now,
                    "cancel_requested_by": caller.key_id,
                    "cancellation_reason": reason,
                    "finished_at": now,
                    "cache_summary": cache_summary_so_far(session, build_id),
                    "pinned_worker": None,
                },
            )

        item = await self.db.run(write)
        self._publish(build_id, item)
        event = self.cancel_events.get(build_id)
        if event is not None:
            event.set()
        if item is not None and build_id not in self.cancel_events:
            self.memory.pop(build_id, None)  # it never started here: drop its memory-only inputs now
        return await self.snapshot_json(caller, build_id, 0)

    async def retry(self, caller: Caller, build_id: str, fresh: dict[str, Any]) -> dict[str, Any]:
        """R24/R41: a new attempt from the stored definition plus fresh credentials and secret values."""
        original = await self.get_owned(caller, build_id)
        if original.status in ACTIVE_STATUSES:
            raise Conflict(f"build {build_id!r} is still {original.status}; cancel it or wait before retrying")
        if original.inline_context:
            raise Invalid(
                "build_context: this build sent its context inline (content_base64), which is never stored; "
                "start a new build instead (contexts uploaded through the blob preflight are retryable)",
                field="build_context",
            )
        if original.definition.get("build_envs"):
            raise Invalid(
                "build_envs: this build had build-only environment values, which are never stored; start a new "
                "build with them instead",
                field="build_envs",
            )
        if original.base_image_auth_kind is not None and fresh.get("base_image_auth") is None:
            raise Invalid(
                "base_image_auth: the original build used private base-image credentials, which are never "
                "stored; send fresh base_image_auth with the retry",
                field="base_image_auth",
            )
        if original.registry_auth_hosts and fresh.get("registry_auth") is None:
            raise Invalid(
                "registry_auth: the original build used registry credentials, which are never stored; send "
                "fresh registry_auth with the retry",
                field="registry_auth",
            )
        if original.secret_ids:
            sent = {s.get("id") for s in fresh.get("build_secrets") or [] if isinstance(s, dict)}
            missing = [i for i in original.secret_ids if i not in sent]
            if missing:
                raise Invalid(
                    f"build_secrets: the retry must resend values for secret id(s) {', '.join(missing)} "
                    "(secret values are never stored)",
                    field="build_secrets",
                )
        definition = {k: v for k, v in original.definition.items() if k != "claim_token"}
        if fresh.get("tags") is not None:
            definition["tags"] = fresh["tags"]
        req = request_from_definition(definition, base_image_auth=fresh.get("base_image_auth"),
                                      registry_auth=fresh.get("registry_auth"),
                                      build_secrets=fresh.get("build_secrets"))  # fmt: skip
        return await self.accept(caller, req, request_id="", retry_of=original, tags=req.effective_tags
                                 if fresh.get("tags") is not None else list(original.tags))

    async def promote(self, caller: Caller, build_id: str, tags: list[str]) -> dict[str, Any]:
        """R25: move ``tags`` onto the retained artifact of a successful build (audited as ``promote``)."""

        def write(session: Session) -> dict[str, Any]:
            build = self._owned_build(session, caller, build_id)
            artifact = session.get(Artifact, build.artifact_id)
            if build.status != "ready" or artifact is None:
                why = "its artifact was deleted" if build.status == "ready" else f"it is {build.status}"
                raise Conflict(f"build {build_id!r} is not promotable: {why}")
            template = session.get(Template, build.template_id)
            namespace = session.get(Namespace, build.namespace_id)
            assert template is not None and namespace is not None
            for tag in tags:
                catalog.move_tag(session, template, tag, artifact, action="promote")
            session.flush()
            resolved = Resolved(template=template, namespace=namespace, artifact=artifact, via_tag=tags[0])
            return template_info(session, resolved)

        return await self.db.run(write)

    async def succeed(self, build_id: str, artifact: BuildArtifact) -> bool:
        """Store the artifact, move the build's tags onto it and append ``end`` with ``result``."""

        def write(session: Session) -> Published | None:
            build = session.get(Build, build_id)
            if build is None or build.status != "building":
                return None
            template = session.get(Template, build.template_id)
            namespace = session.get(Namespace, build.namespace_id)
            assert template is not None and namespace is not None
            runtime = safe_runtime_defaults(artifact.runtime_defaults) or {}
            row = Artifact(
                id=build.artifact_id,
                template_id=template.id,
                build_id=build.id,
                storage_dir=str(artifact.artifact_dir),
                runtime_defaults=runtime,
                oci_metadata=artifact.oci_metadata,
                size_bytes=artifact.size_bytes,
            )
            session.add(row)
            session.flush()
            for tag in build.tags:
                catalog.move_tag(session, template, tag, row)
            session.flush()
            info = template_info(
                session, Resolved(template=template, namespace=namespace, artifact=row,
                                  via_tag=build.tags[0] if build.tags else None)
            )
            metadata: dict[str, Any] = {}
            if runtime:
                metadata["runtime_defaults"] = runtime
            if artifact.oci_metadata:
                metadata["oci_metadata"] = artifact.oci_metadata
            now = utcnow()
            return self._append(
                session, build, "end", f"template {info['canonical_ref']} is ready",
                fields={"result": _jsonable(info), "result_metadata": metadata or None, "attempt": build.attempt},
                new_status="ready",
                status_values={
                    "finished_at": now,
                    "lease_owner": None,
                    "pinned_worker": None,
                    "cache_summary": artifact.cache_summary or None,
                    "runtime_defaults": runtime or None,
                    "oci_metadata": artifact.oci_metadata,
                    "source_digest": artifact.source_digest,
                    "dockerfile_digest": artifact.dockerfile_digest,
                    "context_digest": artifact.context_digest,
                },
            )

        item = await self.db.run(write)
        self._publish(build_id, item)
        if item is None:
            shutil.rmtree(artifact.artifact_dir, ignore_errors=True)  # cancelled or deleted meanwhile
        return item is not None

    def artifact_dirs_removed(self, dirs: list[str]) -> None:
        for d in dirs:
            if d:
                shutil.rmtree(Path(d), ignore_errors=True)


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: (ts(v) if isinstance(v, datetime) else v) for k, v in info.items()}
