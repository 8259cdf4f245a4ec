"""The build service: accepts builds, keeps the one durable log per build, cancels, retries, promotes, recovers.

Guarantees:
- A build is accepted in one transaction (template row, consumed claim, build row, ``start`` entry) or not
  at all, after every check that can fail has passed ("nothing half-created").
- Log offsets are allocated by an atomic ``UPDATE … RETURNING`` on the build row, so the worker, a cancel
  from any host and recovery all write into one gap-free sequence. Nothing is appended after a terminal
  entry (``end``, ``error``, ``cancelled``), and the terminal entry and the status change commit together.
- Secrets, credentials and inline context bytes stay in this process's memory (``MemoryInputs``); the
  stored definition is ``persistable_request`` of the request. A build that needs memory-only inputs is
  pinned to the accepting process; if that process dies first, the build ends as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from datetime import datetime
from json import loads
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from amber.blobs.store import BlobStore
from amber.builds.executor import BuildArtifact
from amber.builds.logbus import LogBus, Published
from amber.builds.planning.source import classify_base_ref, resolve_source
from amber.builds.queue import WorkerIdentity, orphaned_builds, stranded_waiting
from amber.builds.views import build_summary, build_view, dumps, template_info, ts
from amber.contract.failures import FAILURE_LOG_PHASES, FailurePhase, failure_detail, failure_message
from amber.contract.logs import CACHE_SUMMARY_KEYS, CacheKind, CacheStatus, LogEvent, cache_summary_key
from amber.contract.request import CreateTemplateRequest, persistable_request
from amber.contract.runtime import safe_runtime_defaults
from amber.contract.status import ACTIVE_STATUSES
from amber.contract.template_refs import TemplateRef, try_parse_ref
from amber.contract.validation import validate_create_request
from amber.settings import Settings
from amber.store import builds as store_builds
from amber.store import catalog, ids
from amber.store.blobs import resolve_for_build
from amber.store.catalog import Resolved
from amber.store.database import Database
from amber.store.errors import Conflict, Invalid, NotFound
from amber.store.keys import Caller
from amber.store.models import Artifact, Build, Namespace, Template, utcnow
from amber.vm.process import sweep_stale

MAX_SNAPSHOT_ENTRIES = 1000


def build_not_found(build_id: str) -> NotFound:
    return NotFound(f"template build {build_id!r} not found", code="template_build_not_found")


def _is_namespace(session: Session, namespace: str | None) -> bool:
    """Does a ref's first segment name a namespace of this server? Then ``ns/name[:tag]`` means a template there
    (a Docker Hub image of the same name can still be used as ``docker.io/ns/name``)."""
    return namespace is not None and catalog.namespace_by_ref(session, namespace) is not None


def _cache_summary_so_far(session: Session, build_id: str) -> dict[str, int] | None:
    """TemplateBuildCacheSummary of the cache entries a build logged before it failed or was cancelled (None when
    it logged none): history shows what a failed attempt reused, as it does for a successful one."""
    counts = dict.fromkeys(CACHE_SUMMARY_KEYS, 0)
    seen = False
    for entry_json in store_builds.cache_entries(session, build_id):
        entry = loads(entry_json)
        kind, status = entry.get("cache_kind"), entry.get("cache_status")
        if kind in _CACHE_KINDS and status in _CACHE_STATUSES:
            counts[cache_summary_key(CacheKind(kind), CacheStatus(status))] += 1
            seen = True
    return counts if seen else None


_CACHE_KINDS = {k.value for k in CacheKind}
_CACHE_STATUSES = {s.value for s in CacheStatus}


@dataclass
class MemoryInputs:
    """What a build needs that is never persisted: the full request (secrets, credentials, inline bytes)."""

    request: CreateTemplateRequest


def classify(req: CreateTemplateRequest, *, base_is_template: bool) -> tuple[str, str]:
    """(build_backend, source_type) of a validated request (R29, R32), by the planner's rules."""
    source = resolve_source(req, template_exists=lambda _ref: base_is_template)
    return source.backend, source.source_type


