"""Seed the store directly with finished templates (a build row, an artifact, tags) for API tests that
exercise the catalog endpoints without running a VM build. Uses the store's own functions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.store import catalog, ids, keys
from amber.store.database import Database
from amber.store.models import Artifact, Build, utcnow


@dataclass(frozen=True)
class Seeded:
    template_id: str
    artifact_id: str
    build_id: str
    name: str


def seed_template(
    database_url: str,
    namespace: str,
    name: str,
    tags: list[str],
    *,
    visibility: str = "private",
    storage: Path | None = None,
    runtime_defaults: dict[str, Any] | None = None,
) -> Seeded:
    """A ready build of ``namespace/name`` whose artifact carries ``tags`` (adds a new artifact if it exists)."""
    db = Database(database_url)
    try:
        with db.session() as session:
            ns = keys.ensure_namespace(session, namespace)
            caller = keys.Caller(key_id="seed", namespace_id=ns.id, namespace_slug=ns.slug)
            template = catalog.build_target(session, caller, name, None)
            template.visibility = visibility
            now = utcnow()
            build = Build(
                id=ids.build_id(), namespace_id=ns.id, template_id=template.id, artifact_id=ids.artifact_id(),
                status="ready", build_backend="native", source_type="oci_import", tags=tags,
                definition={"base_image": "127.0.0.1:1/seed:latest"}, created_at=now, updated_at=now,
                queued_at=now, started_at=now, finished_at=now, log_next_offset=0,
            )
            session.add(build)
            session.flush()
            artifact_dir = storage / build.artifact_id if storage else Path("/nonexistent") / build.artifact_id
            artifact = Artifact(id=build.artifact_id, template_id=template.id, build_id=build.id,
                                storage_dir=str(artifact_dir),
                                runtime_defaults=runtime_defaults or {"default_env_keys": ["A"],
                                                                      "start_cmd": "sleep 1"})
            session.add(artifact)
            session.flush()
            for tag in tags:
                catalog.move_tag(session, template, tag, artifact)
            return Seeded(template_id=template.id, artifact_id=artifact.id, build_id=build.id, name=name)
    finally:
        db.dispose()
