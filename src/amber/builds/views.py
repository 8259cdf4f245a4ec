"""Records as contract JSON: TemplateInfo (§5.1), TemplateBuild and TemplateBuildSummary (§6) (templates-models.md).

The JSON is built here, above the store, because the build journal stores it too (a successful build's ``end``
entry carries its TemplateInfo as ``result``); the HTTP routes answer with the same functions.

Optional fields are omitted, never ``null``; timestamps are RFC 3339 UTC with ``Z``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from amber.contract.jsonline import dumps_line
from amber.contract.runtime import safe_runtime_defaults
from amber.contract.status import TERMINAL_STATUSES
from amber.store import catalog
from amber.store.catalog import Resolved
from amber.store.models import Build, Namespace, Template


def ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(value: Any) -> str:
    """Compact JSON that stays one line for every client (log entries are SSE ``data:`` lines)."""
    return dumps_line(value)


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        return
    out[key] = ts(value) if isinstance(value, datetime) else value


def build_summary(build: Build, template: Template, *, artifact_exists: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "build_id": build.id,
        "template_id": build.artifact_id,
        "name": template.name,
        "tags": list(build.tags),
        "status": build.status,
        "build_backend": build.build_backend,
        "source_type": build.source_type,
        "created_at": ts(build.created_at),
        "updated_at": ts(build.updated_at),
    }
    _put(out, "source_digest", build.source_digest)
    _put(out, "context_digest", build.context_digest)
    _put(out, "dockerfile_digest", build.dockerfile_digest)
    _put(out, "triggered_by", build.triggered_by)
    _put(out, "queued_at", build.queued_at)
    _put(out, "started_at", build.started_at)
    _put(out, "finished_at", build.finished_at)
    if build.started_at is not None and build.finished_at is not None:
        out["duration_ms"] = int((build.finished_at - build.started_at).total_seconds() * 1000)
    _put(out, "failure_phase", build.failure_phase)
    _put(out, "cache_summary", build.cache_summary)
    if build.status == "ready":
        out["artifact_availability"] = (
            {"status": "available"} if artifact_exists else {"status": "unavailable", "reason": "artifact deleted"}
        )
        out["promotability"] = (
            {"status": "promotable", "promotable": True}
            if artifact_exists
            else {"status": "purged", "promotable": False, "reason": "the artifact was deleted"}
        )
        out["artifact_ids"] = [build.artifact_id] if artifact_exists else []
    elif build.status in TERMINAL_STATUSES:
        out["artifact_availability"] = {"status": "unavailable", "reason": f"build {build.status}"}
        out["promotability"] = {"status": "unavailable", "promotable": False, "reason": f"build {build.status}"}
        out["artifact_ids"] = []
    else:
        out["promotability"] = {"status": "not_ready", "promotable": False, "reason": "build still running"}
        out["artifact_ids"] = []
    _put(out, "build_config", build.build_config or None)
    _put(out, "runtime_defaults", safe_runtime_defaults(build.runtime_defaults))
    _put(out, "oci_metadata", build.oci_metadata)
    _put(out, "retry_of_build_id", build.retry_of_build_id)
    _put(out, "original_build_id", build.original_build_id)
    _put(out, "cancel_requested_at", build.cancel_requested_at)
    _put(out, "cancel_requested_by", build.cancel_requested_by)
    _put(out, "cancellation_reason", build.cancellation_reason)
    return out


def build_view(build: Build, template: Template, namespace: Namespace, *, artifact_exists: bool) -> dict[str, Any]:
    out = build_summary(build, template, artifact_exists=artifact_exists)
    tag = build.tags[0] if build.tags else None
    out["canonical_ref"] = canonical_ref(namespace, template, tag)
    out["namespace_slug"] = namespace.slug
    out["visibility"] = template.visibility
    _put(out, "error", build.error)
    _put(out, "error_detail", build.error_detail)
    return out


def canonical_ref(namespace: Namespace, template: Template, tag: str | None) -> str:
    """``namespace/name[:tag]``, the ref the contract shows for a template (and tag)."""
    return f"{namespace.slug}/{template.name}:{tag}" if tag else f"{namespace.slug}/{template.name}"


def template_info(session: Session, resolved: Resolved) -> dict[str, Any]:
    """TemplateInfo JSON for a resolved artifact (``templates-models.md`` §5.1): what template reads answer and
    what a successful build's terminal ``end`` entry carries as ``result``."""
    template, namespace = resolved.template, resolved.namespace
    artifact = catalog.require_artifact(resolved, template.name)
    tags = catalog.artifact_tags(session, artifact.id)
    if resolved.via_tag is not None:
        qualifier: str | None = resolved.via_tag
    elif template.default_tag in tags:
        qualifier = template.default_tag
    elif tags:
        qualifier = tags[0]
    else:
        qualifier = artifact.build_id
    info: dict[str, Any] = {
        "id": artifact.id,
        "name": template.name,
        "description": template.description,
        "builtin": namespace.kind == "system",
        "canonical_ref": canonical_ref(namespace, template, qualifier),
        "namespace_slug": namespace.slug,
        "visibility": template.visibility,
        "tags": tags,
        "default_tag": template.default_tag,
    }
    runtime = safe_runtime_defaults(artifact.runtime_defaults)
    if runtime:
        info["runtime_defaults"] = runtime
    return info