class BuildService:
    def __init__(self, db: Database, settings: Settings, bus: LogBus, blobs: BlobStore) -> None:
        self.db = db
        self.settings = settings
        self.bus = bus
        self.blobs = blobs
        self.identity = WorkerIdentity.current()
        self.memory: dict[str, MemoryInputs] = {}
        self.cancel_events: dict[str, asyncio.Event] = {}
        self.work_available = asyncio.Event()

    # -- log ----------------------------------------------------------------------------------------------------

    def _append(
        self,
        session: Session,
        build: Build,
        kind: str,
        message: str,
        *,
        level: str = "info",
        fields: dict[str, Any] | None = None,
        new_status: str | None = None,
        status_values: dict[str, Any] | None = None,
        allow_terminal: bool = False,
    ) -> Published | None:
        """Append one entry (and optionally move the build to ``new_status``) atomically. Returns None when the
        build is already terminal (nothing is written after a terminal entry)."""
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now, **({"status": new_status} if new_status else {}),
                                  **(status_values or {})}
        offset = store_builds.take_offset(session, build.id, values, allow_terminal=allow_terminal)
        if offset is None:
            return None
        entry: dict[str, Any] = {
            "build_id": build.id,
            "template_id": build.artifact_id,
            "offset": offset,
            "timestamp": ts(now),
            "kind": kind,
            "level": level,
            "message": message,
        }
        for key, value in (fields or {}).items():
            if value is not None:
                entry[key] = value
        entry_json = dumps(entry)
        store_builds.add_entry(session, build.id, offset, kind, now, entry_json)
        return Published(offset=offset, kind=kind, entry_json=entry_json)

    def _publish(self, build_id: str, item: Published | None) -> None:
        if item is not None:
            self.bus.publish(build_id, item)

    async def emit(self, build_id: str, event: LogEvent, *, attempt: int) -> bool:
        """Persist one pipeline event; False once the build is terminal (the worker should stop)."""
        fields = {
            "phase": event.phase.value if event.phase else None,
            "step_index": event.step_index,
            "total_steps": event.total_steps,
            "attempt": attempt,
            "cache_kind": event.cache_kind.value if event.cache_kind else None,
            "cache_status": event.cache_status.value if event.cache_status else None,
            "cache_reason": event.cache_reason.value if event.cache_reason else None,
            "cache_subject": event.cache_subject,
        }
        kind = event.kind.value
        if kind in ("start", "end", "error", "cancelled"):
            kind = "message"  # terminal kinds and ``start`` belong to the service, never to the pipeline

        def write(session: Session) -> Published | None:
            build = session.get(Build, build_id)
            if build is None:
                return None
            return self._append(session, build, kind, event.message, level=event.level.value, fields=fields)

        item = await self.db.run(write)
        self._publish(build_id, item)
        return item is not None

    async def entries_since(self, build_id: str, offset: int, limit: int) -> tuple[list[Published], str | None]:
        """Stored entries from ``offset`` on (ascending) and the build's status (None if it no longer exists)."""

        def read(session: Session) -> tuple[list[Published], str | None]:
            rows = store_builds.entries_from(session, build_id, offset, limit)
            status = store_builds.status_of(session, build_id)
            return [Published(offset=r[0], kind=r[1], entry_json=r[2]) for r in rows], status

        return await self.db.read(read)

    # -- lookups ------------------------------------------------------------------------------------------------

    def _owned_build(self, session: Session, caller: Caller, build_id: str) -> Build:
        build = session.get(Build, build_id)
        if build is None or build.namespace_id != caller.namespace_id:
            raise build_not_found(build_id)
        return build

    def _view(self, session: Session, build: Build) -> dict[str, Any]:
        template = session.get(Template, build.template_id)
        namespace = session.get(Namespace, build.namespace_id)
        assert template is not None and namespace is not None
        return build_view(build, template, namespace, artifact_exists=session.get(Artifact, build.artifact_id)
                          is not None)

    async def get_owned(self, caller: Caller, build_id: str) -> Build:
        return await self.db.read(lambda s: self._owned_build(s, caller, build_id))

    async def snapshot_json(self, caller: Caller, build_id: str, offset: int) -> str:
        """TemplateBuildStatusSnapshot as JSON text (entries are spliced in as stored, not re-encoded)."""

        def read(session: Session) -> str:
            row = store_builds.build_with_context(session, build_id)
            if row is None or row[0].namespace_id != caller.namespace_id:
                raise build_not_found(build_id)
            view = build_view(row[0], row[1], row[2], artifact_exists=row[3])
            rows = store_builds.entries_from(session, build_id, offset, MAX_SNAPSHOT_ENTRIES)
            next_offset = max(offset, rows[-1][0] + 1) if rows else offset
            entries = ",".join(r[2] for r in rows)
            return f'{{"build":{dumps(view)},"entries":[{entries}],"next_offset":{next_offset}}}'

        return await self.db.read(read)

    async def build_json(self, build_id: str) -> dict[str, Any]:
        def read(session: Session) -> dict[str, Any]:
            build = session.get(Build, build_id)
            if build is None:
                raise build_not_found(build_id)
            return self._view(session, build)

        return await self.db.read(read)

    async def list_builds(
        self,
        caller: Caller,
        ref: TemplateRef,
        *,
        status: str | None,
        backend: str | None,
        source_type: str | None,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        """Build history of the logical template (R26), newest first; ``cursor`` is the last build id seen."""

        def read(session: Session) -> dict[str, Any]:
            resolved = catalog.resolve(session, caller, ref)
            if resolved.template.namespace_id != caller.namespace_id:
                raise catalog.not_found(ref.text)  # builds are caller-scoped even for public templates
            rows = store_builds.template_builds(session, resolved.template.id, status=status, backend=backend,
                                                source_type=source_type, before=cursor, limit=limit + 1)
            artifact_ids = set(catalog.artifact_ids(session, resolved.template.id))
            out: dict[str, Any] = {
                "builds": [
                    build_summary(b, resolved.template, artifact_exists=b.artifact_id in artifact_ids)
                    for b in rows[:limit]
                ]
            }
            if len(rows) > limit:
                out["next_cursor"] = rows[limit - 1].id
            return out

        return await self.db.read(read)

    # -- accept -------------------------------------------------------------------------------------------------

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

    # -- cancel / retry / promote ---------------------------------------------------------------------------------

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
                    "cache_summary": _cache_summary_so_far(session, build_id),
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
        data = dict(original.definition)
        data.pop("claim_token", None)
        if original.base_image_auth_kind is not None and fresh.get("base_image_auth") is None:
            raise Invalid(
                "base_image_auth: the original build used private base-image credentials, which are never "
                "stored; send fresh base_image_auth with the retry",
                field="base_image_auth",
            )
        if fresh.get("base_image_auth") is not None:
            data["base_image_auth"] = fresh["base_image_auth"]
        else:
            data.pop("base_image_auth", None)
        if original.registry_auth_hosts and fresh.get("registry_auth") is None:
            raise Invalid(
                "registry_auth: the original build used registry credentials, which are never stored; send "
                "fresh registry_auth with the retry",
                field="registry_auth",
            )
        if fresh.get("registry_auth") is not None:
            data["registry_auth"] = fresh["registry_auth"]
        else:
            data.pop("registry_auth", None)
        if original.secret_ids:
            sent = {s.get("id") for s in fresh.get("build_secrets") or [] if isinstance(s, dict)}
            missing = [i for i in original.secret_ids if i not in sent]
            if missing:
                raise Invalid(
                    f"build_secrets: the retry must resend values for secret id(s) {', '.join(missing)} "
                    "(secret values are never stored)",
                    field="build_secrets",
                )
        if fresh.get("build_secrets") is not None:
            data["build_secrets"] = fresh["build_secrets"]
        else:
            data.pop("build_secrets", None)
        if fresh.get("tags") is not None:
            data["tags"] = fresh["tags"]
        req = validate_create_request(data)
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

    # -- worker outcomes ----------------------------------------------------------------------------------------

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

    async def fail(
        self,
        build_id: str,
        *,
        code: str,
        message: str,
        phase: str,
        reason: str,
        step_index: int | None = None,
        allow_waiting: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        """End an active build with ``status=error`` and a terminal ``error`` entry carrying the detail."""
        message = failure_message(message)

        def write(session: Session) -> Published | None:
            build = session.get(Build, build_id)
            if build is None or build.status not in ACTIVE_STATUSES:
                return None
            if build.status == "waiting" and not allow_waiting:
                return None
            detail = failure_detail(code=code, message=message, phase=phase, build_id=build_id,
                                    attempt=build.attempt, reason=reason, step_index=step_index, extra=extra)
            return self._append(
                session, build, "error", message, level="error",
                fields={"error_detail": detail, "attempt": build.attempt, "step_index": step_index,
                        "phase": FAILURE_LOG_PHASES.get(phase)},
                new_status="error",
                status_values={
                    "finished_at": utcnow(),
                    "cache_summary": _cache_summary_so_far(session, build_id),
                    "error": message,
                    "error_detail": detail,
                    "failure_phase": phase,
                    "lease_owner": None,
                    "pinned_worker": None,
                },
            )

        item = await self.db.run(write)
        self._publish(build_id, item)
        return item is not None

    # -- recovery -----------------------------------------------------------------------------------------------

    async def recover(self) -> list[str]:
        """End builds whose worker died (``interrupted``) and waiting builds whose memory-only inputs are gone.
        Waiting builds without such inputs stay queued and are resumed. Returns the ended build ids."""

        def scan(session: Session) -> tuple[list[str], list[str]]:
            return ([b.id for b in orphaned_builds(session, self.identity)],
                    [b.id for b in stranded_waiting(session, self.identity)])

        # QEMU processes and run directories of dead owners (a killed server leaves its VMs running).
        await asyncio.to_thread(sweep_stale, self.settings.data_dir)
        running, stranded = await self.db.run(scan)
        ended = []
        for build_id in running:
            if await self.fail(
                build_id, code="build_error", phase=FailurePhase.INTERRUPTED.value, reason="worker_lost",
                message="build interrupted: the server running it stopped (restart or crash) before it finished; "
                        "its VM and scratch files were cleaned up",
            ):
                ended.append(build_id)
        for build_id in stranded:
            if await self.fail(
                build_id, code="build_error", phase=FailurePhase.INTERRUPTED.value, reason="inputs_lost",
                message="build interrupted: the server restarted before the build started, and its secrets, "
                        "credentials or inline context are never stored; start it again with fresh inputs",
            ):
                ended.append(build_id)
        await asyncio.to_thread(self._discard_build_files, ended)
        return ended

    def _discard_build_files(self, build_ids: list[str]) -> None:
        """Scratch files a dead worker left for ``build_ids`` (the pipeline's ``builds/<id>`` work directory
        and its unpublished ``artifacts/<id>`` directory)."""
        for build_id in build_ids:
            shutil.rmtree(self.settings.data_dir / "builds" / build_id, ignore_errors=True)
            shutil.rmtree(self.settings.data_dir / "artifacts" / build_id, ignore_errors=True)

    def artifact_dirs_removed(self, dirs: list[str]) -> None:
        for d in dirs:
            if d:
                shutil.rmtree(Path(d), ignore_errors=True)


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: (ts(v) if isinstance(v, datetime) else v) for k, v in info.items()}
